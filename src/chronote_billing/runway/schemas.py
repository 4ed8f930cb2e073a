"""Public shapes of the runway (decision 0046)."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field


class DailySpend(BaseModel):
    day: date
    spent: int = Field(description="Millicredits spent that UTC day.")


class AuthorizationRunway(BaseModel):
    object: str = "authorization_runway"
    authorization_id: str
    subject_type: str
    subject_id: str
    monthly_cap: int | None = Field(description="Millicredits per calendar month; null: no cap.")
    used: int
    held: int
    spent_in_window: int
    daily_rate: int = Field(description="Millicredits a day at the last 14 days' pace.")
    cold_start: bool
    status: str = Field(
        description="no_cap, reached, cold_start, no_recent_spending, reaches_cap or not_this_month."
    )
    reaches_cap_at: datetime | None = Field(description="When the cap is reached this month, at this pace.")
    sentence: str


class RunwayView(BaseModel):
    object: str = "runway"
    account_id: str
    as_of: datetime
    window_days: int = 14
    observed_seconds: int = Field(description="How much of the window had spending history.")
    spent_in_window: int = Field(description="Millicredits spent in the last 14 days.")
    daily_rate: int = Field(description="Millicredits a day at that pace (0 on a cold start).")
    available: int
    cold_start: bool = Field(description="True when there is too little history to project.")
    status: str = Field(description="cold_start, no_recent_spending or spending.")
    runs_out_at: datetime | None = Field(description="When the credits held now are gone at that pace.")
    renews_at: datetime | None = Field(description="The next allowance of a plan, if any.")
    sentence: str
    daily: list[DailySpend] = Field(description="Spending per UTC day of the 14 days, oldest first.")
    authorizations: list[AuthorizationRunway] = Field(default_factory=list)
