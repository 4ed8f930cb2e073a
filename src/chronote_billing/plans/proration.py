"""What a plan change does (decision 0018) and what an upgrade adds, decided from facts: pure.

`decide_plan_change` decides before anything is sent to Stripe: the change service applies its
decision, and the portal shows it first (the amount charged at once, or the date a downgrade takes
effect), so what the person confirms and what happens cannot disagree (decision 0040).
`upgrade_credits` is the prorated difference of included credits an upgrade's paid invoice grants.
Money and credits are integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from chronote_billing.catalog.service import Plan

from .periods import allowance_slice

INTERVAL_WORDS = {"month": "monthly", "year": "annual"}

ChangeKind = Literal["upgrade", "interval", "downgrade", "cancel_pending", "unchanged", "unsupported"]


@dataclass(frozen=True)
class PlanChangeDecision:
    kind: ChangeKind
    effective: Literal["now", "period_end", "unchanged", "refused"]
    effective_at: datetime
    # What Stripe is expected to charge at once, in the currency's minor unit (0: nothing now).
    amount_due: int
    currency: str
    message: str

    @property
    def charges_now(self) -> bool:
        return self.amount_due > 0


def change_moment(now: datetime, period_start: datetime, period_end: datetime) -> datetime:
    """When a change made `now` counts from: within the current period, never outside it."""
    return min(max(now, period_start), period_end)


def decide_plan_change(
    current: Plan,
    current_interval: str,
    pending_plan_id: str | None,
    target: Plan,
    interval: str,
    period_start: datetime,
    period_end: datetime,
    now: datetime,
) -> PlanChangeDecision:
    """Upgrades (a higher plan, or monthly to annual) take effect now with a prorated charge;
    downgrades at the end of the period; an annual plan cannot move to a monthly lower one
    mid-period (it would restart the period with less)."""
    changed_at = change_moment(now, period_start, period_end)
    current_price, target_price = current.price(current_interval), target.price(interval)
    currency = target_price.currency
    if target.id == current.id and interval == current_interval and pending_plan_id is None:
        return PlanChangeDecision(
            "unchanged", "unchanged", now, 0, currency, f"{target.name} is already the plan in force."
        )
    interval_up = current_interval == "month" and interval == "year"
    interval_down = current_interval == "year" and interval == "month"
    upgrade = (target.rank > current.rank and not interval_down) or (
        target.rank == current.rank and interval_up
    )
    downgrade = target.rank <= current.rank and interval == current_interval
    total = (period_end - period_start).total_seconds()
    left = max(0.0, (period_end - changed_at).total_seconds())
    # Stripe prorates by the unused share of the period: a credit for the old price, a charge for
    # the new one (integer minor units, rounded as Stripe rounds each proration line).
    unused_old = round(current_price.unit_amount * left / total) if total > 0 else 0
    if upgrade and interval_up:
        # The billing period restarts: the full annual price less the unused part of the old one.
        amount = max(0, target_price.unit_amount - unused_old)
        return PlanChangeDecision(
            "interval",
            "now",
            changed_at,
            amount,
            currency,
            f"{target.name}, billed annually, starts now; the unused part of the current period is credited.",
        )
    if upgrade:
        remaining_new = round(target_price.unit_amount * left / total) if total > 0 else 0
        return PlanChangeDecision(
            "upgrade",
            "now",
            changed_at,
            max(0, remaining_new - unused_old),
            currency,
            f"{target.name} starts now; you pay the difference for the rest of this period.",
        )
    if downgrade:
        if target.id == current.id:
            return PlanChangeDecision(
                "cancel_pending",
                "period_end",
                period_end,
                0,
                currency,
                f"{current.name} stays; the change planned for the end of the period is cancelled.",
            )
        return PlanChangeDecision(
            "downgrade",
            "period_end",
            period_end,
            0,
            currency,
            f"{current.name} stays until the period ends; then {target.name} starts.",
        )
    return PlanChangeDecision(
        "unsupported",
        "refused",
        now,
        0,
        currency,
        f"{current.name} billed {INTERVAL_WORDS.get(current_interval, current_interval)} cannot move to "
        f"{target.name} billed {INTERVAL_WORDS.get(interval, interval)} before the period ends: it would "
        "restart the period with a lower plan. Cancel at the period end and subscribe again instead.",
    )


def prorated_credits(
    difference: int, slice_start: datetime, slice_end: datetime, changed_at: datetime
) -> int:
    """The share of `difference` millicredits for what is left of an allowance slice after
    `changed_at`, in whole seconds, rounded down (0018)."""
    total = int((slice_end - slice_start).total_seconds())
    left = max(0, int((slice_end - max(changed_at, slice_start)).total_seconds()))
    return difference * left // total if total > 0 else 0


def upgrade_credits(
    old: Plan, new: Plan, *, changed_at: datetime, period_start: datetime, period_end: datetime
) -> tuple[int, datetime]:
    """An upgrade's prorated difference of included credits for the rest of the current monthly
    allowance slice (0018), and when that slice ends (the credits expire with it). The amount is
    0 or less when nothing is left to add."""
    _, slice_start, slice_end = allowance_slice(period_start, period_end, changed_at)
    amount = prorated_credits(
        new.included_millicredits - old.included_millicredits, slice_start, slice_end, changed_at
    )
    return amount, slice_end
