"""Access rules (D11): who may see or manage a billing account.

A *principal* is whoever is asking: a service client (API key with scopes, optionally acting
for a Discord user and stating which guilds that user manages, as checked with Discord) or a
person signed in to the portal (Discord user id and the guilds Discord says they manage).
Every denial names the permission that was missing.
"""

from __future__ import annotations

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

    def require_user(self) -> str:
        if not self.user_id:
            raise PermissionDenied(
                "This request must name the acting Discord user.", missing_permission="acting_user"
            )
        return self.user_id


def org_role(session: Session, org_id: str, user_id: str) -> str | None:
    from chronote_billing.orgs.service import member_role

    return member_role(session, org_id, user_id)


def can_manage(session: Session, principal: Principal, account: BillingAccount) -> str | None:
    """None when allowed, else the missing permission."""
    if principal.is_operator:
        return None
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
    """Viewing a balance needs the same as managing it; trusted service clients acting for no
    user (the bot checking a server's balance before a meeting) may read with `accounts:read`."""
    if principal.kind == "service" and principal.user_id is None and principal.has_scope("accounts:read"):
        return
    require_manage(session, principal, account)
