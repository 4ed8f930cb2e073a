"""Persistence of the Stripe side: plan subscriptions (one per account) and what Stripe told us."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from chronote_billing.core.db import Base, BigInt, UTCDateTime


class PlanSubscription(Base):
    """The account's one plan subscription, mirrored from Stripe (D9: never a second one)."""

    __tablename__ = "plan_subscriptions"

    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("billing_accounts.id"), primary_key=True)
    stripe_subscription_id: Mapped[str] = mapped_column(String(64), unique=True)
    stripe_customer_id: Mapped[str] = mapped_column(String(64))
    plan_id: Mapped[str] = mapped_column(String(40))
    price_lookup_key: Mapped[str] = mapped_column(String(80))
    interval: Mapped[str] = mapped_column(String(8))
    # Stripe's status: active, trialing, past_due, canceled, unpaid, incomplete, ...
    status: Mapped[str] = mapped_column(String(24))
    current_period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    current_period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    # When a renewal payment first failed: the plan is kept for a 7-day grace from here.
    payment_failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Stripe `created` of the newest event applied to this row: older deliveries cannot regress it.
    last_event_created: Mapped[int] = mapped_column(BigInt, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
