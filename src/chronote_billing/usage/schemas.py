"""Public shapes of the usage domain: requests, attribution decisions, recordings, reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chronote_billing.plans.schemas import TrialView


class UsageRequest(BaseModel):
    """A usage context: what is about to be recorded, by whom, where, and who may pay."""

    model_config = ConfigDict(extra="forbid")

    context: str = Field(description="personal or server.")
    capture_source: str = Field(description="discord_voice, desktop, web, mobile, quick_capture or upload.")
    user_id: str | None = Field(
        default=None,
        description="The Discord user recording (or starting the server meeting); none for a server's auto-record.",
    )
    guild_id: str | None = Field(default=None, description="The Discord server, for server meetings.")
    meeting_id: str | None = Field(default=None, max_length=128)
    requested_minutes: int | None = Field(
        default=None, description="Minutes to reserve (recordings); uploads are sized instead."
    )
    funding_source: str | None = Field(
        default=None, description="'personal' or an authorization id held by the user; personal work only."
    )
    allow_partial: bool = Field(default=False, description="Approve what is available instead of declining.")
    declared_duration_seconds: int | None = Field(default=None, description="Uploads: the declared duration.")
    file_size_bytes: int | None = Field(default=None, description="Uploads without a declared duration.")


class EventRequest(BaseModel):
    """A metered event charged at once by the rate card, idempotent by ``event_id``."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=128)
    event_type: str = Field(description="chat_to_speech_message or ask_question.")
    context: str = Field(description="personal or server: the context where the work happens pays.")
    user_id: str
    guild_id: str | None = None
    meeting_id: str | None = Field(default=None, max_length=128)
    funding_source: str | None = None


class PayerAttempt(BaseModel):
    object: str = "payer_attempt"
    funding_source: str = Field(description="'personal', 'server' or an authorization id.")
    account_id: str | None
    authorization_id: str | None
    code: str
    reason: str


class Decision(BaseModel):
    object: str = "usage_decision"
    approved: bool
    code: str | None = Field(default=None, description="Why it was declined (when not approved).")
    reason: str = Field(description="Readable, content-free: who pays and why, or why not.")
    payer_account_id: str | None = None
    payer_kind: str | None = None
    authorization_id: str | None = None
    funding_source: str | None = None
    context: str
    capture_source: str | None
    requested_minutes: int
    approved_minutes: int
    amount: int = Field(description="Millicredits that would be (or were) held or charged.")
    partial: bool = False
    max_recording_minutes: int | None = None
    attempts: list[PayerAttempt] = Field(
        default_factory=list, description="Payers tried before and why they could not pay."
    )


class RecordingView(BaseModel):
    object: str = "recording"
    id: str
    kind: str
    status: str
    payer_account_id: str
    payer_kind: str
    authorization_id: str | None
    reason: str
    context: str
    capture_source: str | None
    event_type: str | None
    event_id: str | None
    user_id: str | None = Field(description="Who started it; none for a server's auto-recorded meeting.")
    guild_id: str | None
    meeting_id: str | None
    requested_minutes: int
    approved_minutes: int
    max_minutes: int
    partial: bool
    held: int
    charged: int
    shortfall: int
    hold_id: str | None
    debit_id: str | None
    hold_expires_at: datetime | None = None
    seconds_by_source: dict[str, Any] | None
    wall_clock_seconds: int | None
    rate_card_version: str
    created_at: datetime
    finished_at: datetime | None
    attempts: list[PayerAttempt] = Field(default_factory=list)


class AttributionView(BaseModel):
    object: str = "meeting_attribution"
    meeting_id: str
    owner_user_id: str | None = Field(
        description="Who recorded it; none for a server's auto-recorded meeting."
    )
    context: str
    guild_id: str | None
    capture_source: str | None
    payer_account_id: str
    payer_kind: str
    authorization_id: str | None
    reason: str
    created_at: datetime
    shared_with_guilds: list[str]


class FundingSourceView(BaseModel):
    object: str = "funding_source"
    id: str = Field(description="'personal' or the authorization id.")
    kind: str = Field(description="personal or authorization.")
    label: str
    account_id: str
    org_id: str | None = None
    org_name: str | None = None
    status: str
    capture_sources: list[str]
    max_recording_minutes: int
    monthly_cap: int | None = None
    used: int | None = None
    held: int | None = None
    left: int = Field(description="Millicredits that can be spent now from this source.")
    over_cap: bool = Field(
        default=False, description="This month's use is above the authorization's cap (it was lowered)."
    )
    position: int = Field(description="Place in the user's default order (0 first).")


class EntitlementsView(BaseModel):
    object: str = "entitlements"
    user_id: str
    guild_id: str | None
    context: str
    plan: str | None
    plan_name: str | None
    billed_to_account_id: str
    max_recording_minutes: int
    capture_sources: list[str]
    features: dict[str, Any]
    funding_sources: list[FundingSourceView]
    trial: TrialView | None = Field(
        default=None, description="The free trial running now ('trial, ends on ...'), if any."
    )


class UsageReportRow(BaseModel):
    object: str = "usage_report_row"
    key: str
    count: int
    minutes: int
    held: int
    charged: int


class UsageReport(BaseModel):
    object: str = "usage_report"
    account_id: str
    group_by: str
    since: datetime | None
    until: datetime | None
    rows: list[UsageReportRow]
    total_charged: int
