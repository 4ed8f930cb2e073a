"""Organization rules (D7, D11): members and roles, linked servers, spend authorizations, and an
audit entry for every change.

One class for the callers, :class:`OrgService`, made of one part per concern:
:mod:`.organizations` (organizations and members), :mod:`.servers` (linked servers),
:mod:`.authorizations` (spend authorizations) and :mod:`.audit` (the audit log), over what
they share (:mod:`.base`). Role checks and the other decisions that write nothing are in
:mod:`.rules`, the refusals in :mod:`.errors`.
"""

from __future__ import annotations

from .audit import AuditReads
from .authorizations import Authorizations
from .errors import (
    AlreadyMember,
    AuthorizationExists,
    AuthorizationRevoked,
    CannotChangeOwnAuthorization,
    LastOwner,
    NotAMember,
    ServerAlreadyLinked,
    ServerNotLinked,
    UnknownCaptureSource,
    UnknownRole,
)
from .organizations import Organizations
from .rules import (
    ADMIN_ROLES,
    MAX_CAP_CREDITS,
    PERSONAL_SOURCES,
    SERVER_SOURCES,
    UNSET,
    authorization_status,
    check_capture_sources,
    member_role,
    require_org_role,
)
from .servers import Servers

__all__ = [
    "ADMIN_ROLES",
    "MAX_CAP_CREDITS",
    "PERSONAL_SOURCES",
    "SERVER_SOURCES",
    "UNSET",
    "AlreadyMember",
    "AuthorizationExists",
    "AuthorizationRevoked",
    "CannotChangeOwnAuthorization",
    "LastOwner",
    "NotAMember",
    "OrgService",
    "ServerAlreadyLinked",
    "ServerNotLinked",
    "UnknownCaptureSource",
    "UnknownRole",
    "authorization_status",
    "check_capture_sources",
    "member_role",
    "require_org_role",
]


class OrgService(Organizations, Servers, Authorizations, AuditReads):
    """The organization service the container wires (clock, ledger, accounts)."""
