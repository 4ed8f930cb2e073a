"""Stripe's webhooks: verified and stored by event id, then applied once by their handlers
(decisions 0009, 0056).

`WebhookInbox.handle` is the route's whole work: `receive` verifies the signature (5 minutes'
tolerance) and stores the event in its own transaction, with the outcome `received`; `apply`
reads what the handler needs from Stripe (no transaction open), then, in one transaction, locks
the stored event, runs the handler of its type, records the outcome and queues the
notifications. An event already applied is a `duplicate` and changes nothing; an event stored but
not applied (the process stopped, or Stripe could not be reached, and no 2xx was answered) is
applied by Stripe's next delivery of it.

Ordering. Stripe does not deliver in order, so every effect is written to be independent of it
(see each handler): subscriptions keep the ordering key of the newest event applied, invoices
only move to paid, charges' refunds and disputes only move forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chronote_billing.core.db import Database
from chronote_billing.integrations.stripe.client import StripeClient, WebhookSignatureInvalid, verify_event
from chronote_billing.integrations.stripe.objects import (
    CheckoutSession,
    Event,
    Invoice,
    StripeModel,
    Subscription,
)
from chronote_billing.notifications.service import NotificationService

from ..models import StripeEvent, StripeSubscription
from ..timestamps import to_ts
from .checkout import on_checkout
from .context import Applying, EventRef, HandlerServices, Hints, Outcome, WebhookResult
from .invoices import on_invoice_paid
from .prefetch import read_hints
from .registry import CREDIT_EVENTS, HANDLERS, PAYMENT_FAILED
from .subscriptions import on_subscription

log = structlog.get_logger(__name__)

RECEIVED = "received"  # stored, not applied yet
NO_EFFECT = ("stale", "unknown_account", "unhandled")
_CUSTOMER_OWN_EVENTS = ("customer.created", "customer.updated", "customer.deleted")
_ATTEMPTS = 3


def stored_payload(event: dict[str, Any]) -> dict[str, Any]:
    """What is kept of an event. A customer's earlier values (`previous_attributes`) are never
    used, and after an erasure they would bring the erased name back (decision 0047)."""
    if event.get("type") not in _CUSTOMER_OWN_EVENTS or "previous_attributes" not in (
        event.get("data") or {}
    ):
        return event
    data = {k: v for k, v in event["data"].items() if k != "previous_attributes"}
    return {**event, "data": data}


class WebhookInbox:
    def __init__(
        self,
        db: Database,
        services: HandlerServices,
        notifications: NotificationService,
        webhook_secret: str,
        client_factory: Callable[[], StripeClient] | None = None,
    ) -> None:
        self.db = db
        self.services = services
        self.notifications = notifications
        self.webhook_secret = webhook_secret
        # Reads what an event's handler needs from Stripe; None: never ask Stripe.
        self.client_factory = client_factory

    def handle(self, payload: bytes, sig_header: str | None) -> WebhookResult:
        """Verify and store the event, then apply it (a redelivery returns `duplicate`)."""
        return self.apply(self.receive(payload, sig_header))

    # ------------------------------------------------------------------ verify and store

    def receive(self, payload: bytes, sig_header: str | None) -> Event:
        """Verify Stripe's signature and store the event (once, by its id); nothing else."""
        raw = verify_event(payload, sig_header, self.webhook_secret)
        try:
            event = Event.model_validate(raw)
        except ValidationError as exc:
            raise WebhookSignatureInvalid(
                f"Webhook body is not a Stripe event: {exc.errors()[0]['msg']}"
            ) from exc
        self._retrying(lambda: self.db.write(lambda s: self._store(s, event, raw)))
        return event

    def _store(self, session: Session, event: Event, raw: dict[str, Any]) -> None:
        if session.get(StripeEvent, event.id) is not None:
            return
        session.add(
            StripeEvent(
                id=event.id,
                type=event.type,
                created=event.created,
                livemode=event.livemode,
                object_id=event.object.get("id"),
                account_id=None,
                outcome=RECEIVED,
                note="",
                payload=stored_payload(raw),
                received_at=self.services.clock.now(),
            )
        )
        session.flush()  # the unique event id is claimed here: a concurrent twin retries and finds it

    # ------------------------------------------------------------------ apply

    def apply(self, event: Event) -> WebhookResult:
        """Apply a stored event once, through the handler of its type."""
        done = self.db.read(lambda s: self._applied(s, event.id))
        if done is not None:
            return done
        hints = read_hints(self.db, self.client_factory, event)
        return self._retrying(lambda: self.db.write(lambda s: self._apply(s, event, hints)))

    def _applied(self, session: Session, event_id: str, lock: bool = False) -> WebhookResult | None:
        query = select(StripeEvent).where(StripeEvent.id == event_id)
        row = session.execute(query.with_for_update() if lock else query).scalar_one()
        if row.outcome == RECEIVED:
            return None
        return WebhookResult(row.id, row.type, "duplicate", row.account_id, row.outcome)

    def _apply(self, session: Session, event: Event, hints: Hints) -> WebhookResult:
        # Under the event's row lock: of two deliveries applying at once, the second finds it done.
        done = self._applied(session, event.id, lock=True)
        if done is not None:
            return done
        row = session.get(StripeEvent, event.id)
        assert row is not None
        result = Outcome()
        obj = self._run_handler(session, event, hints, result)
        row.outcome = result.outcome
        row.account_id = result.account_id
        self._notify(session, event, obj, result)
        row.note = "; ".join(result.notes)[:2000]
        log_fn = log.warning if result.outcome == "unknown_account" else log.info
        log_fn("stripe_event", event_id=event.id, type=event.type, outcome=result.outcome, note=row.note)
        return WebhookResult(event.id, event.type, result.outcome, result.account_id, row.note)

    def _run_handler(
        self, session: Session, event: Event, hints: Hints, result: Outcome
    ) -> StripeModel | None:
        handler = HANDLERS.get(event.type)
        if handler is None:
            result.outcome = "unhandled"
            result.note(f"event type '{event.type}' is stored and acknowledged; it has no effect")
            return None
        try:
            obj = handler.model.model_validate(event.object)
        except ValidationError as exc:
            result.ignored(f"its {handler.model.__name__} could not be read: {exc.errors()[0]['msg']}")
            return None
        ref = EventRef(event.id, event.type, event.created)
        handler.apply(Applying(self.services, session, ref, hints, result), obj)
        return obj

    def _notify(self, session: Session, event: Event, obj: StripeModel | None, result: Outcome) -> None:
        """Tell Chronote about failed payments, and re-arm low-balance alerts after credit arrives,
        in the same transaction as the effect (the outbox commits with it or not at all)."""
        if result.account_id is None or result.outcome in NO_EFFECT:
            return
        if event.type == PAYMENT_FAILED and isinstance(obj, Invoice):
            self.notifications.emit(
                session,
                "payment.failed",
                result.account_id,
                {
                    "invoice": obj.id,
                    "subscription": obj.subscription,
                    "amount_due": obj.amount_due,
                    "currency": obj.currency,
                    "attempt_count": obj.attempt_count,
                },
                dedupe_key=f"payment.failed:{event.id}",
            )
        elif event.type in CREDIT_EVENTS:
            self.notifications.after_balance_change(session, result.account_id)

    @staticmethod
    def _retrying(work: Callable[[], Any]) -> Any:
        for attempt in range(_ATTEMPTS):
            try:
                return work()
            except IntegrityError:
                # A concurrent delivery (of this event, or of one creating the same rows) won the
                # race: run again and find its result.
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ objects read from Stripe

    def apply_fetched(
        self,
        *,
        checkout_session: CheckoutSession | None = None,
        subscription: Subscription | None = None,
        invoice: Invoice | None = None,
    ) -> WebhookResult:
        """Apply objects just read from Stripe (a checkout return, a plan change's answer) through
        the same handlers as their webhooks, in one transaction (decision 0040).

        No event is stored: the webhooks still are when they arrive, and find the effects done
        (grants are keyed by the Stripe object). A subscription is applied as Stripe's current
        state at the time of the newest event already applied to it (a tie, which the handler
        settles with the state it is given), or at its creation when none was, so any later
        event still applies after it.
        """

        def work(session: Session) -> WebhookResult:
            result = Outcome()

            def applying(event: EventRef, hints: Hints | None = None) -> Applying:
                return Applying(self.services, session, event, hints or Hints(), result)

            if subscription is not None:
                newest = session.execute(
                    select(StripeSubscription.last_event_created).where(
                        StripeSubscription.id == subscription.id
                    )
                ).scalar()
                created = newest if newest is not None else int(subscription.created or 0)
                event = EventRef(f"fetched_{subscription.id}", "customer.subscription.updated", created)
                hints = Hints(subscription=subscription) if newest is not None else Hints()
                on_subscription(applying(event, hints), subscription)
            if invoice is not None and invoice.status == "paid":
                paid = invoice.paid_at or invoice.created
                event = EventRef(f"fetched_{invoice.id}", "invoice.paid", int(paid or 0))
                on_invoice_paid(applying(event), invoice)
            if checkout_session is not None:
                intent = checkout_session.payment_intent_object
                at = (intent.created if intent else None) or to_ts(self.services.clock.now())
                event = EventRef(f"fetched_{checkout_session.id}", "checkout.session.completed", int(at))
                on_checkout(applying(event), checkout_session)
            if result.account_id is not None and result.outcome not in ("stale", "unknown_account"):
                self.notifications.after_balance_change(session, result.account_id)
            return WebhookResult(
                "fetched", "fetched", result.outcome, result.account_id, "; ".join(result.notes)
            )

        return self.db.write(work)
