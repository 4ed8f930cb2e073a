"""Persistence of the Stripe side: what Stripe told us (events, subscriptions, invoices, charges),
the checkouts and purchases made through it, and the import of today's Chronote data. The plan
tables (plan subscriptions, complimentary plans, trials) are in `plans.models`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from chronote_billing.core.db import Base, BigInt, JSONType, UTCDateTime


class StripeEvent(Base):
    """Every webhook event Stripe delivered, kept permanently, applied at most once (0009)."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(80))
    created: Mapped[int] = mapped_column(BigInt)
    livemode: Mapped[bool] = mapped_column(Boolean, default=False)
    object_id: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    account_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    # applied, stale, ignored (known type, nothing to do), unhandled (unknown type), unknown_account
    outcome: Mapped[str] = mapped_column(String(24))
    note: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # Webhook lag and unapplied events over recent hours, for /metrics (decision 0036).
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class StripeSubscription(Base):
    """The newest applied snapshot of every Stripe subscription we heard of, one row per id.

    The account's `PlanSubscription` is derived from these rows, so the result does not depend on
    the order in which events for different subscriptions arrive.
    """

    __tablename__ = "stripe_subscriptions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("billing_accounts.id"), index=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24))
    plan_id: Mapped[str] = mapped_column(String(40))
    price_lookup_key: Mapped[str] = mapped_column(String(80))
    interval: Mapped[str] = mapped_column(String(8))
    pending_plan_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    current_period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    current_period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    stripe_created: Mapped[int] = mapped_column(BigInt)
    # Ordering key of the newest event applied: (event created, then a tie-break rank and event id).
    last_event_created: Mapped[int] = mapped_column(BigInt)
    last_event_rank: Mapped[str] = mapped_column(String(120))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StripeInvoice(Base):
    """Invoices of plan subscriptions: paid is terminal; the first failure starts the grace."""

    __tablename__ = "stripe_invoices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("billing_accounts.id"), index=True)
    subscription_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    billing_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # paid, failed
    amount_paid: Mapped[int] = mapped_column(BigInt, default=0)
    first_failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StripeCheckoutSession(Base):
    """A Checkout Session this service started, and what it was for."""

    __tablename__ = "stripe_checkout_sessions"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("billing_accounts.id"), index=True)
    mode: Mapped[str] = mapped_column(String(16))  # subscription, payment
    plan_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    interval: Mapped[str | None] = mapped_column(String(8), nullable=True)
    pack_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    price_lookup_key: Mapped[str] = mapped_column(String(80))
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # open, complete, expired
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class StripePurchase(Base):
    """Credits bought with money: a credit pack, a period allowance, an upgrade's prorated difference.

    Holds what a refund or dispute needs to find the grant: the payment intent (packs) or the
    invoice (plans), and how much of the grant refunds already took back.
    """

    __tablename__ = "stripe_purchases"
    __table_args__ = (UniqueConstraint("cause_key", name="uq_stripe_purchases_cause_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # `invoice:<in_id>:allowance`, `checkout_session:<cs_id>:pack`, `payment_intent:<pi_id>:pack` ...
    cause_key: Mapped[str] = mapped_column(String(160))
    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("billing_accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # pack, allowance, upgrade
    product_ref: Mapped[str] = mapped_column(String(40))  # pack id or plan id
    payment_intent_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    invoice_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    grant_id: Mapped[str] = mapped_column(String(40))
    credits: Mapped[int] = mapped_column(BigInt)  # millicredits granted
    # Credits the cumulative refunded fraction asks back, and what could actually be reversed.
    refund_target: Mapped[int] = mapped_column(BigInt, default=0)
    reversed: Mapped[int] = mapped_column(BigInt, default=0)
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StripeCharge(Base):
    """What Stripe told us about a charge: refunded so far and dispute state (monotonic)."""

    __tablename__ = "stripe_charges"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    invoice_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    amount: Mapped[int] = mapped_column(BigInt)
    amount_refunded: Mapped[int] = mapped_column(BigInt, default=0)
    # none, open, won, lost
    dispute_status: Mapped[str] = mapped_column(String(8), default="none")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ChronoteImport(Base):
    """One record per item imported from today's Chronote, so a second import adds nothing."""

    __tablename__ = "chronote_imports"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("billing_accounts.id"))
    kind: Mapped[str] = mapped_column(String(24))  # subscription, comp
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType)
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime())
