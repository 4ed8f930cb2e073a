"""Spend authorizations (D11): who may spend an organization's credits, up to which monthly cap,
from which capture sources and for how long; creating, changing and revoking them, and what
each has left this month."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from chronote_billing.accounts.service import check_snowflake
from chronote_billing.core import idempotency
from chronote_billing.core.clock import as_utc
from chronote_billing.core.errors import ValidationFailed
from chronote_billing.core.ids import new_id

from . import rules
from .base import OrgBase
from .errors import (
    AuthorizationExists,
    AuthorizationRevoked,
    CannotChangeOwnAuthorization,
    NotAMember,
    ServerNotLinked,
)
from .models import OrgMember, SpendAuthorization
from .rules import UNSET
from .schemas import AuthorizationView


class Authorizations(OrgBase):
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
        cap = rules.cap_millicredits(monthly_cap_credits)
        sources = rules.check_capture_sources(capture_sources, subject_type)
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
            "valid_from": rules.iso(valid_from),
            "valid_until": rules.iso(end),
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
        once = idempotency.Once(
            AuthorizationView, idempotency.scope_of("orgs.authorize", org_id), key, params, now
        )
        if (prior := once.prior(session)) is not None:
            return prior
        if subject_type == "member" and rules.member_role(session, org_id, subject) is None:
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
            if rules.authorization_status(other, now) != "expired":
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
        self._audit(
            session, org_id, actor_user_id, "authorization.created", auth_id, None, rules.auth_state(auth)
        )
        return once.remember(session, self._auth_view(session, auth, org.name, None), auth_id)

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
            changes["monthly_cap"] = rules.cap_millicredits(monthly_cap_credits)
        if capture_sources is not UNSET:
            changes["capture_sources"] = rules.check_capture_sources(capture_sources, auth.subject_type)
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
            k: (rules.iso(v) if isinstance(v, datetime) else v) for k, v in changes.items()
        }
        org = self._lock_org(session, auth.org_id)
        self._check_may_change(session, auth, actor_user_id)
        scope = idempotency.scope_of("orgs.authorization_update", auth.org_id)
        once = idempotency.Once(AuthorizationView, scope, key, params, now)
        if (prior := once.prior(session)) is not None:
            return prior
        session.refresh(auth)
        if auth.revoked_at is not None:
            raise AuthorizationRevoked(
                f"The authorization of {self.subject_name(session, auth.subject_type, auth.subject_id)} is "
                "revoked; create a new one.",
                authorization_id=auth.id,
            )
        before = rules.auth_state(auth)
        session.execute(
            update(SpendAuthorization)
            .where(SpendAuthorization.id == auth.id)
            .values(**changes, updated_at=now)
        )
        session.refresh(auth)
        self._audit(
            session,
            auth.org_id,
            actor_user_id,
            "authorization.updated",
            auth.id,
            before,
            rules.auth_state(auth),
        )
        return once.remember(session, self._auth_view(session, auth, org.name, None))

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
        scope = idempotency.scope_of("orgs.authorization_revoke", auth.org_id)
        once = idempotency.Once(AuthorizationView, scope, key, params, now)
        if (prior := once.prior(session)) is not None:
            return prior
        session.refresh(auth)
        if auth.revoked_at is not None:
            raise AuthorizationRevoked(
                f"The authorization of {self.subject_name(session, auth.subject_type, auth.subject_id)} is "
                "already revoked.",
                authorization_id=auth.id,
            )
        self._revoke(session, auth, actor_user_id, now, "revoked")
        return once.remember(session, self._auth_view(session, auth, org.name, None))

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

    def _check_may_change(self, session: Session, auth: SpendAuthorization, actor_user_id: str) -> None:
        rules.require_not_self(self._require_admin(session, auth.org_id, actor_user_id), actor_user_id, auth)
