"""Public shapes of ledger objects (responses and idempotent replays)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class GrantView(BaseModel):
    object: str = "grant"
    id: str
    account_id: str
    source: str
    amount: int = Field(description="Millicredits granted.")
    remaining: int = Field(description="Millicredits not yet spent, expired or reversed (includes held).")
    held: int = Field(description="Millicredits reserved by open holds.")
    available: int = Field(
        description="Millicredits spendable now (0 when frozen, expired or not effective)."
    )
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    frozen: bool
    status: str
    cause_type: str
    cause_id: str | None
    description: str
    created_at: datetime


class BalanceView(BaseModel):
    object: str = "balance"
    account_id: str
    available: int = Field(
        description="Spendable millicredits: unexpired, effective, unfrozen grants minus open holds, "
        "plus the plan allowance due and not issued yet (`allowance_due`)."
    )
    held: int = Field(description="Millicredits reserved by open, unexpired holds.")
    posted: int = Field(
        description="Millicredits in the wallet by the ledger, including frozen and not-yet-swept expired credit."
    )
    frozen: int
    allowance_due: int = Field(
        default=0,
        description="Millicredits of this period's plan allowance counted in `available` but not "
        "issued yet: it is issued at the account's first use this period.",
    )
    grants: list[GrantView]
    as_of: datetime


class HoldView(BaseModel):
    object: str = "hold"
    id: str
    account_id: str
    status: str
    amount_requested: int
    amount_held: int
    amount_captured: int
    partial: bool = Field(description="True when fewer millicredits were held than requested.")
    expires_at: datetime
    reason: str
    metadata: dict[str, Any]
    cap_id: str | None
    cap_period: str | None
    created_at: datetime
    settled_at: datetime | None


class DebitView(BaseModel):
    object: str = "debit"
    id: str
    account_id: str
    amount: int
    reason: str
    metadata: dict[str, Any]
    cap_id: str | None
    cap_period: str | None
    created_at: datetime


class ReversalView(BaseModel):
    object: str = "grant_reversal"
    grant_id: str
    account_id: str
    requested: int
    reversed: int
    remaining: int
    kind: str


class StatementLine(BaseModel):
    object: str = "statement_line"
    id: int
    created_at: datetime
    kind: str
    phase: str
    amount: int = Field(description="Signed millicredits from the wallet's point of view.")
    balance_after: int
    grant_id: str
    hold_id: str | None
    debit_id: str | None
    reason: str


class StatementPage(BaseModel):
    object: str = "list"
    account_id: str
    data: list[StatementLine]
    has_more: bool
    next_cursor: int | None


class CapUsageView(BaseModel):
    object: str = "cap_usage"
    cap_id: str
    period: str
    held: int
    used: int


class EconomicLineView(BaseModel):
    object: str = "statement_line"
    id: str = Field(description="Stable, ordered line id; also the cursor of the page after it.")
    created_at: datetime
    type: str = Field(
        description="credits_added, usage, expired, refund, dispute_lost, reversal, frozen or unfrozen."
    )
    amount: int = Field(
        description="Signed millicredits moved in (+) or out (-) of the wallet; 0 for a freeze."
    )
    frozen_amount: int = Field(
        default=0, description="Millicredits a freeze made unspendable (or an unfreeze released)."
    )
    balance_after: int = Field(description="Millicredits in the wallet after this line (posted balance).")
    description: str
    grant_id: str | None
    hold_id: str | None
    debit_id: str | None


class ReservedView(BaseModel):
    object: str = "reservation"
    hold_id: str
    created_at: datetime
    amount: int = Field(description="Millicredits reserved now by this recording in progress.")
    expires_at: datetime
    description: str


class EconomicStatementPage(BaseModel):
    object: str = "statement"
    account_id: str
    available: int = Field(description="Spendable millicredits now, as on the balance.")
    reserved: int = Field(description="Millicredits held by recordings in progress (not moved yet).")
    in_progress: list[ReservedView] = Field(description="The holds in progress: reserved, not charged.")
    data: list[EconomicLineView] = Field(description="One line per economic event, newest first.")
    has_more: bool
    next_cursor: str | None
