"""Meetings: who paid for each (its attribution, answered forever) and the servers a personal
meeting was shared with (recorded, never charged, D8)."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal, may_read_attribution
from chronote_billing.accounts.service import AccountService, check_snowflake
from chronote_billing.core import idempotency
from chronote_billing.core.clock import Clock
from chronote_billing.core.errors import NotFound, PermissionDenied, ValidationFailed
from chronote_billing.orgs.models import Organization
from chronote_billing.orgs.service import member_role

from .models import MeetingAttribution, MeetingShare
from .schemas import AttributionView


class MeetingService:
    def __init__(self, clock: Clock, accounts: AccountService) -> None:
        self.clock = clock
        self.accounts = accounts

    def share(
        self, session: Session, *, meeting_id: str, guild_id: str, user_id: str, idempotency_key: str
    ) -> AttributionView:
        """Record that a personal meeting was shared with a server: nothing is charged or moved,
        the meeting's attribution is unchanged. Only its owner shares it."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        guild = check_snowflake(guild_id, "guild_id")
        user = check_snowflake(user_id, "user_id")
        params = {"meeting_id": meeting_id, "guild_id": guild, "user_id": user}
        found = session.execute(
            select(MeetingAttribution.meeting_id)
            .where(MeetingAttribution.meeting_id == meeting_id)
            .with_for_update()
        ).scalar()
        if found is None:
            raise NotFound(f"No recorded meeting '{meeting_id}'.", meeting_id=meeting_id)
        attribution = self._attribution(session, meeting_id)
        if attribution.owner_user_id != user:
            raise PermissionDenied(
                f"Only the owner of meeting {meeting_id} can share it.",
                missing_permission="owner of this meeting",
            )
        if attribution.context != "personal":
            raise ValidationFailed("Only personal meetings are shared with servers.", field="meeting_id")
        once = idempotency.Once(
            AttributionView, idempotency.scope_of("usage.share", meeting_id), key, params, now
        )
        if (prior := once.prior(session)) is not None:
            return prior
        if session.get(MeetingShare, (meeting_id, guild)) is None:
            session.execute(
                insert(MeetingShare).values(
                    meeting_id=meeting_id, guild_id=guild, shared_by=user, created_at=now
                )
            )
        return once.remember(session, self._view(session, attribution))

    def attribution(self, session: Session, principal: Principal, meeting_id: str) -> AttributionView:
        """Who paid for a meeting: for its owner, the managers of the servers it was recorded in
        or shared to, and the admins of the organization that paid. Meeting ids can be guessed,
        so anybody else is told it does not exist (decision 0029)."""
        a = self._attribution(session, meeting_id)
        view = self._view(session, a)
        guilds = [g for g in (a.guild_id, *view.shared_with_guilds) if g]
        role = None
        if principal.user_id is not None:
            org_id = session.execute(
                select(Organization.id).where(Organization.billing_account_id == a.payer_account_id)
            ).scalar()
            role = member_role(session, org_id, principal.user_id) if org_id else None
        if not may_read_attribution(principal, a.owner_user_id, guilds, role):
            raise NotFound(f"No recorded meeting '{meeting_id}'.", meeting_id=meeting_id)
        return view

    def _view(self, session: Session, a: MeetingAttribution) -> AttributionView:
        payer = self.accounts.get(session, a.payer_account_id)
        shares = session.execute(
            select(MeetingShare.guild_id)
            .where(MeetingShare.meeting_id == a.meeting_id)
            .order_by(MeetingShare.created_at)
        ).scalars()
        return AttributionView(
            meeting_id=a.meeting_id,
            owner_user_id=a.owner_user_id,
            context=a.context,
            guild_id=a.guild_id,
            capture_source=a.capture_source,
            payer_account_id=a.payer_account_id,
            payer_kind=payer.kind,
            authorization_id=a.authorization_id,
            reason=a.reason,
            created_at=a.created_at,
            shared_with_guilds=list(shares),
        )

    @staticmethod
    def _attribution(session: Session, meeting_id: str) -> MeetingAttribution:
        a = session.get(MeetingAttribution, meeting_id)
        if a is None:
            raise NotFound(f"No recorded meeting '{meeting_id}'.", meeting_id=meeting_id)
        return a
