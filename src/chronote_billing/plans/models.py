"""The plan tables: an account's one plan subscription, complimentary plans and trials."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, String, Text
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
    # A downgrade scheduled for the end of the current period (the plan in force stays until then).
    pending_plan_id: Mapped[str | None] = mapped_column(String(40), nullable=True)


class ComplimentaryPlan(Base):
    """A plan given without a Stripe subscription (today's manual comps), optionally ending."""

    __tablename__ = "complimentary_plans"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("billing_accounts.id"), index=True)
    plan_id: Mapped[str] = mapped_column(String(40))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PlanTrial(Base):
    """The one trial a person (personal plans) or a Discord server (server plans) may ever have
    (decision 0044), by Discord id: reserved by a trial checkout, kept after it ends."""

    __tablename__ = "plan_trials"
    __table_args__ = (
        CheckConstraint("subject_kind in ('personal', 'server')", name="subject_kind"),
        CheckConstraint("status in ('offered', 'active', 'converted', 'ended')", name="status"),
    )

    subject_kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    subject_ref: Mapped[str] = mapped_column(String(64), primary_key=True)  # Discord user or guild id
    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("billing_accounts.id"), index=True)
    plan_id: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(12))
    checkout_session_id: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    subscription_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    trial_start: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    trial_end: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    card_on_file: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
