"""What every part of the organization service shares: its collaborators, reading and locking
an organization, names of people and servers, the audit entry every change writes, and the
views of members, servers and authorizations.

Every write locks the organization row first, then checks its idempotency key (through
``core.idempotency.Once``), so concurrent duplicates queue and the second finds the first's
result. Permission and input checks raise before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal
from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.accounts.service import AccountService
from chronote_billing.catalog.service import MILLICREDITS_PER_CREDIT
from chronote_billing.core.clock import Clock, month_key
from chronote_billing.core.errors import NotFound
from chronote_billing.ledger.service import LedgerService
from chronote_billing.people import service as people

from . import rules
from .errors import NotAMember
from .models import Organization, OrgAuditEntry, OrgMember, OrgServer, SpendAuthorization
from .schemas import AuthorizationView, MemberView, OrgView, ServerView


class OrgBase:
    def __init__(self, clock: Clock, ledger: LedgerService, accounts: AccountService) -> None:
        self.clock = clock
        self.ledger = ledger
        self.accounts = accounts

    def readable_org(
        self, session: Session, principal: Principal, org_id: str, *, admin: bool
    ) -> Organization:
        """The organization, for a principal that may read it (its lists: an admin role); an
        unknown organization is reported before the missing role."""
        org = self.get_org(session, org_id)
        rules.require_org_role(session, principal, org_id, admin=admin)
        return org

    def get_org(self, session: Session, org_id: str) -> Organization:
        org = session.get(Organization, org_id)
        if org is None:
            raise NotFound(f"No organization '{org_id}'.", org_id=org_id)
        return org

    def server_link(self, session: Session, guild_id: str) -> OrgServer | None:
        return session.get(OrgServer, str(guild_id))

    def get_authorization(self, session: Session, authorization_id: str) -> SpendAuthorization:
        auth = session.get(SpendAuthorization, authorization_id)
        if auth is None:
            raise NotFound(f"No authorization '{authorization_id}'.", authorization_id=authorization_id)
        return auth

    def left_this_month(
        self, session: Session, auth: SpendAuthorization, org_available: int | None = None
    ) -> int:
        """What the grantee can still spend now: min(cap room, the organization's available)."""
        now = self.clock.now()
        if rules.authorization_status(auth, now) != "active":
            return 0
        if org_available is None:
            org = self.get_org(session, auth.org_id)
            org_available = self.ledger.balance(session, org.billing_account_id).available
        room = self.ledger.cap_room(session, auth.id, auth.monthly_cap, now)
        return org_available if room is None else min(room, org_available)

    def server_names(self, session: Session, guild_ids: Sequence[str] | set[str]) -> dict[str, str]:
        """The names servers' billing accounts carry (as Discord gave them), by guild id."""
        wanted = sorted(set(guild_ids))
        if not wanted:
            return {}
        rows = session.execute(
            select(BillingAccount.owner_ref, BillingAccount.display_name).where(
                BillingAccount.kind == AccountKind.SERVER, BillingAccount.owner_ref.in_(wanted)
            )
        )
        return {guild: name for guild, name in rows if name}

    def subject_name(self, session: Session, subject_type: str, subject_id: str) -> str:
        """A member by the name they signed in with, a server by its name; else the id."""
        if subject_type == "server":
            return self.server_names(session, [subject_id]).get(subject_id) or f"server {subject_id}"
        return people.names(session, [subject_id]).get(subject_id) or subject_id

    def _lock_org(self, session: Session, org_id: str) -> Organization:
        found = session.execute(
            select(Organization.id).where(Organization.id == org_id).with_for_update()
        ).scalar()
        if found is None:
            raise NotFound(f"No organization '{org_id}'.", org_id=org_id)
        return self.get_org(session, org_id)

    def _require_admin(self, session: Session, org_id: str, actor_user_id: str) -> str:
        return rules.require_admin(session, org_id, self.get_org(session, org_id).name, actor_user_id)

    def _open_authorizations(
        self, session: Session, org_id: str, subject_type: str, subject_id: str
    ) -> list[SpendAuthorization]:
        return list(
            session.execute(
                select(SpendAuthorization).where(
                    SpendAuthorization.org_id == org_id,
                    SpendAuthorization.subject_type == subject_type,
                    SpendAuthorization.subject_id == subject_id,
                    SpendAuthorization.revoked_at.is_(None),
                )
            ).scalars()
        )

    def _revoke(
        self, session: Session, auth: SpendAuthorization, actor: str, now: datetime, why: str
    ) -> None:
        before = rules.auth_state(auth)
        session.execute(
            update(SpendAuthorization)
            .where(SpendAuthorization.id == auth.id)
            .values(revoked_at=now, revoked_by=actor, updated_at=now)
        )
        session.refresh(auth)
        after = rules.auth_state(auth) | {"why": why}
        self._audit(session, auth.org_id, actor, "authorization.revoked", auth.id, before, after)

    def _audit(
        self,
        session: Session,
        org_id: str,
        actor: str,
        action: str,
        target: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        session.execute(
            insert(OrgAuditEntry).values(
                org_id=org_id,
                actor=str(actor),
                action=action,
                target=target,
                before=before,
                after=after,
                at=self.clock.now(),
            )
        )

    def _member(self, session: Session, org_id: str, user_id: str) -> MemberView:
        row = session.execute(
            select(OrgMember).where(OrgMember.org_id == org_id, OrgMember.user_id == user_id)
        ).scalar()
        if row is None:
            raise NotAMember(
                f"{self.subject_name(session, 'member', user_id)} is not a member of "
                f"{self.get_org(session, org_id).name}.",
                user_id=user_id,
            )
        session.refresh(row)
        return rules.member_view(row)

    def _server_view(self, session: Session, link: OrgServer) -> ServerView:
        account = self.accounts.get_or_create(session, AccountKind.SERVER, link.guild_id)
        return ServerView(
            org_id=link.org_id,
            guild_id=link.guild_id,
            server_account_id=account.id,
            linked_by=link.linked_by,
            created_at=link.created_at,
        )

    @staticmethod
    def _org_view(org: Organization) -> OrgView:
        return OrgView(
            id=org.id,
            name=org.name,
            billing_account_id=org.billing_account_id,
            created_by=org.created_by,
            created_at=org.created_at,
        )

    def _auth_views_for(self, session: Session, rows: list[SpendAuthorization]) -> list[AuthorizationView]:
        orgs = {o: self.get_org(session, o) for o in {r.org_id for r in rows}}
        available = {
            o: self.ledger.balance(session, org.billing_account_id).available for o, org in orgs.items()
        }
        return self._auth_views(session, rows, orgs, available)

    def _auth_views(
        self,
        session: Session,
        rows: list[SpendAuthorization],
        orgs: dict[str, Organization],
        available: dict[str, int],
    ) -> list[AuthorizationView]:
        period = month_key(self.clock.now())
        usage = self.ledger.cap_usage_many(session, [r.id for r in rows], period)
        return [
            self._auth_view(
                session, r, orgs[r.org_id].name, available[r.org_id], usage[r.id].used, usage[r.id].held
            )
            for r in rows
        ]

    def _auth_view(
        self,
        session: Session,
        auth: SpendAuthorization,
        org_name: str,
        org_available: int | None,
        used: int | None = None,
        held: int | None = None,
    ) -> AuthorizationView:
        now = self.clock.now()
        period = month_key(now)
        if used is None or held is None:
            u = self.ledger.cap_usage(session, auth.id, period)
            used, held = u.used, u.held
        return AuthorizationView(
            id=auth.id,
            org_id=auth.org_id,
            org_name=org_name,
            subject_type=auth.subject_type,
            subject_id=auth.subject_id,
            monthly_cap_credits=None
            if auth.monthly_cap is None
            else auth.monthly_cap // MILLICREDITS_PER_CREDIT,
            monthly_cap=auth.monthly_cap,
            capture_sources=list(auth.capture_sources) if auth.capture_sources is not None else None,
            valid_from=auth.valid_from,
            valid_until=auth.valid_until,
            revoked_at=auth.revoked_at,
            status=rules.authorization_status(auth, now),
            created_by=auth.created_by,
            created_at=auth.created_at,
            period=period,
            used=used,
            held=held,
            left=self.left_this_month(session, auth, org_available),
            over_cap=auth.monthly_cap is not None and used + held > auth.monthly_cap,
        )
