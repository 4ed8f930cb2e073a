"""Public shapes of notification settings and outbox entries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class AlertSettingsView(BaseModel):
    object: str = "alert_settings"
    account_id: str
    low_balance_threshold_credits: int | None = Field(
        description="Send wallet.balance_low when the available balance falls below this many credits (None: off)."
    )
    armed: bool = Field(description="True when the next fall below the threshold sends an alert.")
    alerts_sent: int = Field(description="How many times the threshold has been crossed downwards.")
    last_alert_at: datetime | None
    updated_at: datetime | None


class AutoRechargeView(BaseModel):
    object: str = "auto_recharge_settings"
    account_id: str
    enabled: bool
    threshold_credits: int | None = Field(
        description="Buy the pack when the available balance falls below this many credits."
    )
    pack_id: str | None
    monthly_limit_count: int | None = Field(description="At most this many purchases a calendar month (UTC).")
    monthly_limit_amount: int | None = Field(
        description="At most this much money a calendar month, in the currency's minor unit."
    )
    currency: str
    purchases_this_month: int = Field(
        description="Purchases started or made this month (failed ones excluded)."
    )
    amount_this_month: int = Field(description="Their total, minor units.")
    stopped_reason: str | None = Field(
        description="Why auto-recharge turned itself off (card_declined, no_payment_method, ...), until saved again."
    )
    stopped_at: datetime | None
    armed: bool = Field(description="True when the next fall below the threshold starts a purchase.")
    recharges_started: int
    last_started_at: datetime | None
    updated_at: datetime | None


class NotificationSettingsView(BaseModel):
    object: str = "notification_settings"
    account_id: str
    alerts: AlertSettingsView
    auto_recharge: AutoRechargeView


class OutboxEntryView(BaseModel):
    object: str = "notification"
    id: str
    kind: str = Field(description="'event' (a webhook to Chronote) or 'job' (background work).")
    type: str
    account_id: str | None
    data: dict[str, Any]
    status: str = Field(description="pending, delivered or dead.")
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    dead_at: datetime | None
    last_error: str | None


class OutboxPage(BaseModel):
    object: str = "list"
    data: list[OutboxEntryView]
    has_more: bool
    next_cursor: str | None = Field(default=None, description="Pass as starting_after for the next page.")
