"""Persistence of the notifications domain: the outbox, per-account alert settings and the
armed/disarmed state of each balance threshold."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from chronote_billing.core.db import Base, BigInt, JSONType, UTCDateTime


class OutboxEntry(Base):
    """One thing to do after a transaction committed: a webhook to Chronote (``kind='event'``)
    or a background job (``kind='job'``, e.g. an auto-recharge purchase).

    Written in the transaction of the business change it reports, so it exists if and only if
    that change committed. The delivery worker sends it later, at least once.

    Status: delivered when ``delivered_at`` is set, dead when ``dead_at`` is set (out of
    attempts), otherwise pending and due at ``next_attempt_at``.
    """

    __tablename__ = "notification_outbox"
    __table_args__ = (
        CheckConstraint("kind in ('event', 'job')", name="kind"),
        CheckConstraint("attempts >= 0", name="attempts_nonneg"),
        Index("ix_notification_outbox_due", "next_attempt_at"),
        Index("ix_notification_outbox_account", "account_id", "created_at"),
        # The retention purge (decision 0037) and the dead count of /metrics (0036): partial, so
        # pending rows write no entry.
        Index(
            "ix_notification_outbox_delivered",
            "delivered_at",
            postgresql_where=text("delivered_at IS NOT NULL"),
            sqlite_where=text("delivered_at IS NOT NULL"),
        ),
        Index(
            "ix_notification_outbox_dead",
            "dead_at",
            postgresql_where=text("dead_at IS NOT NULL"),
            sqlite_where=text("dead_at IS NOT NULL"),
        ),
    )

    # evt_... for events (the id Chronote dedupes by), job_... for jobs.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # None once delivered or dead; while an attempt is in flight it holds the lease's end.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    dead_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class NotificationSettings(Base):
    """What an account wants to be told and done when its balance runs low.

    Thresholds are stored in millicredits; the API speaks whole credits.
    """

    __tablename__ = "notification_settings"

    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("billing_accounts.id"), primary_key=True)
    low_balance_threshold_millicredits: Mapped[int | None] = mapped_column(BigInt, nullable=True)
    auto_recharge_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_recharge_threshold_millicredits: Mapped[int | None] = mapped_column(BigInt, nullable=True)
    auto_recharge_pack_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Monthly bounds of auto-recharge (decision 0045): purchases and/or money (minor units).
    auto_recharge_limit_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    auto_recharge_limit_amount: Mapped[int | None] = mapped_column(BigInt, nullable=True)
    # Why auto-recharge turned itself off (card_declined), until the settings are saved again.
    auto_recharge_stopped_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    auto_recharge_stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ThresholdState(Base):
    """Whether a threshold may fire (``armed``) and how often it has (``crossings``).

    A threshold fires when the available balance is below it while armed, which disarms it in
    the same transaction (a conditional update, so two concurrent spends cannot both fire). It
    is re-armed when the balance is seen at or above the threshold again.
    """

    __tablename__ = "notification_threshold_state"
    __table_args__ = (CheckConstraint("kind in ('low_balance', 'auto_recharge')", name="kind"),)

    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("billing_accounts.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    armed: Mapped[bool] = mapped_column(Boolean, default=True)
    crossings: Mapped[int] = mapped_column(Integer, default=0)
    last_fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AutoRechargePurchase(Base):
    """One auto-recharge purchase, recorded when its job is queued (decision 0045): started and
    succeeded purchases of a calendar month count against the account's monthly limit."""

    __tablename__ = "auto_recharge_purchases"
    __table_args__ = (
        CheckConstraint("status in ('started', 'succeeded', 'failed')", name="status"),
        Index("ix_auto_recharge_purchases_account_month", "account_id", "month"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the job's id
    account_id: Mapped[str] = mapped_column(String(40), ForeignKey("billing_accounts.id"))
    month: Mapped[str] = mapped_column(String(7))
    pack_id: Mapped[str] = mapped_column(String(40))
    amount: Mapped[int] = mapped_column(BigInt)  # the pack's price, minor units
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
