"""Which handler applies which event type, and the typed object it reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from chronote_billing.integrations.stripe.objects import (
    Charge,
    CheckoutSession,
    Dispute,
    Invoice,
    PaymentIntent,
    StripeModel,
    Subscription,
)

from . import charges, checkout, invoices, payment_intents, subscriptions
from .context import Applying

M = TypeVar("M", bound=StripeModel)


@dataclass(frozen=True)
class Handler(Generic[M]):
    model: type[M]
    apply: Callable[[Applying, M], None]


HANDLERS: dict[str, Handler[Any]] = {
    "checkout.session.completed": Handler(CheckoutSession, checkout.on_checkout),
    "checkout.session.async_payment_succeeded": Handler(CheckoutSession, checkout.on_checkout),
    "checkout.session.expired": Handler(CheckoutSession, checkout.on_checkout),
    "customer.subscription.created": Handler(Subscription, subscriptions.on_subscription),
    "customer.subscription.updated": Handler(Subscription, subscriptions.on_subscription),
    "customer.subscription.deleted": Handler(Subscription, subscriptions.on_subscription),
    "invoice.paid": Handler(Invoice, invoices.on_invoice_paid),
    "invoice.payment_failed": Handler(Invoice, invoices.on_invoice_failed),
    "payment_intent.succeeded": Handler(PaymentIntent, payment_intents.on_payment_intent_succeeded),
    "charge.refunded": Handler(Charge, charges.on_charge_refunded),
    "charge.dispute.created": Handler(Dispute, charges.on_dispute),
    "charge.dispute.closed": Handler(Dispute, charges.on_dispute),
}

# Events after which credits may have arrived: low-balance alerts are re-armed.
CREDIT_EVENTS = ("invoice.paid", "checkout.session.completed", "payment_intent.succeeded")
PAYMENT_FAILED = "invoice.payment_failed"
