"""The usage domain's front door (D8): recordings, uploads, metered events, shares, and the
funding sources and entitlements each person and server reads.

The work itself lives beside it, one concern a module: who pays (:mod:`.attribution`, pure),
the facts it reads (:mod:`.facts`), recordings and uploads (:mod:`.recordings`), metered events
(:mod:`.events`), meetings (:mod:`.meetings`). This class wires them for the container and keeps
the read models of funding sources and entitlements.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal
from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.accounts.service import AccountService, check_snowflake
from chronote_billing.balances import service as balances
from chronote_billing.catalog.service import PERSONAL_SOURCES, SERVER_SOURCES, Catalog, Plan
from chronote_billing.core import idempotency
from chronote_billing.core.clock import Clock
from chronote_billing.core.errors import ValidationFailed
from chronote_billing.ledger.service import LedgerService
from chronote_billing.notifications.service import NotificationService
from chronote_billing.orgs.models import SpendAuthorization
from chronote_billing.orgs.service import OrgService, member_role
from chronote_billing.plans.service import current_plan
from chronote_billing.plans.trials import trial_view

from .attribution import FundingSourceNotHeld, credits_text, personal_label, server_label
from .errors import (
    CaptureSourceMismatch,
    FundingSourceNotAllowed,
    RecordingAlreadySettled,
    RecordingExpired,
    RecordingInProgress,
    RecordingNotOpen,
    RecordingTooLong,
    UsageDeclined,
)
from .events import EventService
from .meetings import MeetingService
from .models import FundingPreference
from .recordings import RecordingService, write_or_record_decline
from .schemas import (
    AttributionView,
    Decision,
    EntitlementsView,
    EventRequest,
    FundingSourceView,
    RecordingView,
    UsageRequest,
)

__all__ = [
    "CaptureSourceMismatch",
    "FundingSourceNotAllowed",
    "FundingSourceNotHeld",
    "RecordingAlreadySettled",
    "RecordingExpired",
    "RecordingInProgress",
    "RecordingNotOpen",
    "RecordingTooLong",
    "UsageDeclined",
    "UsageService",
    "credits_text",
    "write_or_record_decline",
]


class UsageService:
    def __init__(
        self,
        clock: Clock,
        ledger: LedgerService,
        accounts: AccountService,
        orgs: OrgService,
        notifications: NotificationService,
        catalog: Catalog,
    ) -> None:
        self.clock = clock
        self.ledger = ledger
        self.accounts = accounts
        self.orgs = orgs
        self.notifications = notifications
        self.catalog = catalog
        self.recordings = RecordingService(clock, self.catalog, ledger, accounts, orgs, notifications)
        self.events = EventService(self.recordings)
        self.meetings = MeetingService(clock, accounts)

    # ================================================================== recordings and events

    def quote(self, session: Session, request: UsageRequest) -> Decision:
        return self.recordings.quote(session, request)

    def start_recording(self, session: Session, request: UsageRequest, idempotency_key: str) -> RecordingView:
        return self.recordings.start(session, request, idempotency_key)

    def extend_recording(
        self,
        session: Session,
        principal: Principal,
        recording_id: str,
        additional_minutes: int,
        idempotency_key: str,
        allow_partial: bool = False,
    ) -> RecordingView:
        return self.recordings.extend(
            session, principal, recording_id, additional_minutes, idempotency_key, allow_partial
        )

    def finish_recording(
        self,
        session: Session,
        principal: Principal,
        recording_id: str,
        seconds_by_source: dict[str, int],
        idempotency_key: str,
    ) -> RecordingView:
        return self.recordings.finish(session, principal, recording_id, seconds_by_source, idempotency_key)

    def cancel_recording(
        self, session: Session, principal: Principal, recording_id: str, idempotency_key: str
    ) -> RecordingView:
        return self.recordings.cancel(session, principal, recording_id, idempotency_key)

    def fail_recording(
        self, session: Session, principal: Principal, recording_id: str, idempotency_key: str
    ) -> RecordingView:
        return self.recordings.cancel(session, principal, recording_id, idempotency_key, failed=True)

    def get_recording(self, session: Session, principal: Principal, recording_id: str) -> RecordingView:
        return self.recordings.get(session, principal, recording_id)

    def charge_event(self, session: Session, request: EventRequest) -> RecordingView:
        return self.events.charge(session, request)

    def record_decline(self, session: Session, declined: UsageDeclined) -> None:
        self.recordings.record_decline(session, declined)

    # ================================================================== meetings

    def record_share(
        self, session: Session, *, meeting_id: str, guild_id: str, user_id: str, idempotency_key: str
    ) -> AttributionView:
        return self.meetings.share(
            session,
            meeting_id=meeting_id,
            guild_id=guild_id,
            user_id=user_id,
            idempotency_key=idempotency_key,
        )

    def meeting_attribution(self, session: Session, principal: Principal, meeting_id: str) -> AttributionView:
        return self.meetings.attribution(session, principal, meeting_id)

    # ================================================================== funding sources

    def funding_sources(self, session: Session, user_id: str) -> list[FundingSourceView]:
        """The personal wallet, then each authorization the user holds, in their default order."""
        user = check_snowflake(user_id, "user_id")
        now = self.clock.now()
        personal = self.accounts.find(session, AccountKind.PERSONAL, user)
        plan = (
            current_plan(session, personal, now, self.catalog)
            if personal
            else self.catalog.free_plan("personal")
        )
        views: list[FundingSourceView] = []
        available = (
            balances.available(session, self.ledger, personal, self.catalog)
            if personal
            else (plan.included_millicredits if plan and plan.is_free else 0)
        )
        views.append(
            FundingSourceView(
                id="personal",
                kind="personal",
                label=personal_label(plan),
                account_id=personal.id if personal else "",
                status="active",
                capture_sources=list(plan.capture_sources if plan else PERSONAL_SOURCES),
                max_recording_minutes=plan.max_recording_minutes if plan else 0,
                left=available,
                position=0,
            )
        )
        org_max = int(self.catalog.organization.get("max_recording_minutes", 0))
        for auth in self.orgs.authorizations_for_user(session, user):
            if auth.status in ("revoked",):
                continue
            org = self.orgs.get_org(session, auth.org_id)
            views.append(
                FundingSourceView(
                    id=auth.id,
                    kind="authorization",
                    label=f"{auth.org_name} authorization",
                    account_id=org.billing_account_id,
                    org_id=auth.org_id,
                    org_name=auth.org_name,
                    status=auth.status,
                    capture_sources=auth.capture_sources or list(PERSONAL_SOURCES),
                    max_recording_minutes=org_max,
                    monthly_cap=auth.monthly_cap,
                    used=auth.used,
                    held=auth.held,
                    left=auth.left,
                    over_cap=auth.over_cap,
                    position=0,
                )
            )
        order = self._preferred_order(session, user)
        rank = {sid: i for i, sid in enumerate(order)}
        head, rest = views[:1], views[1:]
        rest.sort(key=lambda v: (rank.get(v.id, len(rank)),))
        result = head + rest
        for i, v in enumerate(result):
            v.position = i
        return result

    def set_default_order(
        self, session: Session, user_id: str, order: list[str], idempotency_key: str
    ) -> list[FundingSourceView]:
        """Set the order of the user's authorizations after the personal wallet (D8)."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        user = check_snowflake(user_id, "user_id")
        if not isinstance(order, list) or not all(isinstance(x, str) for x in order):
            raise ValidationFailed("order must be a list of funding source ids.", field="order")
        if len(set(order)) != len(order):
            raise ValidationFailed("order lists a funding source twice.", field="order")
        if "personal" in order[1:]:
            raise ValidationFailed(
                "The personal wallet always comes first; order the authorizations after it.", field="order"
            )
        auth_ids = [x for x in order if x != "personal"]
        for auth_id in auth_ids:
            self._held_authorization(session, user, auth_id)
        params = {"user_id": user, "order": auth_ids}
        personal = self.accounts.get_or_create(session, AccountKind.PERSONAL, user)
        self.accounts.lock_row(session, personal.id)
        once = idempotency.Once(
            list[FundingSourceView], idempotency.scope_of("usage.funding_order", user), key, params, now
        )
        if (prior := once.prior(session)) is not None:
            return prior
        if session.get(FundingPreference, user) is None:
            session.execute(
                insert(FundingPreference).values(user_id=user, source_order=auth_ids, updated_at=now)
            )
        else:
            session.execute(
                update(FundingPreference)
                .where(FundingPreference.user_id == user)
                .values(source_order=auth_ids, updated_at=now)
            )
        return once.remember(session, self.funding_sources(session, user))

    def entitlements(
        self, session: Session, user_id: str, guild_id: str | None, context: str
    ) -> EntitlementsView:
        """The plan's features and limits in this context, and what each funding source has left."""
        user = check_snowflake(user_id, "user_id")
        now = self.clock.now()
        if context == "personal":
            sources = self.funding_sources(session, user)
            personal = self.accounts.find(session, AccountKind.PERSONAL, user)
            plan = (
                current_plan(session, personal, now, self.catalog)
                if personal
                else self.catalog.free_plan("personal")
            )
            billed = personal.id if personal else ""
            billed_account = personal
        elif context == "server":
            if not guild_id:
                raise ValidationFailed("Server entitlements need a guild_id.", field="guild_id")
            guild = check_snowflake(guild_id, "guild_id")
            server = self.accounts.find(session, AccountKind.SERVER, guild)
            plan = (
                current_plan(session, server, now, self.catalog)
                if server
                else self.catalog.free_plan("server")
            )
            billed = server.id if server else ""
            billed_account = server
            sources = self._server_sources(session, guild, server, plan, now)
        else:
            raise ValidationFailed("context must be 'personal' or 'server'.", field="context")
        assert plan is not None
        return EntitlementsView(
            user_id=user,
            guild_id=guild_id,
            context=context,
            plan=plan.id,
            plan_name=plan.name,
            billed_to_account_id=billed,
            max_recording_minutes=plan.max_recording_minutes,
            capture_sources=list(plan.capture_sources),
            features=dict(plan.features),
            funding_sources=sources,
            trial=trial_view(session, billed_account, now, self.catalog)
            if billed_account is not None
            else None,
        )

    def _held_authorization(self, session: Session, user_id: str, auth_id: str) -> SpendAuthorization:
        auth = session.get(SpendAuthorization, auth_id)
        if (
            auth is None
            or auth.subject_type != "member"
            or auth.subject_id != user_id
            or member_role(session, auth.org_id, user_id) is None
        ):
            raise FundingSourceNotHeld(
                f"Funding source '{auth_id}' is not yours: use 'personal' or an authorization you hold.",
                field="funding_source",
                funding_source=auth_id,
            )
        return auth

    def _preferred_order(self, session: Session, user_id: str) -> list[str]:
        pref = session.get(FundingPreference, user_id)
        return list(pref.source_order) if pref else []

    def _server_sources(
        self, session: Session, guild: str, server: BillingAccount | None, plan: Plan | None, now: datetime
    ) -> list[FundingSourceView]:
        assert plan is not None
        left = (
            balances.available(session, self.ledger, server, self.catalog)
            if server
            else plan.included_millicredits
            if plan.is_free
            else 0
        )
        views = [
            FundingSourceView(
                id="server",
                kind="server",
                label=server_label(server.display_name) if server else f"Server {guild} credits",
                account_id=server.id if server else "",
                status="active",
                capture_sources=list(plan.capture_sources),
                max_recording_minutes=plan.max_recording_minutes,
                left=left,
                position=0,
            )
        ]
        auth = self.orgs.authorization_for_server(session, guild)
        if auth is not None:
            view = self.orgs.authorization_view(session, auth.id)
            org = self.orgs.get_org(session, auth.org_id)
            views.append(
                FundingSourceView(
                    id=auth.id,
                    kind="authorization",
                    label=f"{org.name} authorization",
                    account_id=org.billing_account_id,
                    org_id=org.id,
                    org_name=org.name,
                    status=view.status,
                    capture_sources=view.capture_sources or list(SERVER_SOURCES),
                    max_recording_minutes=int(self.catalog.organization.get("max_recording_minutes", 0)),
                    monthly_cap=view.monthly_cap,
                    used=view.used,
                    held=view.held,
                    left=view.left,
                    over_cap=view.over_cap,
                    position=1,
                )
            )
        return views
