"""Recordings and uploads (D6, D8): start (decide the payer, place the hold), extend, finish
(charge the wall-clock minutes, release the rest), cancel or fail.

Decide, then apply (decision 0030): the facts are gathered, the pure decision picks the payer
and the amount, and the ledger places exactly that under the payer's wallet lock, checking the
balance and the cap again. On PostgreSQL the common case runs as one statement per write
(decision 0031, :mod:`.fast_path`); every error and every rare rule is answered here. What a
decline leaves behind is in :mod:`.declines`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal
from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.accounts.service import AccountService
from chronote_billing.catalog.service import Catalog
from chronote_billing.core import idempotency
from chronote_billing.core.clock import Clock
from chronote_billing.core.errors import CapReached, HoldExpired, InsufficientCredits
from chronote_billing.core.ids import new_id
from chronote_billing.ledger.schemas import HoldView
from chronote_billing.ledger.service import CapSpec, LedgerService
from chronote_billing.notifications.service import NotificationService
from chronote_billing.orgs.service import OrgService
from chronote_billing.plans.service import ensure_free_allowance

from . import facts, records
from .attribution import (
    SOURCE_LABELS,
    Approval,
    Ask,
    Decline,
    charge_reason,
    decide,
    payer_chain,
)
from .declines import DeclineNotices, write_or_record_decline
from .errors import (
    RecordingAlreadySettled,
    RecordingExpired,
    RecordingInProgress,
    RecordingNotOpen,
    RecordingTooLong,
    UsageDeclined,
    payer_attempts,
)
from .models import UsageRecord
from .requests import check_minutes, check_request, check_seconds, recording_ask, requested_minutes
from .schemas import Decision, PayerAttempt, RecordingView, UsageRequest

# A stale snapshot (another write took the credits between the facts and the hold) is gathered
# again at most this many times before the request is declined with the ledger's answer.
DECIDE_ATTEMPTS = 3


class RecordingService(DeclineNotices):
    def __init__(
        self,
        clock: Clock,
        catalog: Catalog,
        ledger: LedgerService,
        accounts: AccountService,
        orgs: OrgService,
        notifications: NotificationService,
    ) -> None:
        self.clock = clock
        self.catalog = catalog
        self.ledger = ledger
        self.accounts = accounts
        self.orgs = orgs
        self.notifications = notifications

    @property
    def unit(self) -> int:
        return self.catalog.rate_card.meeting_audio_per_started_minute

    # ------------------------------------------------------------------ quote and start

    def quote(self, session: Session, request: UsageRequest) -> Decision:
        """The decision a start would make now, on the same facts, placing nothing."""
        req = check_request(request)
        now = self.clock.now()
        ask = recording_ask(req, self.catalog.rate_card)
        gathered = facts.gather(session, self.ledger, _where(req), now, self.catalog)
        verdict = decide(ask, payer_chain(ask, gathered.snapshot), self.unit)
        if isinstance(verdict, Decline):
            return Decision(
                approved=False,
                code=UsageDeclined(verdict.message, payer_attempts(verdict.attempts)).code,
                reason=verdict.message,
                context=req.context,
                capture_source=req.capture_source,
                requested_minutes=ask.minutes,
                approved_minutes=0,
                amount=0,
                attempts=payer_attempts(verdict.attempts),
            )
        payer = verdict.payer
        return Decision(
            approved=True,
            reason=verdict.reason,
            payer_account_id=payer.account.id,
            payer_kind=payer.account.kind,
            authorization_id=payer.authorization.id if payer.authorization else None,
            funding_source=payer.funding_source,
            context=req.context,
            capture_source=req.capture_source,
            requested_minutes=ask.minutes,
            approved_minutes=verdict.minutes,
            amount=verdict.amount,
            partial=verdict.partial,
            max_recording_minutes=payer.max_minutes,
            attempts=payer_attempts(verdict.attempts),
        )

    def start(self, session: Session, request: UsageRequest, idempotency_key: str) -> RecordingView:
        """Decide the payer and place the hold; a retry with the same key returns the first result."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        req = check_request(request)
        params = req.model_dump()
        requester = self.lock_requester(session, req.context, req.user_id, req.guild_id)
        scope = idempotency.scope_of("usage.start", requester.id)
        once = idempotency.Once(RecordingView, scope, key, params, now)
        if (prior := once.prior(session)) is not None:
            return prior
        if req.meeting_id and records.open_recording(session, req.meeting_id) is not None:
            raise RecordingInProgress(
                f"Meeting {req.meeting_id} already has a recording in progress.", meeting_id=req.meeting_id
            )
        ask = recording_ask(req, self.catalog.rate_card)
        record_id = new_id("rec")
        approval, hold = self._place_hold(session, req, ask, record_id, f"{scope}:{key}", now)
        records.insert_record(session, self.start_values(req, ask, approval, record_id, hold.id, now))
        if req.meeting_id:
            records.attribute_meeting(session, self.attribution_values(req, approval, record_id, now))
        attempts = payer_attempts(approval.attempts)
        self.emit_caps_reached(session, attempts)
        view = records.view_of(session, self.ledger, records.record(session, record_id), attempts)
        return once.remember(session, view, record_id)

    def start_values(
        self, req: UsageRequest, ask: Ask, approval: Approval, record_id: str, hold_id: str, now: datetime
    ) -> dict[str, Any]:
        return records.record_values(
            record_id=record_id,
            kind="upload" if req.capture_source == "upload" else "recording",
            status="open",
            approval=approval,
            context=req.context,
            capture_source=req.capture_source,
            event_type=None,
            event_id=None,
            user_id=req.user_id,
            guild_id=req.guild_id,
            meeting_id=req.meeting_id,
            requested_minutes=ask.minutes,
            requested=ask.minutes * self.unit,
            hold_id=hold_id,
            debit_id=None,
            rate_card_version=self.catalog.rate_card.version,
            now=now,
        )

    @staticmethod
    def attribution_values(
        req: UsageRequest, approval: Approval, record_id: str, now: datetime
    ) -> dict[str, Any]:
        assert req.meeting_id is not None
        return records.attribution_values(
            meeting_id=req.meeting_id,
            owner_user_id=req.user_id,
            context=req.context,
            guild_id=req.guild_id,
            capture_source=req.capture_source,
            approval=approval,
            record_id=record_id,
            now=now,
        )

    def hold_request(
        self, req: UsageRequest, verdict: Approval, record_id: str, account_id: str, now: datetime
    ) -> dict[str, Any]:
        """The ledger hold a start places for the decided payer and amount."""
        payer = verdict.payer
        auth = payer.authorization
        what = SOURCE_LABELS.get(req.capture_source, "Usage")
        return dict(
            account_id=account_id,
            amount=verdict.amount,
            expires_at=now + timedelta(minutes=payer.max_minutes + self.catalog.rate_card.hold_grace_minutes),
            idempotency_key=idempotency.compose_key("usage", record_id, "hold"),
            reason=f"{what}, {verdict.minutes} min · {verdict.statement_reason}",
            metadata=self.charge_metadata(req, verdict, record_id, what),
            cap=CapSpec(auth.id, auth.monthly_cap) if auth else None,
        )

    def _place_hold(
        self, session: Session, req: UsageRequest, ask: Ask, record_id: str, dedupe: str, now: datetime
    ) -> tuple[Approval, HoldView]:
        where = _where(req)
        refusal: InsufficientCredits | CapReached | None = None
        for _ in range(DECIDE_ATTEMPTS):
            gathered = facts.gather(session, self.ledger, where, now, self.catalog)
            verdict = decide(ask, payer_chain(ask, gathered.snapshot), self.unit)
            if isinstance(verdict, Decline):
                raise self.declined(verdict, req, dedupe, "recording", ask.minutes)
            account_id = self.payer_account(session, verdict, now)
            try:
                hold = self.ledger.place_hold(
                    session, **self.hold_request(req, verdict, record_id, account_id, now)
                )
            except (InsufficientCredits, CapReached) as exc:
                refusal = exc  # the facts were stale: another write took the credits; gather again
                continue
            return verdict, hold
        assert refusal is not None
        raise refusal

    def payer_account(self, session: Session, verdict: Approval, now: datetime) -> str:
        """The payer's account, with its allowance issued if it was counted as due."""
        account_id = verdict.payer.account.id
        assert account_id is not None, "the requester's account exists before a payer is decided"
        if verdict.payer.account.wallet.allowance_due:
            account = session.get(BillingAccount, account_id)
            assert account is not None
            ensure_free_allowance(session, self.ledger, account, now, self.catalog)
        return account_id

    def charge_metadata(self, req: Any, verdict: Approval, record_id: str, what: str) -> dict[str, Any]:
        """What a hold or debit records of the work and its payer (a UsageRequest or an
        EventRequest)."""
        payer = verdict.payer
        return {
            "usage_record_id": record_id,
            "context": req.context,
            "capture_source": getattr(req, "capture_source", None) or None,
            "user_id": req.user_id,
            "guild_id": req.guild_id,
            "meeting_id": req.meeting_id,
            "payer_account_id": payer.account.id,
            "authorization_id": payer.authorization.id if payer.authorization else None,
            "funding_source": payer.funding_source,
            "reason": verdict.reason,
            "statement_reason": verdict.statement_reason,
            # What the charge's statement line will name, whatever happens before it.
            "charge_label": what,
            "payer_label": payer.statement_label,
            "rate_card_version": self.catalog.rate_card.version,
        }

    # ------------------------------------------------------------------ while it runs

    def extend(
        self,
        session: Session,
        principal: Principal,
        recording_id: str,
        additional_minutes: int,
        idempotency_key: str,
        allow_partial: bool = False,
    ) -> RecordingView:
        """Reserve more minutes on the same payer (never another one), up to its longest
        recording. A revoked authorization still lets an open recording finish."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        minutes = check_minutes(additional_minutes, "additional_minutes")
        params = {"recording_id": recording_id, "minutes": minutes, "allow_partial": allow_partial}
        rec = records.lock_record(session, recording_id)
        records.require_recording_access(principal, rec)
        scope = idempotency.scope_of("usage.extend", rec.id)
        once = idempotency.Once(RecordingView, scope, key, params, now)
        if (prior := once.prior(session)) is not None:
            return prior
        hold = self._open_hold(session, rec, now)
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
            ensure_free_allowance(session, self.ledger, payer, now, self.catalog)
        try:
            extended = self.ledger.extend_hold(
                session,
                hold_id=hold.id,
                idempotency_key=idempotency.compose_key("usage", rec.id, "extend", key),
                amount=minutes * self.unit,
                expires_at=now + timedelta(minutes=self.catalog.rate_card.hold_grace_minutes),
                allow_partial=allow_partial,
                cap_limit=auth.monthly_cap if auth else None,
            )
        except (InsufficientCredits, CapReached) as exc:
            raise self._extension_declined(
                rec, auth.id if auth else None, payer, exc, f"{scope}:{key}"
            ) from exc
        # Before the update: the session brings ``rec`` up to date with it.
        added = extended.amount_held - rec.held
        records.update_record(
            session,
            rec.id,
            held=extended.amount_held,
            approved_minutes=extended.amount_held // self.unit,
            requested_minutes=rec.requested_minutes + minutes,
            requested=rec.requested + minutes * self.unit,
        )
        view = records.view_of(
            session, self.ledger, records.record(session, rec.id), partial=added < minutes * self.unit
        )
        return once.remember(session, view)

    def _open_hold(self, session: Session, rec: UsageRecord, now: datetime) -> HoldView:
        if rec.status != "open" or rec.hold_id is None:
            raise RecordingNotOpen(
                f"Recording {rec.id} is {rec.status}.", recording_id=rec.id, status=rec.status
            )
        hold = self.ledger.get_hold(session, rec.hold_id)
        if hold.status != "open" or hold.expires_at <= now:
            raise RecordingExpired(
                f"Recording {rec.id} was not extended in time: its hold expired at "
                f"{hold.expires_at:%Y-%m-%d %H:%M:%S} UTC and its credits were released.",
                recording_id=rec.id,
                hold_expires_at=hold.expires_at,
            )
        return hold

    def _extension_declined(
        self,
        rec: UsageRecord,
        auth_id: str | None,
        payer: BillingAccount,
        exc: InsufficientCredits | CapReached,
        dedupe: str,
    ) -> UsageDeclined:
        attempt = PayerAttempt(
            funding_source=auth_id or ("server" if payer.kind == "server" else "personal"),
            account_id=payer.id,
            authorization_id=auth_id,
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
            "dedupe_key": f"hold.declined:{dedupe}",
            "data": {
                "kind": "extension",
                "recording_id": rec.id,
                "user_id": rec.user_id,
                "guild_id": rec.guild_id,
                "meeting_id": rec.meeting_id,
                "code": exc.code,
                "reason": attempt.reason,
            },
            "caps_reached": [auth_id] if auth_id and exc.code == "cap_reached" else [],
        }
        return declined

    # ------------------------------------------------------------------ settling

    def finish(
        self,
        session: Session,
        principal: Principal,
        recording_id: str,
        seconds_by_source: dict[str, int],
        idempotency_key: str,
    ) -> RecordingView:
        """Charge the wall-clock minutes (the longest source, rounded up once) and release the
        rest. Never more than held: a cost above the hold is recorded as a shortfall. Settling
        happens once (decision 0032): the same figures again return the settled record, other
        figures are a conflict."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        seconds = check_seconds(seconds_by_source)
        params = {"recording_id": recording_id, "seconds_by_source": seconds}
        rec = records.lock_record(session, recording_id)
        records.require_recording_access(principal, rec)
        once = idempotency.Once(RecordingView, idempotency.scope_of("usage.finish", rec.id), key, params, now)
        if (prior := once.prior(session)) is not None:
            return prior
        if rec.status in ("finished", "failed") and rec.seconds_by_source is not None:
            if rec.seconds_by_source == seconds:
                return records.view_of(session, self.ledger, rec)
            raise RecordingAlreadySettled(
                f"Recording {rec.id} was already settled with {rec.seconds_by_source} "
                f"(charged {rec.charged} millicredits); this finish sent {seconds}.",
                recording_id=rec.id,
                settled_seconds_by_source=rec.seconds_by_source,
                charged=rec.charged,
            )
        hold = self._open_hold(session, rec, now)
        rate = self.catalog.rate_card
        wall = max(seconds.values())
        cost = rate.meeting_cost(wall)
        label = str(
            hold.metadata.get("charge_label") or SOURCE_LABELS.get(rec.capture_source or "", "Recording")
        )
        minutes = -(-wall // 60)
        if rec.kind == "upload" and minutes > rec.max_minutes:
            self.ledger.release_hold(
                session,
                hold_id=hold.id,
                idempotency_key=idempotency.compose_key("usage", rec.id, "release"),
                reason=f"{label} refused: {minutes} min is longer than the {rec.max_minutes}-minute limit",
            )
            return self._settle(session, rec, "failed", 0, 0, seconds, wall, now, once)
        held = rec.held
        if cost > held and rec.kind == "upload":
            held = self._extend_for_upload(session, rec, cost - held)
        charge = min(cost, held)
        self.ledger.capture_hold(
            session,
            hold_id=hold.id,
            amount=charge,
            idempotency_key=idempotency.compose_key("usage", rec.id, "capture"),
            reason=charge_reason(label, minutes, str(hold.metadata.get("payer_label") or rec.reason)),
        )
        self.notifications.after_balance_change(session, rec.payer_account_id)
        return self._settle(session, rec, "finished", charge, cost - charge, seconds, wall, now, once)

    def cancel(
        self,
        session: Session,
        principal: Principal,
        recording_id: str,
        idempotency_key: str,
        failed: bool = False,
    ) -> RecordingView:
        """Cancel (the user stopped it before anything to charge) or fail (processing failed on
        our side): the hold is released, nothing is charged."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        status = "failed" if failed else "cancelled"
        params = {"recording_id": recording_id, "status": status}
        rec = records.lock_record(session, recording_id)
        records.require_recording_access(principal, rec)
        once = idempotency.Once(RecordingView, idempotency.scope_of("usage.cancel", rec.id), key, params, now)
        if (prior := once.prior(session)) is not None:
            return prior
        if rec.status in ("cancelled", "failed"):
            return records.view_of(session, self.ledger, rec)
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
                idempotency_key=idempotency.compose_key("usage", rec.id, "release"),
                reason=f"{'processing failed' if failed else 'cancelled'} · {rec.reason}",
            )
        return self._settle(session, rec, status, 0, 0, None, None, now, once)

    def get(self, session: Session, principal: Principal, recording_id: str) -> RecordingView:
        rec = records.record(session, recording_id)
        records.require_recording_access(principal, rec)
        return records.view_of(session, self.ledger, rec)

    def _extend_for_upload(self, session: Session, rec: UsageRecord, more: int) -> int:
        """A probed upload longer than its hold: try to hold the difference on the same payer."""
        assert rec.hold_id is not None
        auth = self.orgs.get_authorization(session, rec.authorization_id) if rec.authorization_id else None
        try:
            hold = self.ledger.extend_hold(
                session,
                hold_id=rec.hold_id,
                idempotency_key=idempotency.compose_key("usage", rec.id, "settle-extend"),
                amount=more,
                cap_limit=auth.monthly_cap if auth else None,
            )
        except (InsufficientCredits, CapReached, HoldExpired):
            return rec.held
        return hold.amount_held

    def _settle(
        self,
        session: Session,
        rec: UsageRecord,
        status: str,
        charged: int,
        shortfall: int,
        seconds: dict[str, int] | None,
        wall: int | None,
        now: datetime,
        once: idempotency.Once[RecordingView],
    ) -> RecordingView:
        held = self.ledger.get_hold(session, rec.hold_id).amount_held if rec.hold_id else rec.held
        records.update_record(
            session,
            rec.id,
            status=status,
            charged=charged,
            shortfall=shortfall,
            held=held,
            seconds_by_source=seconds,
            wall_clock_seconds=wall,
            finished_at=now,
        )
        return once.remember(session, records.view_of(session, self.ledger, records.record(session, rec.id)))

    # ------------------------------------------------------------------ shared with events

    def lock_requester(
        self, session: Session, context: str, user_id: str | None, guild_id: str | None
    ) -> BillingAccount:
        """Lock the requester's own account row: concurrent duplicates of one request queue
        here and the second finds the first's idempotency record."""
        if context == "server":
            assert guild_id is not None
            account = self.accounts.get_or_create(session, AccountKind.SERVER, guild_id)
        else:
            assert user_id is not None
            account = self.accounts.get_or_create(session, AccountKind.PERSONAL, user_id)
        self.accounts.lock_row(session, account.id)
        return account


def _where(req: UsageRequest) -> facts.Where:
    return facts.Where(req.context, req.user_id, req.guild_id, req.meeting_id)


__all__ = ["RecordingService", "requested_minutes", "write_or_record_decline"]
