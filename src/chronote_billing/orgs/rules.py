"""What the organization rules decide without writing: roles and who may act (D11), an
authorization's status, and checks of the caps and capture sources a client sends.

Every role check lives here, for the services and for the edges alike: the API asks
:func:`require_org_role` before reading an organization's members, servers, authorizations or
audit log, and the services ask :func:`require_admin` before every change.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal
from chronote_billing.catalog.service import (
    CAPTURE_SOURCES,
    MILLICREDITS_PER_CREDIT,
    PERSONAL_SOURCES,
    SERVER_SOURCES,
)
from chronote_billing.core.clock import as_utc
from chronote_billing.core.errors import PermissionDenied, ValidationFailed

from .errors import CannotChangeOwnAuthorization, UnknownCaptureSource, UnknownRole
from .models import ROLES, OrgMember, SpendAuthorization
from .schemas import MemberView

ADMIN_ROLES = ("owner", "billing_admin")
MAX_CAP_CREDITS = 10**9


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def member_role(session: Session, org_id: str, user_id: str) -> str | None:
    """The user's role in the organization, or None when not a member."""
    return session.execute(
        select(OrgMember.role).where(OrgMember.org_id == org_id, OrgMember.user_id == str(user_id))
    ).scalar()


def authorization_status(auth: SpendAuthorization, now: datetime) -> str:
    if auth.revoked_at is not None and as_utc(auth.revoked_at) <= now:
        return "revoked"
    if as_utc(auth.valid_from) > now:
        return "scheduled"
    if auth.valid_until is not None and as_utc(auth.valid_until) <= now:
        return "expired"
    return "active"


def check_capture_sources(sources: Sequence[str] | None, subject_type: str) -> list[str] | None:
    if sources is None:
        return None
    cleaned = sorted({str(s).strip() for s in sources})
    unknown = [s for s in cleaned if s not in CAPTURE_SOURCES]
    if unknown:
        raise UnknownCaptureSource(
            f"Unknown capture source {', '.join(unknown)}; expected {', '.join(CAPTURE_SOURCES)}.",
            field="capture_sources",
        )
    allowed = PERSONAL_SOURCES if subject_type == "member" else SERVER_SOURCES
    wrong = [s for s in cleaned if s not in allowed]
    if wrong or not cleaned:
        raise ValidationFailed(
            f"A {subject_type} authorization may allow {', '.join(allowed)}"
            + (f", not {', '.join(wrong)}." if wrong else "; give at least one or null for all."),
            field="capture_sources",
        )
    return cleaned


def cap_millicredits(cap_credits: int | None) -> int | None:
    if cap_credits is None:
        return None
    if isinstance(cap_credits, bool) or not isinstance(cap_credits, int) or cap_credits < 0:
        raise ValidationFailed(
            "The monthly cap must be a whole number of credits, 0 or more.", field="monthly_cap_credits"
        )
    if cap_credits > MAX_CAP_CREDITS:
        raise ValidationFailed(
            "The monthly cap is larger than any balance can be.", field="monthly_cap_credits"
        )
    return cap_credits * MILLICREDITS_PER_CREDIT


def iso(moment: datetime | None) -> str | None:
    return as_utc(moment).isoformat() if moment else None


def auth_state(a: SpendAuthorization) -> dict[str, Any]:
    return {
        "subject_type": a.subject_type,
        "subject_id": a.subject_id,
        "monthly_cap": a.monthly_cap,
        "capture_sources": a.capture_sources,
        "valid_from": iso(a.valid_from),
        "valid_until": iso(a.valid_until),
        "revoked_at": iso(a.revoked_at),
    }


def check_role(role: str) -> None:
    if role not in ROLES:
        raise UnknownRole(f"Unknown role '{role}'; roles are {', '.join(ROLES)}.", field="role")


def member_view(m: OrgMember) -> MemberView:
    return MemberView(
        org_id=m.org_id, user_id=m.user_id, role=m.role, added_by=m.added_by, created_at=m.created_at
    )


def require_admin(session: Session, org_id: str, org_name: str, actor_user_id: str) -> str:
    """The actor's role when it may manage the organization (owner or billing admin)."""
    role = member_role(session, org_id, str(actor_user_id))
    if role not in ADMIN_ROLES:
        raise PermissionDenied(
            f"Managing {org_name} needs the owner or billing admin role.",
            missing_permission=f"role owner or billing_admin in organization {org_id}",
            org_id=org_id,
        )
    assert role is not None
    return role


def require_owner_for(actor_role: str, org_id: str, message: str) -> None:
    """Some changes (another owner, the owner role, removing an owner) are for owners only."""
    if actor_role != "owner":
        raise PermissionDenied(message, missing_permission=f"role owner in organization {org_id}")


def require_not_self(actor_role: str, actor_user_id: str, auth: SpendAuthorization) -> None:
    """A billing admin never changes their own spending; an owner controls the money outright."""
    if auth.subject_type == "member" and auth.subject_id == str(actor_user_id) and actor_role != "owner":
        raise CannotChangeOwnAuthorization(
            "You cannot change your own authorization; an owner must.",
            missing_permission="another owner or billing_admin",
            authorization_id=auth.id,
        )


def require_org_role(session: Session, principal: Principal, org_id: str, *, admin: bool) -> None:
    """Reading an organization needs membership (its lists: owner or billing admin); an operator
    reads every organization."""
    if principal.is_operator:
        return
    user = principal.require_user()
    role = member_role(session, org_id, user)
    if role is None or (admin and role not in ADMIN_ROLES):
        needed = "owner or billing_admin" if admin else "member"
        raise PermissionDenied(
            f"Needs the {needed} role in organization {org_id}.",
            missing_permission=f"role {needed} in organization {org_id}",
        )
