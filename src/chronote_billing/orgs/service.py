"""Organization rules (D7, D11): members and roles, linked servers, spend authorizations, and an
audit entry for every change.

Every write locks the organization row first, then checks its idempotency key, so concurrent
duplicates queue and the second finds the first's result. Permission and input checks raise
before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.accounts.service import AccountService, check_snowflake
from chronote_billing.catalog.service import (
    CAPTURE_SOURCES,
    MILLICREDITS_PER_CREDIT,
    PERSONAL_SOURCES,
    SERVER_SOURCES,
)
from chronote_billing.core import idempotency
from chronote_billing.core.clock import Clock, as_utc, month_key, system_clock
from chronote_billing.core.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from chronote_billing.core.ids import new_id
from chronote_billing.ledger.service import LedgerService
from chronote_billing.people import service as people

from . import audit_text
from .models import ROLES, Organization, OrgAuditEntry, OrgMember, OrgServer, SpendAuthorization
from .schemas import (
    AuditEntryView,
    AuthorizationView,
    MembershipView,
    MemberView,
    OrgView,
    ServerView,
)

ADMIN_ROLES = ("owner", "billing_admin")
MAX_CAP_CREDITS = 10**9


class UnknownCaptureSource(ValidationFailed):
    code = "unknown_capture_source"
    title = "Unknown capture source"


class UnknownRole(ValidationFailed):
    code = "unknown_role"
    title = "Unknown organization role"


class CannotChangeOwnAuthorization(PermissionDenied):
    code = "cannot_change_own_authorization"
    title = "Nobody can change their own spend authorization"


class AlreadyMember(Conflict):
    code = "already_member"
    title = "Already a member"


class NotAMember(NotFound):
    code = "not_a_member"
    title = "Not a member of this organization"


class LastOwner(Conflict):
    code = "last_owner"
    title = "An organization always keeps an owner"


class ServerAlreadyLinked(Conflict):
    code = "server_already_linked"
    title = "Server already linked to an organization"


class ServerNotLinked(NotFound):
    code = "server_not_linked"
    title = "Server not linked to this organization"


class AuthorizationExists(Conflict):
    code = "authorization_exists"
    title = "The subject already has an authorization"


class AuthorizationRevoked(Conflict):
    code = "authorization_revoked"
    title = "Authorization revoked"


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


def _cap_millicredits(cap_credits: int | None) -> int | None:
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


def _iso(moment: datetime | None) -> str | None:
    return as_utc(moment).isoformat() if moment else None


def _auth_state(a: SpendAuthorization) -> dict[str, Any]:
    return {
        "subject_type": a.subject_type,
        "subject_id": a.subject_id,
        "monthly_cap": a.monthly_cap,
        "capture_sources": a.capture_sources,
        "valid_from": _iso(a.valid_from),
        "valid_until": _iso(a.valid_until),
        "revoked_at": _iso(a.revoked_at),
    }


class OrgService:
    def __init__(
        self,
        clock: Clock = system_clock,
        ledger: LedgerService | None = None,
        accounts: AccountService | None = None,
    ) -> None:
        self.clock = clock
        self.ledger = ledger or LedgerService(clock)
        self.accounts = accounts or AccountService(clock, self.ledger)

    # ------------------------------------------------------------------ organizations

    def create_org(self, session: Session, *, actor_user_id: str, name: str, idempotency_key: str) -> OrgView:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        actor = check_snowflake(actor_user_id, "actor_user_id")
        name = str(name or "").strip()
        if not 1 <= len(name) <= 200:
            raise ValidationFailed("An organization needs a name of 1 to 200 characters.", field="name")
        params = {"actor": actor, "name": name}
        # The creator's personal account row serializes their concurrent duplicates.
        personal = self.accounts.get_or_create(session, AccountKind.PERSONAL, actor)
        session.execute(select(BillingAccount.id).where(BillingAccount.id == personal.id).with_for_update())
        once = idempotency.Once(OrgView, idempotency.scope_of("orgs.create", actor), key, params, now)
        if (prior := once.prior(session)) is not None:
            return prior
        org_id = new_id("org")
        account = self.accounts.get_or_create(session, AccountKind.ORGANIZATION, org_id, name)
        session.execute(
            insert(Organization).values(
                id=org_id, name=name, billing_account_id=account.id, created_by=actor, created_at=now
            )
        )
        session.execute(
            insert(OrgMember).values(
                org_id=org_id, user_id=actor, role="owner", added_by=actor, created_at=now
            )
        )
        self._audit(session, org_id, actor, "org.created", org_id, None, {"name": name, "owner": actor})
        self._audit(session, org_id, actor, "member.added", actor, None, {"role": "owner"})
        return once.remember(session, self._org_view(self.get_org(session, org_id)), org_id)

    def get_org(self, session: Session, org_id: str) -> Organization:
        org = session.get(Organization, org_id)
        if org is None:
            raise NotFound(f"No organization '{org_id}'.", org_id=org_id)
        return org

    def org_view(self, session: Session, org_id: str) -> OrgView:
        return self._org_view(self.get_org(session, org_id))

    def orgs_for_user(self, session: Session, user_id: str) -> list[tuple[OrgView, str]]:
        rows = session.execute(
            select(Organization, OrgMember.role)
            .join(OrgMember, OrgMember.org_id == Organization.id)
            .where(OrgMember.user_id == str(user_id))
            .order_by(Organization.created_at, Organization.id)
        ).all()
        return [(self._org_view(org), role) for org, role in rows]

    def memberships(self, session: Session, user_id: str) -> list[MembershipView]:
        return [MembershipView(org=o, role=r) for o, r in self.orgs_for_user(session, user_id)]

    def list_orgs(self, session: Session) -> list[OrgView]:
        rows = session.execute(select(Organization).order_by(Organization.created_at)).scalars()
        return [self._org_view(o) for o in rows]

    # ------------------------------------------------------------------ members

    def list_members(self, session: Session, org_id: str) -> list[MemberView]:
        self.get_org(session, org_id)
        rows = session.execute(
            select(OrgMember)
            .where(OrgMember.org_id == org_id)
            .order_by(OrgMember.created_at, OrgMember.user_id)
        ).scalars()
        members = [_member_view(m) for m in rows]
        known = people.names(session, [m.user_id for m in members])
        return [m.model_copy(update={"display_name": known.get(m.user_id)}) for m in members]

    def add_member(
        self,
        session: Session,
        *,
        actor_user_id: str,
        org_id: str,
        user_id: str,
        role: str,
        idempotency_key: str,
    ) -> MemberView:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        user = check_snowflake(user_id, "user_id")
        _check_role(role)
        params = {"org_id": org_id, "user_id": user, "role": role, "actor": actor_user_id}
        self._lock_org(session, org_id)
        actor_role = self._require_admin(session, org_id, actor_user_id)
        prior = idempotency.lookup(session, f"orgs.add_member:{org_id}", key, params)
        if prior is not None:
            return MemberView.model_validate(prior)
        if role == "owner" and actor_role != "owner":
            raise PermissionDenied(
                "Only an owner can add another owner.",
                missing_permission=f"role owner in organization {org_id}",
            )
        if member_role(session, org_id, user) is not None:
            raise AlreadyMember(
                f"{self.subject_name(session, 'member', user)} is already a member of "
                f"{self.get_org(session, org_id).name}.",
                user_id=user,
            )
        session.execute(
            insert(OrgMember).values(
                org_id=org_id, user_id=user, role=role, added_by=actor_user_id, created_at=now
            )
        )
        self._audit(session, org_id, actor_user_id, "member.added", user, None, {"role": role})
        view = self._member(session, org_id, user)
        idempotency.remember(
            session, f"orgs.add_member:{org_id}", key, params, view.model_dump(mode="json"), now
        )
        return view

    def remove_member(
        self, session: Session, *, actor_user_id: str, org_id: str, user_id: str, idempotency_key: str
    ) -> MemberView:
        """Remove a member (or leave, for oneself); their authorizations are revoked with them."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        user = str(user_id)
        params = {"org_id": org_id, "user_id": user, "actor": actor_user_id}
        self._lock_org(session, org_id)
        prior = idempotency.lookup(session, f"orgs.remove_member:{org_id}", key, params)
        if prior is not None:
            return MemberView.model_validate(prior)
        actor_role = (
            member_role(session, org_id, actor_user_id)
            if actor_user_id == user
            else self._require_admin(session, org_id, actor_user_id)
        )
        current = self._member(session, org_id, user)
        if current.role == "owner":
            if actor_role != "owner":
                raise PermissionDenied(
                    "Only an owner can remove an owner.",
                    missing_permission=f"role owner in organization {org_id}",
                )
            self._check_not_last_owner(session, org_id, user)
        for auth in self._open_authorizations(session, org_id, "member", user):
            self._revoke(session, auth, actor_user_id, now, "member removed")
        session.execute(delete(OrgMember).where(OrgMember.org_id == org_id, OrgMember.user_id == user))
        self._audit(session, org_id, actor_user_id, "member.removed", user, {"role": current.role}, None)
        idempotency.remember(
            session, f"orgs.remove_member:{org_id}", key, params, current.model_dump(mode="json"), now
        )
        return current

    def set_role(
        self,
        session: Session,
        *,
        actor_user_id: str,
        org_id: str,
        user_id: str,
        role: str,
        idempotency_key: str,
    ) -> MemberView:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        _check_role(role)
        user = str(user_id)
        params = {"org_id": org_id, "user_id": user, "role": role, "actor": actor_user_id}
        self._lock_org(session, org_id)
        actor_role = self._require_admin(session, org_id, actor_user_id)
        prior = idempotency.lookup(session, f"orgs.set_role:{org_id}", key, params)
        if prior is not None:
            return MemberView.model_validate(prior)
        current = self._member(session, org_id, user)
        if "owner" in (role, current.role) and actor_role != "owner":
            raise PermissionDenied(
                "Only an owner can grant or take away the owner role.",
                missing_permission=f"role owner in organization {org_id}",
            )
        if current.role == "owner" and role != "owner":
            self._check_not_last_owner(session, org_id, user)
        if role != current.role:
            session.execute(
                update(OrgMember)
                .where(OrgMember.org_id == org_id, OrgMember.user_id == user)
                .values(role=role)
            )
            self._audit(
                session,
                org_id,
                actor_user_id,
                "member.role_changed",
                user,
                {"role": current.role},
                {"role": role},
            )
        view = self._member(session, org_id, user)
        idempotency.remember(
            session, f"orgs.set_role:{org_id}", key, params, view.model_dump(mode="json"), now
        )
        return view

    # ------------------------------------------------------------------ servers

    def list_servers(self, session: Session, org_id: str) -> list[ServerView]:
        self.get_org(session, org_id)
        rows = session.execute(
            select(OrgServer).where(OrgServer.org_id == org_id).order_by(OrgServer.created_at)
        ).scalars()
        return [self._server_view(session, s) for s in rows]

    def server_link(self, session: Session, guild_id: str) -> OrgServer | None:
        return session.get(OrgServer, str(guild_id))

    def link_server(
        self,
        session: Session,
        *,
        actor_user_id: str,
        actor_manages_guild: bool,
        org_id: str,
        guild_id: str,
        idempotency_key: str,
    ) -> ServerView:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        guild = check_snowflake(guild_id, "guild_id")
        params = {"org_id": org_id, "guild_id": guild, "actor": actor_user_id}
        self._lock_org(session, org_id)
        self._require_admin(session, org_id, actor_user_id)
        if not actor_manages_guild:
            raise PermissionDenied(
                f"Linking {self.subject_name(session, 'server', guild)} needs Manage Server on it in Discord.",
                missing_permission=f"Manage Server on guild {guild}",
            )
        prior = idempotency.lookup(session, f"orgs.link_server:{org_id}", key, params)
        if prior is not None:
            return ServerView.model_validate(prior)
        # Two organizations linking one server at once queue on the server's account row; the
        # second then finds the first's link instead of failing on the insert.
        server_account = self.accounts.get_or_create(session, AccountKind.SERVER, guild)
        self.accounts.lock_row(session, server_account.id)
        existing = self.server_link(session, guild)
        if existing is not None:
            raise ServerAlreadyLinked(
                f"{self.subject_name(session, 'server', guild)} is already linked to an organization"
                + (" (this one)." if existing.org_id == org_id else "; unlink it there first."),
                guild_id=guild,
            )
        session.execute(
            insert(OrgServer).values(guild_id=guild, org_id=org_id, linked_by=actor_user_id, created_at=now)
        )
        self._audit(session, org_id, actor_user_id, "server.linked", guild, None, {"guild_id": guild})
        link = self.server_link(session, guild)
        assert link is not None
        view = self._server_view(session, link)
        idempotency.remember(
            session, f"orgs.link_server:{org_id}", key, params, view.model_dump(mode="json"), now
        )
        return view

    def unlink_server(
        self,
        session: Session,
        *,
        actor_user_id: str,
        org_id: str,
        guild_id: str,
        idempotency_key: str,
    ) -> ServerView:
        """Unlink a server (admins of the organization; no Discord permission needed, decision
        0021); its authorizations are revoked."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        guild = str(guild_id)
        params = {"org_id": org_id, "guild_id": guild, "actor": actor_user_id}
        self._lock_org(session, org_id)
        self._require_admin(session, org_id, actor_user_id)
        prior = idempotency.lookup(session, f"orgs.unlink_server:{org_id}", key, params)
        if prior is not None:
            return ServerView.model_validate(prior)
        link = self.server_link(session, guild)
        if link is None or link.org_id != org_id:
            raise ServerNotLinked(
                f"{self.subject_name(session, 'server', guild)} is not linked to "
                f"{self.get_org(session, org_id).name}.",
                guild_id=guild,
            )
        view = self._server_view(session, link)
        for auth in self._open_authorizations(session, org_id, "server", guild):
            self._revoke(session, auth, actor_user_id, now, "server unlinked")
        session.execute(delete(OrgServer).where(OrgServer.guild_id == guild))
        self._audit(session, org_id, actor_user_id, "server.unlinked", guild, {"guild_id": guild}, None)
        idempotency.remember(
            session, f"orgs.unlink_server:{org_id}", key, params, view.model_dump(mode="json"), now
        )
        return view

    # ------------------------------------------------------------------ authorizations

    def create_authorization(
        self,
        session: Session,
        *,
        actor_user_id: str,
        org_id: str,
        subject_type: str,
        subject_id: str,
        monthly_cap_credits: int | None,
        capture_sources: list[str] | None,
        valid_from: datetime | None,
        valid_until: datetime | None,
        idempotency_key: str,
    ) -> AuthorizationView:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        if subject_type not in ("member", "server"):
            raise ValidationFailed("subject_type must be 'member' or 'server'.", field="subject_type")
        subject = check_snowflake(subject_id, "subject_id")
        cap = _cap_millicredits(monthly_cap_credits)
        sources = check_capture_sources(capture_sources, subject_type)
        start = as_utc(valid_from) if valid_from else now
        end = as_utc(valid_until) if valid_until else None
        if end is not None and end <= start:
            raise ValidationFailed("valid_until must be after valid_from.", field="valid_until")
        params = {
            "org_id": org_id,
            "subject_type": subject_type,
            "subject_id": subject,
            "cap": cap,
            "capture_sources": sources,
            "valid_from": _iso(valid_from),
            "valid_until": _iso(end),
            "actor": actor_user_id,
        }
        org = self._lock_org(session, org_id)
        actor_role = self._require_admin(session, org_id, actor_user_id)
        # Owners control the organization's money outright, so a sole owner may authorize
        # themselves; a billing admin may not set their own spending.
        if subject_type == "member" and subject == str(actor_user_id) and actor_role != "owner":
            raise CannotChangeOwnAuthorization(
                "You cannot authorize yourself; an owner must.",
                missing_permission="another owner or billing_admin",
            )
        prior = idempotency.lookup(session, f"orgs.authorize:{org_id}", key, params)
        if prior is not None:
            return AuthorizationView.model_validate(prior)
        if subject_type == "member" and member_role(session, org_id, subject) is None:
            raise NotAMember(
                f"{self.subject_name(session, 'member', subject)} is not a member of {org.name}; add them first.",
                user_id=subject,
            )
        if subject_type == "server":
            link = self.server_link(session, subject)
            if link is None or link.org_id != org_id:
                raise ServerNotLinked(
                    f"{self.subject_name(session, 'server', subject)} is not linked to {org.name}; link it first.",
                    guild_id=subject,
                )
        for other in self._open_authorizations(session, org_id, subject_type, subject):
            if authorization_status(other, now) != "expired":
                raise AuthorizationExists(
                    f"{self.subject_name(session, subject_type, subject)} already has an authorization "
                    f"in {org.name}; change its cap or revoke it.",
                    authorization_id=other.id,
                )
        auth_id = new_id("auth")
        session.execute(
            insert(SpendAuthorization).values(
                id=auth_id,
                org_id=org_id,
                subject_type=subject_type,
                subject_id=subject,
                monthly_cap=cap,
                capture_sources=sources,
                valid_from=start,
                valid_until=end,
                revoked_at=None,
                revoked_by=None,
                created_by=actor_user_id,
                created_at=now,
                updated_at=now,
            )
        )
        auth = self.get_authorization(session, auth_id)
        self._audit(session, org_id, actor_user_id, "authorization.created", auth_id, None, _auth_state(auth))
        view = self._auth_view(session, auth, org.name, None)
        idempotency.remember(
            session, f"orgs.authorize:{org_id}", key, params, view.model_dump(mode="json"), now, auth_id
        )
        return view

    def update_authorization(
        self,
        session: Session,
        *,
        actor_user_id: str,
        authorization_id: str,
        idempotency_key: str,
        monthly_cap_credits: int | None = UNSET,
        capture_sources: list[str] | None = UNSET,
        valid_until: datetime | None = UNSET,
    ) -> AuthorizationView:
        """Change the cap, sources or end of an authorization; omitted fields stay as they are."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        changes: dict[str, Any] = {}
        auth = self.get_authorization(session, authorization_id)
        if monthly_cap_credits is not UNSET:
            changes["monthly_cap"] = _cap_millicredits(monthly_cap_credits)
        if capture_sources is not UNSET:
            changes["capture_sources"] = check_capture_sources(capture_sources, auth.subject_type)
        if valid_until is not UNSET:
            end = as_utc(valid_until) if valid_until else None
            if end is not None and end <= as_utc(auth.valid_from):
                raise ValidationFailed("valid_until must be after valid_from.", field="valid_until")
            changes["valid_until"] = end
        if not changes:
            raise ValidationFailed(
                "Nothing to change: give monthly_cap_credits, capture_sources or valid_until."
            )
        params = {"authorization_id": authorization_id, "actor": actor_user_id} | {
            k: (_iso(v) if isinstance(v, datetime) else v) for k, v in changes.items()
        }
        org = self._lock_org(session, auth.org_id)
        self._check_may_change(session, auth, actor_user_id)
        prior = idempotency.lookup(session, f"orgs.authorization_update:{auth.org_id}", key, params)
        if prior is not None:
            return AuthorizationView.model_validate(prior)
        session.refresh(auth)
        if auth.revoked_at is not None:
            raise AuthorizationRevoked(
                f"The authorization of {self.subject_name(session, auth.subject_type, auth.subject_id)} is "
                "revoked; create a new one.",
                authorization_id=auth.id,
            )
        before = _auth_state(auth)
        session.execute(
            update(SpendAuthorization)
            .where(SpendAuthorization.id == auth.id)
            .values(**changes, updated_at=now)
        )
        session.refresh(auth)
        self._audit(
            session, auth.org_id, actor_user_id, "authorization.updated", auth.id, before, _auth_state(auth)
        )
        view = self._auth_view(session, auth, org.name, None)
        idempotency.remember(
            session,
            f"orgs.authorization_update:{auth.org_id}",
            key,
            params,
            view.model_dump(mode="json"),
            now,
        )
        return view

    def revoke_authorization(
        self, session: Session, *, actor_user_id: str, authorization_id: str, idempotency_key: str
    ) -> AuthorizationView:
        """Revoke at once for new holds; holds already open may still be extended and captured."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        params = {"authorization_id": authorization_id, "actor": actor_user_id}
        auth = self.get_authorization(session, authorization_id)
        org = self._lock_org(session, auth.org_id)
        self._check_may_change(session, auth, actor_user_id)
        prior = idempotency.lookup(session, f"orgs.authorization_revoke:{auth.org_id}", key, params)
        if prior is not None:
            return AuthorizationView.model_validate(prior)
        session.refresh(auth)
        if auth.revoked_at is not None:
            raise AuthorizationRevoked(
                f"The authorization of {self.subject_name(session, auth.subject_type, auth.subject_id)} is "
                "already revoked.",
                authorization_id=auth.id,
            )
        self._revoke(session, auth, actor_user_id, now, "revoked")
        view = self._auth_view(session, auth, org.name, None)
        idempotency.remember(
            session,
            f"orgs.authorization_revoke:{auth.org_id}",
            key,
            params,
            view.model_dump(mode="json"),
            now,
        )
        return view

    def get_authorization(self, session: Session, authorization_id: str) -> SpendAuthorization:
        auth = session.get(SpendAuthorization, authorization_id)
        if auth is None:
            raise NotFound(f"No authorization '{authorization_id}'.", authorization_id=authorization_id)
        return auth

    def authorization_view(self, session: Session, authorization_id: str) -> AuthorizationView:
        auth = self.get_authorization(session, authorization_id)
        return self._auth_view(session, auth, self.get_org(session, auth.org_id).name, None)

    def list_authorizations(self, session: Session, org_id: str) -> list[AuthorizationView]:
        """Every authorization of the organization with this month's used, held and left."""
        org = self.get_org(session, org_id)
        rows = list(
            session.execute(
                select(SpendAuthorization)
                .where(SpendAuthorization.org_id == org_id)
                .order_by(SpendAuthorization.created_at, SpendAuthorization.id)
            ).scalars()
        )
        available = self.ledger.balance(session, org.billing_account_id).available
        return self._auth_views(session, rows, {org.id: org}, {org.id: available})

    def authorizations_for_user(self, session: Session, user_id: str) -> list[AuthorizationView]:
        """The member authorizations a user holds in organizations they still belong to."""
        rows = list(
            session.execute(
                select(SpendAuthorization)
                .join(
                    OrgMember,
                    (OrgMember.org_id == SpendAuthorization.org_id)
                    & (OrgMember.user_id == SpendAuthorization.subject_id),
                )
                .where(
                    SpendAuthorization.subject_type == "member", SpendAuthorization.subject_id == str(user_id)
                )
                .order_by(SpendAuthorization.created_at, SpendAuthorization.id)
            ).scalars()
        )
        return self._auth_views_for(session, rows)

    def authorization_for_server(self, session: Session, guild_id: str) -> SpendAuthorization | None:
        """The newest non-revoked authorization of the organization the server is linked to."""
        link = self.server_link(session, guild_id)
        if link is None:
            return None
        return (
            session.execute(
                select(SpendAuthorization)
                .where(
                    SpendAuthorization.org_id == link.org_id,
                    SpendAuthorization.subject_type == "server",
                    SpendAuthorization.subject_id == str(guild_id),
                    SpendAuthorization.revoked_at.is_(None),
                )
                .order_by(SpendAuthorization.created_at.desc())
            )
            .scalars()
            .first()
        )

    def left_this_month(
        self, session: Session, auth: SpendAuthorization, org_available: int | None = None
    ) -> int:
        """What the grantee can still spend now: min(cap room, the organization's available)."""
        now = self.clock.now()
        if authorization_status(auth, now) != "active":
            return 0
        if org_available is None:
            org = self.get_org(session, auth.org_id)
            org_available = self.ledger.balance(session, org.billing_account_id).available
        room = self.ledger.cap_room(session, auth.id, auth.monthly_cap, now)
        return org_available if room is None else min(room, org_available)

    # ------------------------------------------------------------------ audit

    def audit_log(self, session: Session, org_id: str, limit: int = 100) -> list[AuditEntryView]:
        if not 1 <= limit <= 1000:
            raise ValidationFailed("limit must be from 1 to 1000.", field="limit")
        self.get_org(session, org_id)
        rows = list(
            session.execute(
                select(OrgAuditEntry)
                .where(OrgAuditEntry.org_id == org_id)
                .order_by(OrgAuditEntry.id.desc())
                .limit(limit)
            ).scalars()
        )
        user_ids = {r.actor for r in rows}
        guild_ids: set[str] = set()
        for r in rows:
            user_ids.update(audit_text.mentioned_people(r.action, r.target, r.before, r.after))
            guild_ids.update(audit_text.mentioned_servers(r.action, r.target, r.before, r.after))
        names = people.names(session, user_ids)
        servers = self.server_names(session, guild_ids)
        return [
            AuditEntryView(
                id=r.id,
                org_id=r.org_id,
                actor=r.actor,
                actor_name=names.get(r.actor),
                action=r.action,
                target=r.target,
                description=audit_text.describe(r.action, r.target, r.before, r.after, names, servers),
                before=r.before,
                after=r.after,
                at=r.at,
            )
            for r in rows
        ]

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

    # ------------------------------------------------------------------ internals

    def _lock_org(self, session: Session, org_id: str) -> Organization:
        found = session.execute(
            select(Organization.id).where(Organization.id == org_id).with_for_update()
        ).scalar()
        if found is None:
            raise NotFound(f"No organization '{org_id}'.", org_id=org_id)
        return self.get_org(session, org_id)

    def _require_admin(self, session: Session, org_id: str, actor_user_id: str) -> str:
        role = member_role(session, org_id, str(actor_user_id))
        if role not in ADMIN_ROLES:
            raise PermissionDenied(
                f"Managing {self.get_org(session, org_id).name} needs the owner or billing admin role.",
                missing_permission=f"role owner or billing_admin in organization {org_id}",
                org_id=org_id,
            )
        assert role is not None
        return role

    def _check_may_change(self, session: Session, auth: SpendAuthorization, actor_user_id: str) -> None:
        actor_role = self._require_admin(session, auth.org_id, actor_user_id)
        if auth.subject_type == "member" and auth.subject_id == str(actor_user_id) and actor_role != "owner":
            raise CannotChangeOwnAuthorization(
                "You cannot change your own authorization; an owner must.",
                missing_permission="another owner or billing_admin",
                authorization_id=auth.id,
            )

    def _check_not_last_owner(self, session: Session, org_id: str, user_id: str) -> None:
        owners = (
            session.execute(
                select(OrgMember.user_id).where(OrgMember.org_id == org_id, OrgMember.role == "owner")
            )
            .scalars()
            .all()
        )
        if list(owners) == [user_id]:
            raise LastOwner(
                f"{self.subject_name(session, 'member', user_id)} is the last owner of "
                f"{self.get_org(session, org_id).name}; make someone else owner first.",
                user_id=user_id,
            )

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
        before = _auth_state(auth)
        session.execute(
            update(SpendAuthorization)
            .where(SpendAuthorization.id == auth.id)
            .values(revoked_at=now, revoked_by=actor, updated_at=now)
        )
        session.refresh(auth)
        after = _auth_state(auth) | {"why": why}
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
        return _member_view(row)

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
            status=authorization_status(auth, now),
            created_by=auth.created_by,
            created_at=auth.created_at,
            period=period,
            used=used,
            held=held,
            left=self.left_this_month(session, auth, org_available),
            over_cap=auth.monthly_cap is not None and used + held > auth.monthly_cap,
        )


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UnknownRole(f"Unknown role '{role}'; roles are {', '.join(ROLES)}.", field="role")


def _member_view(m: OrgMember) -> MemberView:
    return MemberView(
        org_id=m.org_id, user_id=m.user_id, role=m.role, added_by=m.added_by, created_at=m.created_at
    )
