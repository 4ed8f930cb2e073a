"""Which plan is in force and which allowance is due, decided from facts: pure functions.

The facts are a plan subscription (the mirrored row, or the same facts read in one statement by
the usage path, decision 0031), the complimentary plans and the catalog; the answers are the plan
in force (the higher of the paid and the complimentary plan, else the free plan, 0002), whether a
past-due subscription is still inside its 7-day grace, and the allowance the account should hold
now (free and complimentary plans monthly, a yearly subscription's later monthly slices).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol, TypeVar

from chronote_billing.accounts.models import AccountKind
from chronote_billing.catalog.service import Catalog, Plan
from chronote_billing.core.clock import as_utc, month_bounds, month_key

from .periods import allowance_slice

PAYMENT_GRACE = timedelta(days=7)
# The priority of allowance grants: spent before packs (decision 0002).
ALLOWANCE_PRIORITY = 10
PAID_STATUSES = ("active", "trialing")

PlanSource = Literal["paid", "complimentary", "free", "none"]


class SubscriptionFacts(Protocol):
    """What the plan rules read of a plan subscription."""

    stripe_subscription_id: str
    plan_id: str
    interval: str
    status: str
    current_period_start: datetime
    current_period_end: datetime
    payment_failed_at: datetime | None
    updated_at: datetime
    pending_plan_id: str | None


class CompFacts(Protocol):
    """What the plan rules read of a complimentary plan."""

    id: str
    plan_id: str
    starts_at: datetime
    ends_at: datetime | None


@dataclass
class SubscriptionRow:
    """A plan subscription's facts without its table row (read in one statement, or in a test)."""

    stripe_subscription_id: str
    plan_id: str
    interval: str
    status: str
    current_period_start: datetime
    current_period_end: datetime
    payment_failed_at: datetime | None
    updated_at: datetime
    pending_plan_id: str | None


@dataclass
class CompRow:
    """A complimentary plan's facts without its table row."""

    id: str
    plan_id: str
    starts_at: datetime
    ends_at: datetime | None


C = TypeVar("C", bound=CompFacts)


@dataclass(frozen=True)
class DueAllowance:
    """An allowance the account should hold now and may not have been issued yet: free plans
    and complimentary plans monthly, yearly subscriptions' later monthly slices."""

    cause_type: str
    cause_id: str
    amount: int
    source: str
    idempotency_key: str
    effective_at: datetime
    expires_at: datetime
    description: str


def subscription_in_force(sub: SubscriptionFacts | None, now: datetime) -> bool:
    """Active or trialing; or past due but still inside the 7-day grace."""
    if sub is None:
        return False
    if sub.status in PAID_STATUSES:
        return True
    grace_ends = grace_ends_at(sub)
    return grace_ends is not None and now < grace_ends


def grace_ends_at(sub: SubscriptionFacts | None) -> datetime | None:
    """When a past-due subscription stops counting (7 days after its first failed payment)."""
    if sub is None or sub.status != "past_due":
        return None
    return as_utc(sub.payment_failed_at or sub.updated_at) + PAYMENT_GRACE


def paid_plan(sub: SubscriptionFacts | None, now: datetime, catalog: Catalog) -> Plan | None:
    """The subscription's plan if it is in force; a scheduled downgrade applies from the period end."""
    if sub is None or not subscription_in_force(sub, now):
        return None
    plan_id = sub.plan_id
    if sub.pending_plan_id and now >= as_utc(sub.current_period_end):
        plan_id = sub.pending_plan_id
    return catalog.plans.get(plan_id)


def best_complimentary(
    comps: Iterable[C], account_kind: str, now: datetime, catalog: Catalog
) -> tuple[C, Plan] | None:
    """The highest complimentary plan in force among ``comps``, if any."""
    best: tuple[C, Plan] | None = None
    for comp in comps:
        if as_utc(comp.starts_at) > now or (comp.ends_at is not None and now >= as_utc(comp.ends_at)):
            continue
        plan = catalog.plans.get(comp.plan_id)
        if plan is None or plan.scope != account_kind:
            continue
        if best is None or plan.rank > best[1].rank:
            best = (comp, plan)
    return best


def plan_in_force(
    account_kind: str,
    sub: SubscriptionFacts | None,
    comp: tuple[CompFacts, Plan] | None,
    now: datetime,
    catalog: Catalog,
) -> Plan | None:
    """The plan in force; organizations have no plan (they buy credit packs).

    The higher of the paid and the complimentary plan (0002), else the account kind's free plan.
    """
    if account_kind == AccountKind.ORGANIZATION:
        return None
    paid = paid_plan(sub, now, catalog)
    candidates = [p for p in (paid, comp[1] if comp else None) if p is not None]
    if candidates:
        return max(candidates, key=lambda p: p.rank)
    return catalog.free_plan(account_kind)


def plan_source(
    plan: Plan | None, sub: SubscriptionFacts | None, comp: tuple[CompFacts, Plan] | None
) -> PlanSource:
    """Where the plan in force comes from: the free plan, a complimentary plan the subscription
    does not also pay for, or the paid subscription."""
    if plan is None:
        return "none"
    if plan.is_free:
        return "free"
    if comp is not None and comp[1].id == plan.id and (sub is None or sub.plan_id != plan.id):
        return "complimentary"
    return "paid"


def due_allowance(
    plan: Plan | None,
    sub: SubscriptionFacts | None,
    comp: tuple[CompFacts, Plan] | None,
    now: datetime,
    catalog: Catalog,
) -> DueAllowance | None:
    """The allowance of the plan in force that is issued on first need, for the period containing
    ``now``; None when the plan's allowance comes with an invoice (first slice of a paid period)."""
    if plan is None or plan.included_credits <= 0:
        return None
    month = month_key(now)
    start, end = month_bounds(now)
    if plan.is_free:
        return DueAllowance(
            "free_plan",
            f"{plan.id}:{month}",
            plan.included_millicredits,
            "free_allowance",
            f"free-allowance:{month}",
            start,
            end,
            f"{plan.name} allowance for {month}",
        )
    paid = paid_plan(sub, now, catalog)
    if paid is not None and paid.id == plan.id and sub is not None:
        # The first slice of a subscription period comes with its paid invoice (webhooks); later
        # slices of a yearly period are issued here, once each, while the subscription is paid up.
        if sub.status not in PAID_STATUSES or sub.interval != "year" or now >= as_utc(sub.current_period_end):
            return None
        index, slice_start, slice_end = allowance_slice(sub.current_period_start, sub.current_period_end, now)
        if index == 0:
            return None
        cause_id = f"{sub.stripe_subscription_id}:{slice_start.isoformat()}"
        return DueAllowance(
            "subscription",
            cause_id,
            plan.included_millicredits,
            "plan_allowance",
            f"subscription:{cause_id}:allowance",
            slice_start,
            slice_end,
            f"{plan.name} allowance {slice_start.date()} to {slice_end.date()}",
        )
    if comp is None or comp[1].id != plan.id:
        return None
    cause_id = f"{comp[0].id}:{month}"
    if comp[0].ends_at is not None:
        end = min(end, as_utc(comp[0].ends_at))
    return DueAllowance(
        "complimentary_plan",
        cause_id,
        plan.included_millicredits,
        "comp",
        f"complimentary:{cause_id}",
        max(start, as_utc(comp[0].starts_at)),
        end,
        f"Complimentary {plan.name} allowance for {month}",
    )


def next_allowance_at(plan: Plan | None, sub: SubscriptionFacts | None, now: datetime) -> datetime | None:
    """When the next allowance comes: the next calendar month on a free plan (or a plan without a
    running subscription period), the next monthly slice of a paid plan."""
    if plan is None:
        return None
    if plan.is_free or sub is None or now >= as_utc(sub.current_period_end):
        return month_bounds(now)[1]
    _, _, end = allowance_slice(sub.current_period_start, sub.current_period_end, now)
    return end
