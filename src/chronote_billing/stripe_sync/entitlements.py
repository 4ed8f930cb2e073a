"""Which plan an account is on right now, and its free monthly allowance.

Correctness never depends on a scheduled job: the free allowance of a calendar month is granted
on first need (any hold, debit or entitlement check), idempotently per account and month.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.catalog.service import Plan, load_catalog
from chronote_billing.core.clock import month_bounds, month_key
from chronote_billing.ledger.models import Grant
from chronote_billing.ledger.service import LedgerService

from .models import PlanSubscription

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
    if sub.status == "past_due":
        started = sub.payment_failed_at or sub.updated_at
        return now < started + PAYMENT_GRACE
    return False


def current_plan(session: Session, account: BillingAccount, now: datetime) -> Plan | None:
    """The plan in force; organizations have no plan (they buy credit packs)."""
    if account.kind == AccountKind.ORGANIZATION:
        return None
    catalog = load_catalog()
    sub = plan_subscription(session, account.id)
    if subscription_in_force(sub, now) and sub is not None and sub.plan_id in catalog.plans:
        return catalog.plans[sub.plan_id]
    return catalog.free_plan(account.kind)


def ensure_free_allowance(session: Session, ledger: LedgerService, account: BillingAccount, now: datetime) -> bool:
    """Grant this month's free allowance if the account is on a free plan and has not had it.

    Returns True when a grant was issued by this call.
    """
    plan = current_plan(session, account, now)
    if plan is None or not plan.is_free or plan.included_credits <= 0:
        return False
    month = month_key(now)
    cause_id = f"{plan.id}:{month}"
    exists = session.execute(
        select(Grant.id).where(
            Grant.billing_account_id == account.id, Grant.cause_type == "free_plan", Grant.cause_id == cause_id
        )
    ).first()
    if exists:
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
