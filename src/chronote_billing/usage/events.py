"""Metered events (chat-to-speech messages, Ask questions): charged at once by the rate card,
idempotent by event id per requester, paid by the chain of the context where the work happens
(D8)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from chronote_billing.core import idempotency
from chronote_billing.core.errors import CapReached, InsufficientCredits
from chronote_billing.core.ids import new_id
from chronote_billing.ledger.schemas import DebitView
from chronote_billing.ledger.service import CapSpec

from . import facts, records
from .attribution import EVENT_LABELS, Approval, Ask, Decline, charge_reason, decide, payer_chain
from .errors import payer_attempts
from .recordings import DECIDE_ATTEMPTS, RecordingService
from .requests import check_event, event_ask
from .schemas import EventRequest, RecordingView


class EventService:
    def __init__(self, recordings: RecordingService) -> None:
        # Events share the recordings' collaborators and their decline and cap notices.
        self.recordings = recordings
        self.ledger = recordings.ledger

    def charge(self, session: Session, request: EventRequest) -> RecordingView:
        r = self.recordings
        now = r.clock.now()
        rate = r.catalog.rate_card
        req = check_event(request, rate)
        params = req.model_dump()
        requester = r.lock_requester(session, req.context, req.user_id, req.guild_id)
        scope = idempotency.scope_of("usage.event", requester.id)
        prior = idempotency.lookup(session, scope, req.event_id, params)
        if prior is not None:
            return RecordingView.model_validate(prior)
        ask = event_ask(req, rate)
        record_id = new_id("use")
        approval, debit = self._debit(session, req, ask, record_id, f"{scope}:{req.event_id}")
        records.insert_record(
            session,
            record_id=record_id,
            kind="event",
            status="charged",
            approval=approval,
            context=req.context,
            capture_source=None,
            event_type=req.event_type,
            event_id=req.event_id,
            user_id=req.user_id,
            guild_id=req.guild_id,
            meeting_id=req.meeting_id,
            requested_minutes=0,
            requested=approval.amount,
            hold_id=None,
            debit_id=debit.id,
            rate_card_version=rate.version,
            now=now,
        )
        attempts = payer_attempts(approval.attempts)
        r.emit_caps_reached(session, attempts)
        r.notifications.after_balance_change(session, debit.account_id)
        view = records.view_of(session, self.ledger, records.record(session, record_id), attempts)
        idempotency.remember(
            session, scope, req.event_id, params, view.model_dump(mode="json"), now, record_id
        )
        return view

    def _debit(
        self, session: Session, req: EventRequest, ask: Ask, record_id: str, dedupe: str
    ) -> tuple[Approval, DebitView]:
        r = self.recordings
        now = r.clock.now()
        where = facts.Where(req.context, req.user_id, req.guild_id, req.meeting_id, event_type=req.event_type)
        what = EVENT_LABELS[req.event_type]
        refusal: InsufficientCredits | CapReached | None = None
        for _ in range(DECIDE_ATTEMPTS):
            gathered = facts.gather(session, self.ledger, where, now)
            verdict = decide(ask, payer_chain(ask, gathered.snapshot), r.unit)
            if isinstance(verdict, Decline):
                raise r.declined(verdict, req, dedupe, req.event_type, None)
            account_id = r.payer_account(session, verdict, now)
            auth = verdict.payer.authorization
            metadata = r.charge_metadata(req, verdict, record_id, what)
            try:
                debit = self.ledger.debit(
                    session,
                    account_id=account_id,
                    amount=verdict.amount,
                    idempotency_key=idempotency.compose_key("usage", record_id, "debit"),
                    reason=charge_reason(what, None, verdict.statement_reason),
                    metadata=metadata,
                    cap=CapSpec(auth.id, auth.monthly_cap) if auth else None,
                )
            except (InsufficientCredits, CapReached) as exc:
                refusal = exc
                continue
            return verdict, debit
        assert refusal is not None
        raise refusal
