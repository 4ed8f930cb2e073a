"""Which plan an account is on right now, and the allowances issued on first need.

Correctness never depends on a scheduled job: the free allowance of a calendar month is granted
on first need (any hold, debit or entitlement check), idempotently per account and month. The
same call issues the monthly allowance of a complimentary plan and the second to twelfth monthly
allowance of a yearly subscription (0002), each keyed by its period so it is granted once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

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


def subscription_in_force(sub: PlanSubscription | None, now: datetime) -> bool:
    """Active or trialing; or past due but still inside the 7-day grace."""
    if sub is None:
        return False
    if sub.status in PAID_STATUSES:
        return True
    grace_ends = grace_ends_at(sub)
    return grace_ends is not None and now < grace_ends


def grace_ends_at(sub: PlanSubscription | None) -> datetime | None:
    """When a past-due subscription stops counting (7 days after its first failed payment)."""
    if sub is None or sub.status != "past_due":
        return None
    return as_utc(sub.payment_failed_at or sub.updated_at) + PAYMENT_GRACE


def paid_plan(sub: PlanSubscription | None, now: datetime) -> Plan | None:
    """The subscription's plan if it is in force; a scheduled downgrade applies from the period end."""
    if sub is None or not subscription_in_force(sub, now):
        return None
    catalog = load_catalog()
    plan_id = sub.plan_id
    if sub.pending_plan_id and now >= sub.current_period_end:
        plan_id = sub.pending_plan_id
    return catalog.plans.get(plan_id)


def complimentary_plan(
    session: Session, account: BillingAccount, now: datetime
) -> tuple[ComplimentaryPlan, Plan] | None:
    """The highest complimentary plan in force for this account, if any."""
    catalog = load_catalog()
    best: tuple[ComplimentaryPlan, Plan] | None = None
    rows = session.execute(
        select(ComplimentaryPlan).where(
            ComplimentaryPlan.account_id == account.id, ComplimentaryPlan.starts_at <= now
        )
    ).scalars()
    for comp in rows:
        if comp.ends_at is not None and now >= comp.ends_at:
            continue
        plan = catalog.plans.get(comp.plan_id)
        if plan is None or plan.scope != account.kind:
            continue
        if best is None or plan.rank > best[1].rank:
            best = (comp, plan)
    return best


def current_plan(session: Session, account: BillingAccount, now: datetime) -> Plan | None:
    """The plan in force; organizations have no plan (they buy credit packs).

    The higher of the paid and the complimentary plan (0002), else the account kind's free plan.
    """
    if account.kind == AccountKind.ORGANIZATION:
        return None
    catalog = load_catalog()
    paid = paid_plan(plan_subscription(session, account.id), now)
    comp = complimentary_plan(session, account, now)
    candidates = [p for p in (paid, comp[1] if comp else None) if p is not None]
    if candidates:
        return max(candidates, key=lambda p: p.rank)
    return catalog.free_plan(account.kind)


def ensure_free_allowance(
    session: Session, ledger: LedgerService, account: BillingAccount, now: datetime
) -> bool:
    """Grant this month's free allowance if the account is on a free plan and has not had it.

    Returns True when a grant was issued by this call.
    """
    plan = current_plan(session, account, now)
    if plan is None or plan.included_credits <= 0:
        return False
    if not plan.is_free:
        return _ensure_paid_allowance(session, ledger, account, plan, now)
    month = month_key(now)
    cause_id = f"{plan.id}:{month}"
    if _already_granted(session, account.id, "free_plan", cause_id):
        return False
    start, end = month_bounds(now)
    ledger.issue_grant(
        session,
        account_id=account.id,
        amount=plan.included_millicredits,
        source="free_allowance",
        idempotency_key=f"free-allowance:{month}",
        cause_type="free_plan",
        cause_id=cause_id,
        priority=10,
        effective_at=start,
        expires_at=end,
        description=f"{plan.name} allowance for {month}",
    )
    return True


def _ensure_paid_allowance(
    session: Session, ledger: LedgerService, account: BillingAccount, plan: Plan, now: datetime
) -> bool:
    """A complimentary plan's monthly allowance, or a yearly subscription's later monthly slices.

    The first slice of a subscription period comes with its paid invoice (webhooks); later slices
    of a yearly period are issued here, once each, while the subscription is paid up.
    """
    sub = plan_subscription(session, account.id)
    paid = paid_plan(sub, now)
    if paid is not None and paid.id == plan.id and sub is not None:
        if sub.status not in PAID_STATUSES or sub.interval != "year" or now >= sub.current_period_end:
            return False
        index, start, end = allowance_slice(sub.current_period_start, sub.current_period_end, now)
        if index == 0:
            return False
        cause_id = f"{sub.stripe_subscription_id}:{start.isoformat()}"
        exists = session.execute(
            select(Grant.id).where(
                Grant.billing_account_id == account.id,
                Grant.cause_type == "subscription",
                Grant.cause_id == cause_id,
            )
        ).first()
        if exists:
            return False
        ledger.issue_grant(
            session,
            account_id=account.id,
            amount=plan.included_millicredits,
            source="plan_allowance",
            idempotency_key=f"subscription:{cause_id}:allowance",
            cause_type="subscription",
            cause_id=cause_id,
            priority=10,
            effective_at=start,
            expires_at=end,
            description=f"{plan.name} allowance {start.date()} to {end.date()}",
        )
        return True
    comp = complimentary_plan(session, account, now)
    if comp is None or comp[1].id != plan.id:
        return False
    month = month_key(now)
    cause_id = f"{comp[0].id}:{month}"
    if _already_granted(session, account.id, "complimentary_plan", cause_id):
        return False
    start, end = month_bounds(now)
    if comp[0].ends_at is not None:
        end = min(end, comp[0].ends_at)
    ledger.issue_grant(
        session,
        account_id=account.id,
        amount=plan.included_millicredits,
        source="comp",
        idempotency_key=f"complimentary:{cause_id}",
        cause_type="complimentary_plan",
        cause_id=cause_id,
        priority=10,
        effective_at=max(start, comp[0].starts_at),
        expires_at=end,
        description=f"Complimentary {plan.name} allowance for {month}",
    )
    return True


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


def entitlement_trial(session: Session, account: BillingAccount | None, now: datetime) -> Any:
    """The free trial running now for an entitlements answer ("trial, ends on ..."), or None."""
    from .trials import trial_view

    return trial_view(session, account, now) if account is not None else None
