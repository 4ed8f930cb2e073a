"""What an event's handler may need from Stripe, read before its transaction (never inside one).

A refund or dispute names a charge; when our own records cannot say what that charge paid for,
Stripe is asked for its payment intent and invoice. A subscription event that ties, to the
second, with the newest one applied is settled by Stripe's current state of the subscription.
The answers only add links; ordering never depends on them.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.core.db import Database
from chronote_billing.core.errors import ExternalServiceError
from chronote_billing.integrations.stripe.client import (
    StripeClient,
    StripeFailure,
    expandable_id,
    request,
    to_dict,
)
from chronote_billing.integrations.stripe.objects import Event, Subscription

from ..models import StripeCharge, StripePurchase, StripeSubscription
from .context import Hints

log = structlog.get_logger(__name__)


def read_hints(db: Database, client_factory: Callable[[], StripeClient] | None, event: Event) -> Hints:
    """Hints for one event; none when Stripe cannot be asked (`client_factory` is None)."""
    if event.type.startswith("customer.subscription."):
        return _subscription_tie(db, client_factory, event)
    if event.type == "charge.refunded" or event.type.startswith("charge.dispute."):
        return _charge_links(db, client_factory, event)
    return Hints()


def _charge_links(db: Database, client_factory: Callable[[], StripeClient] | None, event: Event) -> Hints:
    obj = event.object
    charge_id = obj.get("id") if event.type == "charge.refunded" else expandable_id(obj.get("charge"))
    pi = expandable_id(obj.get("payment_intent"))
    if not charge_id:
        return Hints()

    def known(session: Session) -> tuple[bool, bool]:
        charge = session.get(StripeCharge, charge_id)
        linked = charge is not None and (
            charge.invoice_id is not None or charge.payment_intent_id is not None
        )
        purchase = (
            pi is not None
            and session.execute(
                select(StripePurchase.id).where(StripePurchase.payment_intent_id == pi)
            ).first()
            is not None
        )
        return linked, purchase

    linked, purchase = db.read(known)
    if purchase or (linked and pi is None) or client_factory is None:
        return Hints()
    client = client_factory()
    found_pi: str | None = None
    invoice: str | None = None
    try:
        if pi is None:
            charge = to_dict(request(lambda: client.v1.charges.retrieve(charge_id)))
            pi = found_pi = expandable_id(charge.get("payment_intent"))
        if pi:
            payment_intent = pi
            payments = request(
                lambda: client.v1.invoice_payments.list(
                    params={
                        "payment": {"type": "payment_intent", "payment_intent": payment_intent},
                        "limit": 1,
                    }
                )
            )
            if payments.data:
                invoice = expandable_id(to_dict(payments.data[0]).get("invoice"))
    except StripeFailure as exc:
        if exc.kind != "invalid_request":
            raise ExternalServiceError(f"Could not read charge '{charge_id}' from Stripe: {exc}") from exc
        log.info("stripe_charge_link_unavailable", charge=charge_id, error=str(exc))
    return Hints(payment_intent=found_pi, invoice=invoice)


def _subscription_tie(db: Database, client_factory: Callable[[], StripeClient] | None, event: Event) -> Hints:
    """Stripe's `created` has one-second resolution: two changes to a subscription in the same
    second cannot be ordered from the events alone. When this event ties with the newest one
    applied, ask Stripe for the subscription as it is now and apply that."""
    sub_id = event.object.get("id")
    if not sub_id or client_factory is None or event.type == "customer.subscription.deleted":
        return Hints()
    newest = db.read(
        lambda s: s.execute(
            select(StripeSubscription.last_event_created).where(StripeSubscription.id == sub_id)
        ).scalar()
    )
    if newest is None or event.created != newest:
        return Hints()
    client = client_factory()
    try:
        current = to_dict(request(lambda: client.v1.subscriptions.retrieve(sub_id)))
    except StripeFailure as exc:
        raise ExternalServiceError(f"Could not read subscription '{sub_id}' from Stripe: {exc}") from exc
    return Hints(subscription=Subscription.model_validate(current))
