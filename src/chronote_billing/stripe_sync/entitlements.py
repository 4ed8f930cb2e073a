"""Which plan an account is on right now, and the allowances issued on first need.

Correctness never depends on a scheduled job: the free allowance of a calendar month is granted
on first need (any hold, debit or entitlement check), idempotently per account and month. The
same call issues the monthly allowance of a complimentary plan and the second to twelfth monthly
allowance of a yearly subscription (0002), each keyed by its period so it is granted once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.catalog.service import Plan, load_catalog
from chronote_billing.core.clock import as_utc, month_bounds, month_key
from chronote_billing.ledger.models import Grant
from chronote_billing.ledger.service import LedgerService

from .models import ComplimentaryPlan, PlanSubscription
from .periods import allowance_slice

PAYMENT_GRACE = timedelta(days=7)
PAID_STATUSES = ("active", "trialing")


def plan_subscription(session: Session, account_id: str) -> PlanSubscription | None:
    return session.get(PlanSubscription, account_id)


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


def paid_plan(sub: SubscriptionFacts | None, now: datetime) -> Plan | None:
    """The subscription's plan if it is in force; a scheduled downgrade applies from the period end."""
    if sub is None or not subscription_in_force(sub, now):
        return None
    catalog = load_catalog()
    plan_id = sub.plan_id
    if sub.pending_plan_id and now >= as_utc(sub.current_period_end):
        plan_id = sub.pending_plan_id
    return catalog.plans.get(plan_id)


class SubscriptionFacts(Protocol):
    """What the plan rules read of a plan subscription (the row, or the same facts read in one
    statement by the usage path, decision 0031)."""

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


def best_complimentary(comps: Iterable[C], account_kind: str, now: datetime) -> tuple[C, Plan] | None:
    """The highest complimentary plan in force among ``comps``, if any."""
    catalog = load_catalog()
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
    account_kind: str, sub: SubscriptionFacts | None, comp: tuple[CompFacts, Plan] | None, now: datetime
) -> Plan | None:
    """The plan in force; organizations have no plan (they buy credit packs).

    The higher of the paid and the complimentary plan (0002), else the account kind's free plan.
    """
    if account_kind == AccountKind.ORGANIZATION:
        return None
    paid = paid_plan(sub, now)
    candidates = [p for p in (paid, comp[1] if comp else None) if p is not None]
    if candidates:
        return max(candidates, key=lambda p: p.rank)
    return load_catalog().free_plan(account_kind)


def due_allowance(
    plan: Plan | None, sub: SubscriptionFacts | None, comp: tuple[CompFacts, Plan] | None, now: datetime
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
    paid = paid_plan(sub, now)
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


def complimentary_plan(
    session: Session, account: BillingAccount, now: datetime
) -> tuple[ComplimentaryPlan, Plan] | None:
    """The highest complimentary plan in force for this account, if any."""
    rows = session.execute(
        select(ComplimentaryPlan).where(
            ComplimentaryPlan.account_id == account.id, ComplimentaryPlan.starts_at <= now
        )
    ).scalars()
    return best_complimentary(rows, account.kind, now)


def current_plan(session: Session, account: BillingAccount, now: datetime) -> Plan | None:
    """The plan in force; organizations have no plan (they buy credit packs)."""
    if account.kind == AccountKind.ORGANIZATION:
        return None
    return plan_in_force(
        account.kind, plan_subscription(session, account.id), complimentary_plan(session, account, now), now
    )


def ensure_free_allowance(
    session: Session, ledger: LedgerService, account: BillingAccount, now: datetime
) -> bool:
    """Grant the allowance of the plan in force that is due on first need (free and
    complimentary plans monthly, a yearly subscription's later slices), once per period.

    Returns True when a grant was issued by this call.
    """
    if account.kind == AccountKind.ORGANIZATION:
        return False
    sub = plan_subscription(session, account.id)
    comp = complimentary_plan(session, account, now)
    due = due_allowance(plan_in_force(account.kind, sub, comp, now), sub, comp, now)
    if due is None or _already_granted(session, account.id, due.cause_type, due.cause_id):
        return False
    issue_allowance(ledger, session, account.id, due)
    return True


def issue_allowance(ledger: LedgerService, session: Session, account_id: str, due: DueAllowance) -> None:
    ledger.issue_grant(
        session,
        account_id=account_id,
        amount=due.amount,
        source=due.source,
        idempotency_key=due.idempotency_key,
        cause_type=due.cause_type,
        cause_id=due.cause_id,
        priority=10,
        effective_at=due.effective_at,
        expires_at=due.expires_at,
        description=due.description,
    )


def _already_granted(session: Session, account_id: str, cause_type: str, cause_id: str) -> bool:
    """A cheap read before taking the wallet lock; the ledger's idempotency key still guards
    against two first needs racing each other."""
    return (
        session.execute(
            select(Grant.id).where(
                Grant.billing_account_id == account_id,
                Grant.cause_type == cause_type,
                Grant.cause_id == cause_id,
            )
        ).first()
        is not None
    )
