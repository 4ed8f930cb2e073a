"""Access rules (D11, decision 0029): who may see or manage a billing account, and who may
act on a recording or read a meeting's attribution.

A *principal* is whoever is asking: a service client (API key with scopes, acting for a Discord
user and stating which guilds that user manages, as checked with Discord) or a person signed in
to the portal (Discord user id and the guilds Discord says they manage). Every read and write is
for someone: a service key that names no acting user is refused everywhere except the operator
routes and auto-recorded server meetings. Every denial names the permission that was missing.

The rules over recordings and attributions are pure functions of the principal and a few facts
of the record, so the database fast path (decision 0031) can be checked against them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.core.errors import PermissionDenied


@dataclass(frozen=True)
class Principal:
    kind: str  # "service" or "person"
    scopes: frozenset[str] = frozenset()
    user_id: str | None = None
    managed_guilds: frozenset[str] = field(default_factory=frozenset)
    key_id: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.kind == "service" and "operator" in self.scopes

    def has_scope(self, scope: str) -> bool:
        if self.kind == "person":
            return True  # people are limited by what they own, not by scopes
        return "operator" in self.scopes or scope in self.scopes

    def require_scope(self, scope: str) -> None:
        if not self.has_scope(scope):
            raise PermissionDenied(
                f"This API key lacks the '{scope}' scope.", missing_permission=f"scope:{scope}"
            )

    @property
    def is_auto_recorder(self) -> bool:
        """A service key recording a server's meetings automatically: no person behind it."""
        return self.kind == "service" and self.user_id is None and "recordings:auto" in self.scopes

    def require_user(self) -> str:
        if not self.user_id:
            raise PermissionDenied(
                "This request must name the acting Discord user.", missing_permission="acting_user"
            )
        return self.user_id


def org_role(session: Session, org_id: str, user_id: str) -> str | None:
    from chronote_billing.orgs.service import member_role

    return member_role(session, org_id, user_id)


NO_ACTING_USER = "an acting user (Chronote-Acting-User)"


def can_manage(session: Session, principal: Principal, account: BillingAccount) -> str | None:
    """None when allowed, else the missing permission."""
    if principal.is_operator:
        return None
    if principal.user_id is None:
        return NO_ACTING_USER
    if account.kind == AccountKind.PERSONAL:
        return None if principal.user_id == account.owner_ref else "owner of this personal account"
    if account.kind == AccountKind.SERVER:
        return (
            None if account.owner_ref in principal.managed_guilds else "Manage Server on this Discord server"
        )
    if principal.user_id and org_role(session, account.owner_ref, principal.user_id) in (
        "owner",
        "billing_admin",
    ):
        return None
    return "owner or billing_admin role in this organization"


def require_manage(session: Session, principal: Principal, account: BillingAccount) -> None:
    missing = can_manage(session, principal, account)
    if missing is not None:
        raise PermissionDenied(
            f"Not allowed on billing account '{account.id}': needs {missing}.",
            missing_permission=missing,
            account_id=account.id,
        )


def require_view(session: Session, principal: Principal, account: BillingAccount) -> None:
    """Reading a payer's balance, statement, grants or usage needs the same as managing it: there
    is no read by bare account id, not even for a service key acting for nobody (0011, 0029)."""
    require_manage(session, principal, account)


# ---------------------------------------------------------------- recordings and meetings

RECORDING_OWNER = "the user who started this recording, or Manage Server on its server"


def recording_permission(
    principal: Principal, owner_user_id: str | None, context: str, guild_id: str | None
) -> str | None:
    """Who may read, extend or settle a recording, upload or metered charge: None when allowed,
    else the missing permission. The owner is the user who started it; a server recording also
    belongs to the managers of its server; an auto-recorded one (no user) to the auto-recorder."""
    if principal.is_operator:
        return None
    if principal.user_id is None:
        if principal.is_auto_recorder and owner_user_id is None and context == "server":
            return None
        return NO_ACTING_USER
    if owner_user_id is not None and principal.user_id == owner_user_id:
        return None
    if context == "server" and guild_id is not None and guild_id in principal.managed_guilds:
        return None
    return RECORDING_OWNER


def may_see_server_credits(principal: Principal, guild_id: str | None) -> bool:
    """What a server has left is for its managers; its plan and limits are for anyone acting."""
    return principal.is_operator or (guild_id is not None and guild_id in principal.managed_guilds)


def may_read_attribution(
    principal: Principal,
    owner_user_id: str | None,
    guilds: Iterable[str],
    paying_org_role: str | None,
) -> bool:
    """A meeting's attribution: its owner, managers of the server it was recorded in or shared
    to (``guilds``), and owners and billing admins of the organization that paid."""
    if principal.is_operator:
        return True
    if principal.user_id is None:
        return principal.is_auto_recorder and owner_user_id is None
    if owner_user_id is not None and principal.user_id == owner_user_id:
        return True
    if any(g in principal.managed_guilds for g in guilds):
        return True
    return paying_org_role in ("owner", "billing_admin")
