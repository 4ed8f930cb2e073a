"""Usage attribution (D8) and the recording lifecycle.

Who pays is decided once, when the hold is placed (or the event charged), by a fixed chain per
situation; the decision (payer, authorization, readable reason) is stored with the hold and the
usage record and never changes afterwards:

- server meeting: the server's wallet (plan allowance, then its credits), then the
  organization's wallet through that server's authorization when the server is linked; never
  anyone's personal wallet;
- personal work: the funding source the user picked (used or declined, never replaced), else
  the personal wallet, then the user's authorizations in their preferred order;
- the owner re-processing a personal meeting: the original payer while it is still valid.

Each payer is tried under its wallet lock, so the balance and the authorization's monthly cap
are checked with the hold placement atomically; a payer that cannot cover writes nothing and the
next one is tried in the same transaction. A declined request raises :class:`UsageDeclined`;
its notification is recorded in a committed write of its own (:func:`write_or_record_decline`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.accounts.service import AccountService, check_snowflake
from chronote_billing.balances import service as balances
from chronote_billing.catalog.service import CAPTURE_SOURCES, Plan, load_catalog
from chronote_billing.core import idempotency
from chronote_billing.core.clock import Clock, month_bounds, month_key, system_clock
from chronote_billing.core.db import Database
from chronote_billing.core.errors import (
    BillingError,
    CapReached,
    Conflict,
    HoldExpired,
    InsufficientCredits,
    NotFound,
    PermissionDenied,
    ValidationFailed,
)
from chronote_billing.core.ids import new_id
from chronote_billing.credits_text import whole_credits
from chronote_billing.ledger.service import CapSpec, LedgerService
from chronote_billing.notifications.service import NotificationService
from chronote_billing.orgs.models import Organization, SpendAuthorization
from chronote_billing.orgs.service import (
    PERSONAL_SOURCES,
    SERVER_SOURCES,
    OrgService,
    UnknownCaptureSource,
    authorization_status,
    member_role,
)
from chronote_billing.stripe_sync.entitlements import current_plan, ensure_free_allowance

from .models import FundingPreference, MeetingAttribution, MeetingShare, UsageRecord
from .schemas import (
    AttributionView,
    Decision,
    EntitlementsView,
    EventRequest,
    FundingSourceView,
    PayerAttempt,
    RecordingView,
    UsageRequest,
)

T = TypeVar("T")

MAX_MINUTES_PER_REQUEST = 24 * 60
MAX_SOURCES = 4
SOURCE_LABELS = {
    "discord_voice": "Discord meeting",
    "desktop": "Desktop recording",
    "web": "Web recording",
    "mobile": "Mobile recording",
    "quick_capture": "Quick capture",
    "upload": "Upload",
}
EVENT_LABELS = {"chat_to_speech_message": "Chat-to-speech message", "ask_question": "Ask question"}
GATE_CODES = ("recording_too_long", "capture_source_not_allowed")
# Metered events limited per calendar month by a plan feature (None in the plan: unlimited).
MONTHLY_QUOTAS = {"chat_to_speech_message": "chat_to_speech_per_month"}


# ---------------------------------------------------------------------- errors


class RecordingTooLong(ValidationFailed):
    code = "recording_too_long"
    title = "Longer than the plan allows"


class CaptureSourceMismatch(ValidationFailed):
    code = "capture_source_context_mismatch"
    title = "Capture source does not match the context"


class FundingSourceNotHeld(PermissionDenied):
    code = "funding_source_not_held"
    title = "Funding source not held by this user"


class FundingSourceNotAllowed(ValidationFailed):
    code = "funding_source_not_allowed"
    title = "A funding source cannot be picked here"


class RecordingNotOpen(Conflict):
    code = "recording_not_open"
    title = "Recording already settled"


class RecordingInProgress(Conflict):
    code = "recording_in_progress"
    title = "This meeting is already being recorded"


class UsageDeclined(BillingError):
    """No payer in the chain could cover the request; ``attempts`` says why, payer by payer."""

    code = "usage_declined"
    status = 402
    title = "Usage declined"

    def __init__(self, message: str, attempts: list[PayerAttempt], **details: Any) -> None:
        codes = {a.code for a in attempts}
        super().__init__(message, attempts=[a.model_dump() for a in attempts], **details)
        self.attempts = attempts
        if len(codes) == 1:
            self.code = codes.pop()
        if self.code in GATE_CODES:
            self.status = 422
            self.title = "Not allowed by the plan"
        # Set by the service: what the decline notification says and its dedupe key.
        self.notice: dict[str, Any] | None = None

    @property
    def notify(self) -> bool:
        """Plan gates (too long, source not allowed) are bad input; everything else is a decline."""
        return self.notice is not None and any(a.code not in GATE_CODES for a in self.attempts)


def write_or_record_decline(db: Database, usage: UsageService, work: Callable[[Session], T]) -> T:
    """Run a usage write; when it is declined, record the decline notification in a committed
    transaction of its own (the failed write itself is rolled back), then re-raise."""
    try:
        return db.write(work)
    except UsageDeclined as exc:
        declined = exc
        if declined.notify:
            db.write(lambda s: usage.record_decline(s, declined))
        raise


# ---------------------------------------------------------------------- helpers


def credits_text(millicredits: int) -> str:
    """Whole credits as a person reads them (decision 0039)."""
    return whole_credits(max(0, millicredits))


@dataclass
class _Candidate:
    funding_source: str  # "personal", "server" or the authorization id
    account: BillingAccount
    label: str
    max_minutes: int
    sources: tuple[str, ...]
    features: dict[str, Any]
    plan: Plan | None = None
    authorization: SpendAuthorization | None = None
    org: Organization | None = None

    @property
    def cap(self) -> CapSpec | None:
        a = self.authorization
        return CapSpec(a.id, a.monthly_cap) if a is not None else None


@dataclass
class _Chain:
    candidates: list[_Candidate]
    skipped: list[PayerAttempt] = field(default_factory=list)


@dataclass
class _Placed:
    candidate: _Candidate
    minutes: int
    amount: int
    reason: str
    hold_id: str | None = None
    debit_id: str | None = None
    expires_at: datetime | None = None


class UsageService:
    def __init__(
        self,
        clock: Clock = system_clock,
        ledger: LedgerService | None = None,
        accounts: AccountService | None = None,
        orgs: OrgService | None = None,
        notifications: NotificationService | None = None,
    ) -> None:
        self.clock = clock
        self.ledger = ledger or LedgerService(clock)
        self.accounts = accounts or AccountService(clock, self.ledger)
        self.orgs = orgs or OrgService(clock, self.ledger, self.accounts)
        self.notifications = notifications or NotificationService(clock, self.ledger)

    # ================================================================== recordings

    def quote(self, session: Session, request: UsageRequest) -> Decision:
        """The decision a start would make now, without placing anything (a savepoint that is
        rolled back), so a quote and a start can never disagree on the rules."""
        req = self._check_request(request)
        try:
            with session.begin_nested() as savepoint:
                placed, attempts = self._decide(session, req, "quote:" + new_id("q"), "hold")
                decision = self._decision(req, placed, attempts)
                savepoint.rollback()
        except UsageDeclined as exc:
            return Decision(
                approved=False,
                code=exc.code,
                reason=exc.message,
                context=req.context,
                capture_source=req.capture_source,
                requested_minutes=self._requested_minutes(req),
                approved_minutes=0,
                amount=0,
                attempts=exc.attempts,
            )
        return decision

    def start_recording(self, session: Session, request: UsageRequest, idempotency_key: str) -> RecordingView:
        """Decide the payer and place the hold; a retry with the same key returns the first result."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        req = self._check_request(request)
        params = req.model_dump()
        requester = self._lock_requester(session, req.context, req.user_id, req.guild_id)
        scope = f"usage.start:{requester.id}"
        prior = idempotency.lookup(session, scope, key, params)
        if prior is not None:
            return RecordingView.model_validate(prior)
        if req.meeting_id and self._open_recording(session, req.meeting_id) is not None:
            raise RecordingInProgress(
                f"Meeting {req.meeting_id} already has a recording in progress.", meeting_id=req.meeting_id
            )
        record_id = new_id("rec")
        try:
            placed, attempts = self._decide(session, req, f"usage:{record_id}", "hold", record_id)
        except UsageDeclined as exc:
            exc.notice = self._notice(req, exc, f"{scope}:{key}", "recording")
            raise
        cand = placed.candidate
        session.execute(
            insert(UsageRecord).values(
                id=record_id,
                kind="upload" if req.capture_source == "upload" else "recording",
                status="open",
                payer_account_id=cand.account.id,
                payer_kind=cand.account.kind,
                authorization_id=cand.authorization.id if cand.authorization else None,
                hold_id=placed.hold_id,
                debit_id=None,
                context=req.context,
                capture_source=req.capture_source,
                event_type=None,
                event_id=None,
                user_id=req.user_id,
                guild_id=req.guild_id,
                meeting_id=req.meeting_id,
                reason=placed.reason,
                requested_minutes=self._requested_minutes(req),
                approved_minutes=placed.minutes,
                max_minutes=cand.max_minutes,
                requested=self._requested_minutes(req) * self._unit(),
                held=placed.amount,
                charged=0,
                shortfall=0,
                seconds_by_source=None,
                wall_clock_seconds=None,
                rate_card_version=load_catalog().rate_card.version,
                created_at=now,
                finished_at=None,
            )
        )
        if req.meeting_id and session.get(MeetingAttribution, req.meeting_id) is None:
            session.execute(
                insert(MeetingAttribution).values(
                    meeting_id=req.meeting_id,
                    owner_user_id=req.user_id,
                    context=req.context,
                    guild_id=req.guild_id,
                    capture_source=req.capture_source,
                    payer_account_id=cand.account.id,
                    authorization_id=cand.authorization.id if cand.authorization else None,
                    usage_record_id=record_id,
                    reason=placed.reason,
                    created_at=now,
                )
            )
        self._emit_caps_reached(session, attempts)
        view = self._view(session, self._record(session, record_id), attempts)
        idempotency.remember(session, scope, key, params, view.model_dump(mode="json"), now, record_id)
        return view

    def extend_recording(
        self,
        session: Session,
        recording_id: str,
        additional_minutes: int,
        idempotency_key: str,
        allow_partial: bool = False,
    ) -> RecordingView:
        """Reserve more minutes on the same payer (never another one), up to its longest
        recording. A revoked authorization still lets an open recording finish."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        minutes = _check_minutes(additional_minutes, "additional_minutes")
        params = {"recording_id": recording_id, "minutes": minutes, "allow_partial": allow_partial}
        rec = self._lock_record(session, recording_id)
        scope = f"usage.extend:{rec.id}"
        prior = idempotency.lookup(session, scope, key, params)
        if prior is not None:
            return RecordingView.model_validate(prior)
        if rec.status != "open" or rec.hold_id is None:
            raise RecordingNotOpen(
                f"Recording {rec.id} is {rec.status}.", recording_id=rec.id, status=rec.status
            )
        room = rec.max_minutes - rec.approved_minutes
        if minutes > room:
            if not allow_partial or room <= 0:
                raise RecordingTooLong(
                    f"The recording is limited to {rec.max_minutes} min by its payer; "
                    f"{rec.approved_minutes} are held and {minutes} more were requested.",
                    max_recording_minutes=rec.max_minutes,
                )
            minutes = room
        auth = self.orgs.get_authorization(session, rec.authorization_id) if rec.authorization_id else None
        payer = self.accounts.get(session, rec.payer_account_id)
        if payer.kind != AccountKind.ORGANIZATION:
            ensure_free_allowance(session, self.ledger, payer, now)
        grace = timedelta(minutes=load_catalog().rate_card.hold_grace_minutes)
        try:
            hold = self.ledger.extend_hold(
                session,
                hold_id=rec.hold_id,
                idempotency_key=f"usage:{rec.id}:extend:{key}",
                amount=minutes * self._unit(),
                expires_at=now + grace,
                allow_partial=allow_partial,
                cap_limit=auth.monthly_cap if auth else None,
            )
        except (InsufficientCredits, CapReached) as exc:
            attempt = PayerAttempt(
                funding_source=auth.id if auth else ("server" if payer.kind == "server" else "personal"),
                account_id=payer.id,
                authorization_id=auth.id if auth else None,
                code=exc.code,
                reason=f"{rec.reason}: {exc.message}",
            )
            declined = UsageDeclined(
                f"Extension declined; the recording keeps its {rec.approved_minutes} min. {attempt.reason}",
                [attempt],
                recording_id=rec.id,
                approved_minutes=rec.approved_minutes,
            )
            declined.notice = {
                "account_id": payer.id,
                "dedupe_key": f"hold.declined:{scope}:{key}",
                "data": {
                    "kind": "extension",
                    "recording_id": rec.id,
                    "user_id": rec.user_id,
                    "guild_id": rec.guild_id,
                    "meeting_id": rec.meeting_id,
                    "code": exc.code,
                    "reason": attempt.reason,
                },
                "caps_reached": [auth.id] if auth and exc.code == "cap_reached" else [],
            }
            raise declined from exc
        added = hold.amount_held - rec.held
        session.execute(
            update(UsageRecord)
            .where(UsageRecord.id == rec.id)
            .values(
                held=hold.amount_held,
                approved_minutes=hold.amount_held // self._unit(),
                requested_minutes=rec.requested_minutes + minutes,
                requested=rec.requested + minutes * self._unit(),
            )
        )
        view = self._view(session, self._record(session, rec.id))
        view.partial = added < minutes * self._unit()
        idempotency.remember(session, scope, key, params, view.model_dump(mode="json"), now)
        return view

    def finish_recording(
        self, session: Session, recording_id: str, seconds_by_source: dict[str, int], idempotency_key: str
    ) -> RecordingView:
        """Charge the wall-clock minutes (the longest source, rounded up once) and release the
        rest. Never more than held: a cost above the hold is recorded as a shortfall. Uploads
        pass their probed duration; settling is keyed by the recording, so processing retries
        never charge twice."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        seconds = _check_seconds(seconds_by_source)
        params = {"recording_id": recording_id, "seconds_by_source": seconds}
        rec = self._lock_record(session, recording_id)
        scope = f"usage.finish:{rec.id}"
        prior = idempotency.lookup(session, scope, key, params)
        if prior is not None:
            return RecordingView.model_validate(prior)
        if rec.status == "finished":
            return self._view(session, rec)  # a processing retry: settled once, by recording id
        if rec.status != "open" or rec.hold_id is None:
            raise RecordingNotOpen(
                f"Recording {rec.id} is {rec.status}.", recording_id=rec.id, status=rec.status
            )
        rate = load_catalog().rate_card
        wall = max(seconds.values())
        cost = rate.meeting_cost(wall)
        label = SOURCE_LABELS.get(rec.capture_source or "", "Recording")
        minutes = -(-wall // 60)
        if rec.kind == "upload" and minutes > rec.max_minutes:
            self.ledger.release_hold(
                session,
                hold_id=rec.hold_id,
                idempotency_key=f"usage:{rec.id}:release",
                reason=f"{label} refused: {minutes} min is longer than the {rec.max_minutes}-minute limit",
            )
            return self._settle_record(session, rec, "failed", 0, 0, seconds, wall, now, scope, key, params)
        held = rec.held
        if cost > held and rec.kind == "upload":
            held = self._try_extend_for_upload(session, rec, cost - held, now)
        charge = min(cost, held)
        self.ledger.capture_hold(
            session,
            hold_id=rec.hold_id,
            amount=charge,
            idempotency_key=f"usage:{rec.id}:capture",
            reason=f"{label}, {minutes} min · {self._statement_reason_of(session, rec)}",
        )
        self.notifications.after_balance_change(session, rec.payer_account_id)
        return self._settle_record(
            session, rec, "finished", charge, cost - charge, seconds, wall, now, scope, key, params
        )

    def cancel_recording(
        self, session: Session, recording_id: str, idempotency_key: str, failed: bool = False
    ) -> RecordingView:
        """Cancel (the user stopped it before anything to charge) or fail (processing failed on
        our side): the hold is released, nothing is charged."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        status = "failed" if failed else "cancelled"
        params = {"recording_id": recording_id, "status": status}
        rec = self._lock_record(session, recording_id)
        scope = f"usage.cancel:{rec.id}"
        prior = idempotency.lookup(session, scope, key, params)
        if prior is not None:
            return RecordingView.model_validate(prior)
        if rec.status in ("cancelled", "failed"):
            return self._view(session, rec)
        if rec.status != "open" or rec.hold_id is None:
            raise RecordingNotOpen(
                f"Recording {rec.id} is {rec.status}; it cannot be {status}.",
                recording_id=rec.id,
                status=rec.status,
            )
        hold = self.ledger.get_hold(session, rec.hold_id)
        if hold.status == "open":
            self.ledger.release_hold(
                session,
                hold_id=rec.hold_id,
                idempotency_key=f"usage:{rec.id}:release",
                reason=f"{'processing failed' if failed else 'cancelled'} · {rec.reason}",
            )
        return self._settle_record(session, rec, status, 0, 0, None, None, now, scope, key, params)

    def fail_recording(self, session: Session, recording_id: str, idempotency_key: str) -> RecordingView:
        return self.cancel_recording(session, recording_id, idempotency_key, failed=True)

    def get_recording(self, session: Session, recording_id: str) -> RecordingView:
        return self._view(session, self._record(session, recording_id))

    # ================================================================== metered events

    def charge_event(self, session: Session, request: EventRequest) -> RecordingView:
        """Charge a metered event at once by the rate card; idempotent by event id."""
        now = self.clock.now()
        req = self._check_event(request)
        amount = load_catalog().rate_card.metered_cost(req.event_type)
        params = req.model_dump()
        requester = self._lock_requester(session, req.context, req.user_id, req.guild_id)
        scope = f"usage.event:{requester.id}"
        prior = idempotency.lookup(session, scope, req.event_id, params)
        if prior is not None:
            return RecordingView.model_validate(prior)
        usage_req = UsageRequest(
            context=req.context,
            capture_source="",
            user_id=req.user_id,
            guild_id=req.guild_id,
            meeting_id=req.meeting_id,
            funding_source=req.funding_source,
        )
        record_id = new_id("use")
        try:
            placed, attempts = self._decide(
                session,
                usage_req,
                f"usage:{record_id}",
                "debit",
                record_id,
                amount=amount,
                event_type=req.event_type,
            )
        except UsageDeclined as exc:
            exc.notice = self._notice(usage_req, exc, f"{scope}:{req.event_id}", req.event_type)
            raise
        cand = placed.candidate
        session.execute(
            insert(UsageRecord).values(
                id=record_id,
                kind="event",
                status="charged",
                payer_account_id=cand.account.id,
                payer_kind=cand.account.kind,
                authorization_id=cand.authorization.id if cand.authorization else None,
                hold_id=None,
                debit_id=placed.debit_id,
                context=req.context,
                capture_source=None,
                event_type=req.event_type,
                event_id=req.event_id,
                user_id=req.user_id,
                guild_id=req.guild_id,
                meeting_id=req.meeting_id,
                reason=placed.reason,
                requested_minutes=0,
                approved_minutes=0,
                max_minutes=0,
                requested=amount,
                held=0,
                charged=amount,
                shortfall=0,
                seconds_by_source=None,
                wall_clock_seconds=None,
                rate_card_version=load_catalog().rate_card.version,
                created_at=now,
                finished_at=now,
            )
        )
        self._emit_caps_reached(session, attempts)
        self.notifications.after_balance_change(session, cand.account.id)
        view = self._view(session, self._record(session, record_id), attempts)
        idempotency.remember(
            session, scope, req.event_id, params, view.model_dump(mode="json"), now, record_id
        )
        return view

    # ================================================================== meetings

    def record_share(
        self, session: Session, *, meeting_id: str, guild_id: str, user_id: str, idempotency_key: str
    ) -> AttributionView:
        """Record that a personal meeting was shared with a server: nothing is charged or moved,
        the meeting's attribution is unchanged."""
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
        scope = f"usage.share:{meeting_id}"
        prior = idempotency.lookup(session, scope, key, params)
        if prior is not None:
            return AttributionView.model_validate(prior)
        if session.get(MeetingShare, (meeting_id, guild)) is None:
            session.execute(
                insert(MeetingShare).values(
                    meeting_id=meeting_id, guild_id=guild, shared_by=user, created_at=now
                )
            )
        view = self.meeting_attribution(session, meeting_id)
        idempotency.remember(session, scope, key, params, view.model_dump(mode="json"), now)
        return view

    def meeting_attribution(self, session: Session, meeting_id: str) -> AttributionView:
        a = self._attribution(session, meeting_id)
        payer = self.accounts.get(session, a.payer_account_id)
        shares = session.execute(
            select(MeetingShare.guild_id)
            .where(MeetingShare.meeting_id == meeting_id)
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

    # ================================================================== funding sources

    def funding_sources(self, session: Session, user_id: str) -> list[FundingSourceView]:
        """The personal wallet, then each authorization the user holds, in their default order."""
        user = check_snowflake(user_id, "user_id")
        now = self.clock.now()
        personal = self.accounts.find(session, AccountKind.PERSONAL, user)
        plan = current_plan(session, personal, now) if personal else load_catalog().free_plan("personal")
        views: list[FundingSourceView] = []
        available = (
            balances.available(session, self.ledger, personal)
            if personal
            else (plan.included_millicredits if plan and plan.is_free else 0)
        )
        views.append(
            FundingSourceView(
                id="personal",
                kind="personal",
                label=_personal_label(plan),
                account_id=personal.id if personal else "",
                status="active",
                capture_sources=list(plan.capture_sources if plan else PERSONAL_SOURCES),
                max_recording_minutes=plan.max_recording_minutes if plan else 0,
                left=available,
                position=0,
            )
        )
        org_max = int(load_catalog().organization.get("max_recording_minutes", 0))
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
        scope = f"usage.funding_order:{user}"
        prior = idempotency.lookup(session, scope, key, params)
        if prior is not None:
            return [FundingSourceView.model_validate(v) for v in prior]
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
        views = self.funding_sources(session, user)
        idempotency.remember(session, scope, key, params, [v.model_dump(mode="json") for v in views], now)
        return views

    def entitlements(
        self, session: Session, user_id: str, guild_id: str | None, context: str
    ) -> EntitlementsView:
        """The plan's features and limits in this context, and what each funding source has left."""
        user = check_snowflake(user_id, "user_id")
        now = self.clock.now()
        if context == "personal":
            sources = self.funding_sources(session, user)
            personal = self.accounts.find(session, AccountKind.PERSONAL, user)
            plan = current_plan(session, personal, now) if personal else load_catalog().free_plan("personal")
            billed = personal.id if personal else ""
        elif context == "server":
            if not guild_id:
                raise ValidationFailed("Server entitlements need a guild_id.", field="guild_id")
            guild = check_snowflake(guild_id, "guild_id")
            server = self.accounts.find(session, AccountKind.SERVER, guild)
            plan = current_plan(session, server, now) if server else load_catalog().free_plan("server")
            billed = server.id if server else ""
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
        )

    # ================================================================== declines

    def record_decline(self, session: Session, declined: UsageDeclined) -> None:
        """The committed write of a decline: its notification, and a cap-reached alert per
        authorization whose cap stopped it."""
        notice = declined.notice
        if not notice:
            return
        self.notifications.emit(
            session,
            "hold.declined",
            notice["account_id"],
            notice["data"] | {"code": declined.code, "attempts": [a.model_dump() for a in declined.attempts]},
            dedupe_key=notice["dedupe_key"][:255],
        )
        for auth_id in notice.get("caps_reached", []):
            self._emit_cap_reached(session, auth_id)

    # ================================================================== the engine

    def _decide(
        self,
        session: Session,
        req: UsageRequest,
        ledger_key: str,
        mode: str,
        record_id: str | None = None,
        amount: int | None = None,
        event_type: str | None = None,
    ) -> tuple[_Placed, list[PayerAttempt]]:
        now = self.clock.now()
        unit = self._unit()
        chain = self._chain(session, req, now)
        attempts = list(chain.skipped)
        requested_minutes = self._requested_minutes(req)
        sized_from_file = req.capture_source == "upload" and req.declared_duration_seconds is None
        fits: list[tuple[_Candidate, int, int, int]] = []  # candidate, minutes, amount, approvable
        what = EVENT_LABELS.get(event_type or "", "") or SOURCE_LABELS.get(req.capture_source, "Usage")
        for cand in chain.candidates:

            def attempt(code: str, why: str, cand: _Candidate = cand) -> None:
                attempts.append(
                    PayerAttempt(
                        funding_source=cand.funding_source,
                        account_id=cand.account.id,
                        authorization_id=cand.authorization.id if cand.authorization else None,
                        code=code,
                        reason=f"{cand.label}: {why}",
                    )
                )

            if req.capture_source and req.capture_source not in cand.sources:
                attempt("capture_source_not_allowed", f"{what.lower()}s are not allowed")
                continue
            minutes = requested_minutes
            if mode == "hold":
                if minutes > cand.max_minutes:
                    if not (req.allow_partial or sized_from_file):
                        attempt(
                            "recording_too_long",
                            f"recordings up to {cand.max_minutes} min, {minutes} requested",
                        )
                        continue
                    minutes = cand.max_minutes
                need = minutes * unit
            else:
                assert amount is not None
                need = amount
            if cand.account.kind != AccountKind.ORGANIZATION:
                ensure_free_allowance(session, self.ledger, cand.account, now)
            # The payer's wallet lock before reading its balance and cap: reading and the hold
            # placed on it are one step.
            self.ledger.lock_wallet(session, cand.account.id)
            # Monthly feature quotas of the payer's plan (chat-to-speech messages), counted
            # under the payer's wallet lock so two concurrent events cannot both take the last one.
            limit = cand.features.get(MONTHLY_QUOTAS.get(event_type or "", ""))
            if (
                isinstance(limit, int)
                and self._events_this_month(session, cand.account.id, event_type, now) >= limit
            ):
                attempt("feature_limit_reached", f"{limit} {what.lower()}s a month on this plan, all used")
                continue
            available = self.ledger.balance(session, cand.account.id).available
            room = (
                self.ledger.cap_room(session, cand.authorization.id, cand.authorization.monthly_cap, now)
                if cand.authorization
                else None
            )
            approvable = available if room is None else min(available, room)
            if need <= approvable:
                placed = self._place(
                    session, req, cand, minutes, need, approvable, ledger_key, mode, record_id, what, now
                )
                return placed, attempts
            if room is not None and room < min(need, available):
                cap = cand.authorization.monthly_cap if cand.authorization else None
                attempt(
                    "cap_reached",
                    f"monthly cap reached, {credits_text(room)} of {credits_text(cap or 0)} credits left this month, "
                    f"{credits_text(need)} needed",
                )
            else:
                attempt(
                    "insufficient_credits",
                    f"{credits_text(available)} credits available, {credits_text(need)} needed",
                )
            fits.append((cand, minutes, need, approvable))
        if mode == "hold" and req.allow_partial:
            best: tuple[_Candidate, int, int, int] | None = None
            for item in fits:
                if best is None or item[3] > best[3]:
                    best = item
            if best is not None and best[3] >= unit:
                cand, _, _, approvable = best
                minutes = approvable // unit
                placed = self._place(
                    session,
                    req,
                    cand,
                    minutes,
                    minutes * unit,
                    approvable,
                    ledger_key,
                    mode,
                    record_id,
                    what,
                    now,
                )
                return placed, [a for a in attempts if a.funding_source != cand.funding_source]
        summary = "; ".join(a.reason for a in attempts) or "no funding source"
        raise UsageDeclined(
            f"Declined: {summary}.",
            attempts,
            requested_minutes=requested_minutes if mode == "hold" else None,
        )

    def _place(
        self,
        session: Session,
        req: UsageRequest,
        cand: _Candidate,
        minutes: int,
        amount: int,
        approvable: int,
        ledger_key: str,
        mode: str,
        record_id: str | None,
        what: str,
        now: datetime,
    ) -> _Placed:
        reason = self._payer_reason(cand, approvable - amount)
        statement_reason = self._statement_reason(cand, approvable - amount)
        metadata = {
            "usage_record_id": record_id,
            "context": req.context,
            "capture_source": req.capture_source or None,
            "user_id": req.user_id,
            "guild_id": req.guild_id,
            "meeting_id": req.meeting_id,
            "payer_account_id": cand.account.id,
            "authorization_id": cand.authorization.id if cand.authorization else None,
            "funding_source": cand.funding_source,
            "reason": reason,
            "statement_reason": statement_reason,
            "rate_card_version": load_catalog().rate_card.version,
        }
        if mode == "debit":
            debit = self.ledger.debit(
                session,
                account_id=cand.account.id,
                amount=amount,
                idempotency_key=f"{ledger_key}:debit",
                reason=f"{what} · {statement_reason}",
                metadata=metadata,
                cap=cand.cap,
            )
            return _Placed(cand, 0, amount, reason, debit_id=debit.id)
        grace = load_catalog().rate_card.hold_grace_minutes
        expires = now + timedelta(minutes=cand.max_minutes + grace)
        hold = self.ledger.place_hold(
            session,
            account_id=cand.account.id,
            amount=amount,
            expires_at=expires,
            idempotency_key=f"{ledger_key}:hold",
            reason=f"{what}, {minutes} min · {statement_reason}",
            metadata=metadata,
            cap=cand.cap,
        )
        return _Placed(cand, minutes, amount, reason, hold_id=hold.id, expires_at=hold.expires_at)

    def _chain(self, session: Session, req: UsageRequest, now: datetime) -> _Chain:
        if req.context == "server":
            assert req.guild_id is not None
            chain = _Chain([self._server_candidate(session, req.guild_id, now)])
            auth = self.orgs.authorization_for_server(session, req.guild_id)
            if auth is not None:
                cand = self._auth_candidate(session, auth, f"for {chain.candidates[0].account.display_name}")
                status = authorization_status(auth, now)
                if status == "active":
                    chain.candidates.append(cand)
                else:
                    chain.skipped.append(_invalid_attempt(cand, status, auth))
            return chain
        # personal work
        if req.funding_source:
            if req.funding_source == "personal":
                return _Chain([self._personal_candidate(session, req.user_id, now)])
            auth = self._held_authorization(session, req.user_id, req.funding_source)
            cand = self._auth_candidate(session, auth, "for you")
            status = authorization_status(auth, now)
            if status != "active":
                return _Chain([], [_invalid_attempt(cand, status, auth)])
            return _Chain([cand])
        original = self._original_payer(session, req, now)
        if original is not None:
            return _Chain([original])
        candidates = [self._personal_candidate(session, req.user_id, now)]
        auths = [
            a
            for a in self._member_authorizations(session, req.user_id)
            if authorization_status(a, now) == "active"
        ]
        rank = {sid: i for i, sid in enumerate(self._preferred_order(session, req.user_id))}
        auths.sort(key=lambda a: (rank.get(a.id, len(rank)), a.created_at, a.id))
        candidates += [self._auth_candidate(session, a, "for you") for a in auths]
        return _Chain(candidates)

    def _original_payer(self, session: Session, req: UsageRequest, now: datetime) -> _Candidate | None:
        """The owner re-processing a personal meeting: its original payer while still valid."""
        if not req.meeting_id:
            return None
        a = session.get(MeetingAttribution, req.meeting_id)
        if a is None or a.context != "personal" or a.owner_user_id != req.user_id:
            return None
        if a.authorization_id is None:
            personal = self._personal_candidate(session, req.user_id, now)
            return personal if personal.account.id == a.payer_account_id else None
        auth = session.get(SpendAuthorization, a.authorization_id)
        if (
            auth is None
            or authorization_status(auth, now) != "active"
            or member_role(session, auth.org_id, req.user_id) is None
        ):
            return None
        cand = self._auth_candidate(session, auth, "for you")
        return cand if req.capture_source in cand.sources else None

    def _personal_candidate(self, session: Session, user_id: str, now: datetime) -> _Candidate:
        account = self.accounts.get_or_create(session, AccountKind.PERSONAL, user_id)
        plan = current_plan(session, account, now)
        assert plan is not None
        return _Candidate(
            "personal",
            account,
            _personal_label(plan),
            plan.max_recording_minutes,
            plan.capture_sources,
            plan.features,
            plan,
        )

    def _server_candidate(self, session: Session, guild_id: str, now: datetime) -> _Candidate:
        account = self.accounts.get_or_create(session, AccountKind.SERVER, guild_id)
        plan = current_plan(session, account, now)
        assert plan is not None
        return _Candidate(
            "server",
            account,
            _server_label(account),
            plan.max_recording_minutes,
            plan.capture_sources,
            plan.features,
            plan,
        )

    def _auth_candidate(self, session: Session, auth: SpendAuthorization, for_whom: str) -> _Candidate:
        org = self.orgs.get_org(session, auth.org_id)
        account = self.accounts.get(session, org.billing_account_id)
        organization = load_catalog().organization
        default = PERSONAL_SOURCES if auth.subject_type == "member" else SERVER_SOURCES
        return _Candidate(
            auth.id,
            account,
            f"{org.name} authorization {for_whom}",
            int(organization.get("max_recording_minutes", 0)),
            tuple(auth.capture_sources or default),
            dict(organization.get("features", {})),
            None,
            auth,
            org,
        )

    def _payer_reason(self, cand: _Candidate, left_after: int) -> str:
        auth = cand.authorization
        if auth is None:
            return cand.label
        if auth.monthly_cap is None:
            return f"{cand.label}, no monthly cap"
        return f"{cand.label}, {credits_text(left_after)} of {credits_text(auth.monthly_cap)} credits left this month"

    def _events_this_month(
        self, session: Session, account_id: str, event_type: str | None, now: datetime
    ) -> int:
        start, _ = month_bounds(now)
        return int(
            session.execute(
                select(func.count())
                .select_from(UsageRecord)
                .where(
                    UsageRecord.payer_account_id == account_id,
                    UsageRecord.event_type == event_type,
                    UsageRecord.status == "charged",
                    UsageRecord.created_at >= start,
                )
            ).scalar()
            or 0
        )

    def _statement_reason(self, cand: _Candidate, left_after: int) -> str:
        """The payer's statement is read by the payer's admins: it names the member, where the
        person recording reads "for you"."""
        auth = cand.authorization
        if auth is None or auth.subject_type != "member" or cand.org is None:
            return self._payer_reason(cand, left_after)
        named = replace(cand, label=f"{cand.org.name} authorization for member {auth.subject_id}")
        return self._payer_reason(named, left_after)

    def _statement_reason_of(self, session: Session, rec: UsageRecord) -> str:
        if rec.hold_id is None:
            return rec.reason
        metadata = self.ledger.get_hold(session, rec.hold_id).metadata
        return str(metadata.get("statement_reason") or rec.reason)

    # ================================================================== validation

    def _check_request(self, request: UsageRequest) -> UsageRequest:
        req = request.model_copy()
        if req.context not in ("personal", "server"):
            raise ValidationFailed(
                f"context must be 'personal' or 'server', not '{req.context}'.", field="context"
            )
        if req.capture_source not in CAPTURE_SOURCES:
            raise UnknownCaptureSource(
                f"Unknown capture source '{req.capture_source}'; expected one of {', '.join(CAPTURE_SOURCES)}.",
                field="capture_source",
            )
        expected = SERVER_SOURCES if req.context == "server" else PERSONAL_SOURCES
        if req.capture_source not in expected:
            raise CaptureSourceMismatch(
                f"A {req.context} recording comes from {', '.join(expected)}, not {req.capture_source}.",
                field="capture_source",
            )
        req.user_id = check_snowflake(req.user_id, "user_id")
        if req.context == "server":
            if not req.guild_id:
                raise ValidationFailed("A server meeting needs its guild_id.", field="guild_id")
            if req.funding_source not in (None, "server"):
                raise FundingSourceNotAllowed(
                    "Server meetings are paid by the server's chain; a funding source cannot be picked.",
                    field="funding_source",
                )
            req.funding_source = None
        if req.guild_id:
            req.guild_id = check_snowflake(req.guild_id, "guild_id")
        if req.meeting_id is not None and not (1 <= len(req.meeting_id.strip()) <= 128):
            raise ValidationFailed("meeting_id must be 1 to 128 characters.", field="meeting_id")
        if req.capture_source == "upload":
            if req.requested_minutes is not None:
                raise ValidationFailed(
                    "Uploads are sized from declared_duration_seconds or file_size_bytes, not requested_minutes.",
                    field="requested_minutes",
                )
            if req.declared_duration_seconds is None and req.file_size_bytes is None:
                raise ValidationFailed(
                    "An upload needs declared_duration_seconds or file_size_bytes.",
                    field="declared_duration_seconds",
                )
            if req.declared_duration_seconds is not None:
                _check_positive(
                    req.declared_duration_seconds, "declared_duration_seconds", MAX_MINUTES_PER_REQUEST * 60
                )
            if req.file_size_bytes is not None:
                _check_positive(req.file_size_bytes, "file_size_bytes", 10**12)
        else:
            if req.declared_duration_seconds is not None or req.file_size_bytes is not None:
                raise ValidationFailed(
                    "Only uploads are sized from a duration or a file size.", field="capture_source"
                )
            if req.requested_minutes is None:
                raise ValidationFailed("requested_minutes is required.", field="requested_minutes")
            _check_minutes(req.requested_minutes, "requested_minutes")
        return req

    def _check_event(self, request: EventRequest) -> EventRequest:
        req = request.model_copy()
        load_catalog().rate_card.metered_cost(req.event_type)
        if req.context not in ("personal", "server"):
            raise ValidationFailed(
                f"context must be 'personal' or 'server', not '{req.context}'.", field="context"
            )
        req.user_id = check_snowflake(req.user_id, "user_id")
        if not req.event_id.strip():
            raise ValidationFailed("event_id is required.", field="event_id")
        if req.context == "server":
            if not req.guild_id:
                raise ValidationFailed("Work in a server needs its guild_id.", field="guild_id")
            if req.funding_source not in (None, "server"):
                raise FundingSourceNotAllowed(
                    "Work in a server is paid by the server's chain; a funding source cannot be picked.",
                    field="funding_source",
                )
            req.funding_source = None
        if req.guild_id:
            req.guild_id = check_snowflake(req.guild_id, "guild_id")
        return req

    def _requested_minutes(self, req: UsageRequest) -> int:
        if req.capture_source != "upload":
            return req.requested_minutes or 0
        if req.declared_duration_seconds is not None:
            return -(-req.declared_duration_seconds // 60)
        kbps = load_catalog().rate_card.upload_conservative_kbps
        # Integer ceilings all the way: bits over bits per minute.
        return max(1, -(-(req.file_size_bytes or 0) * 8 // (kbps * 1000 * 60)))

    # ================================================================== internals

    @staticmethod
    def _unit() -> int:
        return load_catalog().rate_card.meeting_audio_per_started_minute

    def _decision(self, req: UsageRequest, placed: _Placed, attempts: list[PayerAttempt]) -> Decision:
        cand = placed.candidate
        requested = self._requested_minutes(req)
        return Decision(
            approved=True,
            reason=placed.reason,
            payer_account_id=cand.account.id,
            payer_kind=cand.account.kind,
            authorization_id=cand.authorization.id if cand.authorization else None,
            funding_source=cand.funding_source,
            context=req.context,
            capture_source=req.capture_source,
            requested_minutes=requested,
            approved_minutes=placed.minutes,
            amount=placed.amount,
            partial=placed.minutes < requested,
            max_recording_minutes=cand.max_minutes,
            attempts=attempts,
        )

    def _notice(self, req: UsageRequest, exc: UsageDeclined, dedupe: str, kind: str) -> dict[str, Any]:
        first = next((a.account_id for a in exc.attempts if a.account_id), None)
        return {
            "account_id": first,
            "dedupe_key": f"hold.declined:{dedupe}",
            "data": {
                "kind": kind,
                "context": req.context,
                "capture_source": req.capture_source or None,
                "user_id": req.user_id,
                "guild_id": req.guild_id,
                "meeting_id": req.meeting_id,
                "requested_minutes": self._requested_minutes(req) if req.capture_source else None,
                "reason": exc.message,
            },
            "caps_reached": [
                a.authorization_id for a in exc.attempts if a.code == "cap_reached" and a.authorization_id
            ],
        }

    def _emit_caps_reached(self, session: Session, attempts: list[PayerAttempt]) -> None:
        for a in attempts:
            if a.code == "cap_reached" and a.authorization_id:
                self._emit_cap_reached(session, a.authorization_id)

    def _emit_cap_reached(self, session: Session, auth_id: str) -> None:
        auth = self.orgs.get_authorization(session, auth_id)
        org = self.orgs.get_org(session, auth.org_id)
        period = month_key(self.clock.now())
        usage = self.ledger.cap_usage(session, auth.id, period)
        self.notifications.emit(
            session,
            "authorization.cap_reached",
            org.billing_account_id,
            {
                "authorization_id": auth.id,
                "org_id": org.id,
                "subject_type": auth.subject_type,
                "subject_id": auth.subject_id,
                "period": period,
                "monthly_cap": auth.monthly_cap,
                "used": usage.used,
                "held": usage.held,
            },
            dedupe_key=f"authorization.cap_reached:{auth.id}:{period}",
        )

    def _lock_requester(
        self, session: Session, context: str, user_id: str, guild_id: str | None
    ) -> BillingAccount:
        """Lock the requester's own account row: concurrent duplicates of one request queue
        here and the second finds the first's idempotency record."""
        if context == "server":
            assert guild_id is not None
            account = self.accounts.get_or_create(session, AccountKind.SERVER, guild_id)
        else:
            account = self.accounts.get_or_create(session, AccountKind.PERSONAL, user_id)
        self.accounts.lock_row(session, account.id)
        return account

    def _lock_record(self, session: Session, recording_id: str) -> UsageRecord:
        found = session.execute(
            select(UsageRecord.id).where(UsageRecord.id == recording_id).with_for_update()
        ).scalar()
        if found is None:
            raise NotFound(f"No recording '{recording_id}'.", recording_id=recording_id)
        return self._record(session, recording_id)

    @staticmethod
    def _record(session: Session, record_id: str) -> UsageRecord:
        rec = session.get(UsageRecord, record_id)
        if rec is None:
            raise NotFound(f"No recording '{record_id}'.", recording_id=record_id)
        session.refresh(rec)
        return rec

    @staticmethod
    def _open_recording(session: Session, meeting_id: str) -> str | None:
        return session.execute(
            select(UsageRecord.id).where(
                UsageRecord.meeting_id == meeting_id,
                UsageRecord.status == "open",
                UsageRecord.kind != "event",
            )
        ).scalar()

    def _attribution(self, session: Session, meeting_id: str) -> MeetingAttribution:
        a = session.get(MeetingAttribution, meeting_id)
        if a is None:
            raise NotFound(f"No recorded meeting '{meeting_id}'.", meeting_id=meeting_id)
        return a

    def _member_authorizations(self, session: Session, user_id: str) -> list[SpendAuthorization]:
        rows = session.execute(
            select(SpendAuthorization).where(
                SpendAuthorization.subject_type == "member",
                SpendAuthorization.subject_id == user_id,
                SpendAuthorization.revoked_at.is_(None),
            )
        ).scalars()
        return [a for a in rows if member_role(session, a.org_id, user_id) is not None]

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
            balances.available(session, self.ledger, server)
            if server
            else plan.included_millicredits
            if plan.is_free
            else 0
        )
        views = [
            FundingSourceView(
                id="server",
                kind="server",
                label=_server_label(server) if server else f"Server {guild} credits",
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
                    max_recording_minutes=int(load_catalog().organization.get("max_recording_minutes", 0)),
                    monthly_cap=view.monthly_cap,
                    used=view.used,
                    held=view.held,
                    left=view.left,
                    over_cap=view.over_cap,
                    position=1,
                )
            )
        return views

    def _try_extend_for_upload(self, session: Session, rec: UsageRecord, more: int, now: datetime) -> int:
        """A probed upload longer than its hold: try to hold the difference on the same payer."""
        assert rec.hold_id is not None
        auth = self.orgs.get_authorization(session, rec.authorization_id) if rec.authorization_id else None
        try:
            hold = self.ledger.extend_hold(
                session,
                hold_id=rec.hold_id,
                idempotency_key=f"usage:{rec.id}:settle-extend",
                amount=more,
                cap_limit=auth.monthly_cap if auth else None,
            )
        except (InsufficientCredits, CapReached, HoldExpired):
            return rec.held
        return hold.amount_held

    def _settle_record(
        self,
        session: Session,
        rec: UsageRecord,
        status: str,
        charged: int,
        shortfall: int,
        seconds: dict[str, int] | None,
        wall: int | None,
        now: datetime,
        scope: str,
        key: str,
        params: dict[str, Any],
    ) -> RecordingView:
        held = self.ledger.get_hold(session, rec.hold_id).amount_held if rec.hold_id else rec.held
        session.execute(
            update(UsageRecord)
            .where(UsageRecord.id == rec.id)
            .values(
                status=status,
                charged=charged,
                shortfall=shortfall,
                held=held,
                seconds_by_source=seconds,
                wall_clock_seconds=wall,
                finished_at=now,
            )
        )
        view = self._view(session, self._record(session, rec.id))
        idempotency.remember(session, scope, key, params, view.model_dump(mode="json"), now)
        return view

    def _view(
        self, session: Session, rec: UsageRecord, attempts: list[PayerAttempt] | None = None
    ) -> RecordingView:
        expires = None
        if rec.hold_id and rec.status == "open":
            expires = self.ledger.get_hold(session, rec.hold_id).expires_at
        return RecordingView(
            id=rec.id,
            kind=rec.kind,
            status=rec.status,
            payer_account_id=rec.payer_account_id,
            payer_kind=rec.payer_kind,
            authorization_id=rec.authorization_id,
            reason=rec.reason,
            context=rec.context,
            capture_source=rec.capture_source,
            event_type=rec.event_type,
            event_id=rec.event_id,
            user_id=rec.user_id,
            guild_id=rec.guild_id,
            meeting_id=rec.meeting_id,
            requested_minutes=rec.requested_minutes,
            approved_minutes=rec.approved_minutes,
            max_minutes=rec.max_minutes,
            partial=rec.kind != "event" and rec.approved_minutes < rec.requested_minutes,
            held=rec.held,
            charged=rec.charged,
            shortfall=rec.shortfall,
            hold_id=rec.hold_id,
            debit_id=rec.debit_id,
            hold_expires_at=expires,
            seconds_by_source=rec.seconds_by_source,
            wall_clock_seconds=rec.wall_clock_seconds,
            rate_card_version=rec.rate_card_version,
            created_at=rec.created_at,
            finished_at=rec.finished_at,
            attempts=attempts or [],
        )


# ---------------------------------------------------------------------- module helpers


def _personal_label(plan: Plan | None) -> str:
    if plan is None:
        return "personal credits"
    return f"personal {plan.name.removeprefix('Personal ').strip()} allowance"


def _server_label(account: BillingAccount) -> str:
    name = account.display_name
    return f"{name} credits" if name.startswith("Server ") else f"{name} server credits"


def _invalid_attempt(cand: _Candidate, status: str, auth: SpendAuthorization) -> PayerAttempt:
    why = {
        "revoked": ("authorization_revoked", "revoked"),
        "expired": (
            "authorization_expired",
            f"expired on {auth.valid_until:%Y-%m-%d %H:%M} UTC" if auth.valid_until else "expired",
        ),
        "scheduled": ("authorization_not_yet_valid", f"valid from {auth.valid_from:%Y-%m-%d %H:%M} UTC"),
    }[status]
    return PayerAttempt(
        funding_source=cand.funding_source,
        account_id=cand.account.id,
        authorization_id=auth.id,
        code=why[0],
        reason=f"{cand.label}: {why[1]}",
    )


def _check_positive(value: Any, field: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationFailed(f"{field} must be a positive whole number.", field=field)
    if value > maximum:
        raise RecordingTooLong(f"{field} is above the longest possible recording.", field=field)
    return value


def _check_minutes(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationFailed(f"{field} must be a positive whole number of minutes.", field=field)
    if value > MAX_MINUTES_PER_REQUEST:
        raise RecordingTooLong(
            f"{field} is above any plan's longest recording ({MAX_MINUTES_PER_REQUEST} min at most).",
            field=field,
        )
    return value


def _check_seconds(seconds_by_source: Any) -> dict[str, int]:
    if not isinstance(seconds_by_source, dict) or not seconds_by_source:
        raise ValidationFailed("seconds_by_source must name at least one source.", field="seconds_by_source")
    if len(seconds_by_source) > MAX_SOURCES:
        raise ValidationFailed(f"A recording has at most {MAX_SOURCES} sources.", field="seconds_by_source")
    cleaned: dict[str, int] = {}
    for name, value in seconds_by_source.items():
        if not isinstance(name, str) or not 1 <= len(name) <= 32:
            raise ValidationFailed("Source names are 1 to 32 characters.", field="seconds_by_source")
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value <= MAX_MINUTES_PER_REQUEST * 60
        ):
            raise ValidationFailed(
                f"Seconds for source '{name}' must be a whole number from 0 to {MAX_MINUTES_PER_REQUEST * 60}.",
                field="seconds_by_source",
            )
        cleaned[name] = value
    return dict(sorted(cleaned.items()))
