"""Metered events (chat-to-speech messages, Ask questions): charged at once by the rate card,
idempotent by event id per requester, paid by the chain of the context where the work happens
(D8)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from chronote_billing.catalog.service import Catalog
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


def event_where(req: EventRequest, catalog: Catalog, scope_prefix: str | None = None) -> facts.Where:
    """Whose facts an event needs; its monthly count only where some plan limits it."""
    cap = facts.quota_cap(req.event_type, catalog)
    return facts.Where(
        req.context,
        req.user_id,
        req.guild_id,
        req.meeting_id,
        req.event_type if cap else None,
        scope_prefix,
        req.event_id if scope_prefix else None,
        cap,
    )


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
        once = idempotency.Once(RecordingView, scope, req.event_id, params, now)
        if (prior := once.prior(session)) is not None:
            return prior
        ask = event_ask(req, rate)
        record_id = new_id("use")
        approval, debit = self._debit(session, req, ask, record_id, f"{scope}:{req.event_id}")
        records.insert_record(session, self.event_values(req, approval, record_id, debit.id, now))
        attempts = payer_attempts(approval.attempts)
        r.emit_caps_reached(session, attempts)
        r.notifications.after_balance_change(session, debit.account_id)
        view = records.view_of(session, self.ledger, records.record(session, record_id), attempts)
        return once.remember(session, view, record_id)

    def event_values(
        self, req: EventRequest, approval: Approval, record_id: str, debit_id: str, now: datetime
    ) -> dict[str, Any]:
        return records.record_values(
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
            debit_id=debit_id,
            rate_card_version=self.recordings.catalog.rate_card.version,
            now=now,
        )

    def debit_request(
        self, req: EventRequest, verdict: Approval, record_id: str, account_id: str
    ) -> dict[str, Any]:
        """The ledger debit an event makes on the decided payer."""
        auth = verdict.payer.authorization
        what = EVENT_LABELS[req.event_type]
        return dict(
            account_id=account_id,
            amount=verdict.amount,
            idempotency_key=idempotency.compose_key("usage", record_id, "debit"),
            reason=charge_reason(what, None, verdict.statement_reason),
            metadata=self.recordings.charge_metadata(req, verdict, record_id, what),
            cap=CapSpec(auth.id, auth.monthly_cap) if auth else None,
        )

    def _debit(
        self, session: Session, req: EventRequest, ask: Ask, record_id: str, dedupe: str
    ) -> tuple[Approval, DebitView]:
        r = self.recordings
        now = r.clock.now()
        where = event_where(req, r.catalog)
        refusal: InsufficientCredits | CapReached | None = None
        for _ in range(DECIDE_ATTEMPTS):
            gathered = facts.gather(session, self.ledger, where, now, r.catalog)
            verdict = decide(ask, payer_chain(ask, gathered.snapshot), r.unit)
            if isinstance(verdict, Decline):
                raise r.declined(verdict, req, dedupe, req.event_type, None)
            account_id = r.payer_account(session, verdict, now)
            try:
                debit = self.ledger.debit(session, **self.debit_request(req, verdict, record_id, account_id))
            except (InsufficientCredits, CapReached) as exc:
                refusal = exc
                continue
            return verdict, debit
        assert refusal is not None
        raise refusal
