"""Which plan an account is on right now, and the allowances issued on first need: the facts
gathered with queries, the decisions asked of `rules`, the allowances written to the ledger.

Correctness never depends on a scheduled job: the free allowance of a calendar month is granted
on first need (any hold, debit or entitlement check), idempotently per account and month. The
same call issues the monthly allowance of a complimentary plan and the second to twelfth monthly
allowance of a yearly subscription (0002), each keyed by its period so it is granted once.
Every function takes the catalog from its caller (decision 0058).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.catalog.service import Catalog, Plan
from chronote_billing.ledger.models import Grant
from chronote_billing.ledger.service import LedgerService

from .models import ComplimentaryPlan, PlanSubscription
from .rules import (
    ALLOWANCE_PRIORITY,
    DueAllowance,
    best_complimentary,
    due_allowance,
    next_allowance_at,
    plan_in_force,
)


def plan_subscription(session: Session, account_id: str) -> PlanSubscription | None:
    return session.get(PlanSubscription, account_id)


def complimentary_plan(
    session: Session, account: BillingAccount, now: datetime, catalog: Catalog
) -> tuple[ComplimentaryPlan, Plan] | None:
    """The highest complimentary plan in force for this account, if any."""
    rows = session.execute(
        select(ComplimentaryPlan).where(
            ComplimentaryPlan.account_id == account.id, ComplimentaryPlan.starts_at <= now
        )
    ).scalars()
    return best_complimentary(rows, account.kind, now, catalog)


def current_plan(session: Session, account: BillingAccount, now: datetime, catalog: Catalog) -> Plan | None:
    """The plan in force; organizations have no plan (they buy credit packs)."""
    if account.kind == AccountKind.ORGANIZATION:
        return None
    return plan_in_force(
        account.kind,
        plan_subscription(session, account.id),
        complimentary_plan(session, account, now, catalog),
        now,
        catalog,
    )


def next_allowance(
    session: Session, account: BillingAccount, now: datetime, catalog: Catalog
) -> datetime | None:
    """When the account's next allowance comes (None for organizations, which have no plan)."""
    if account.kind == AccountKind.ORGANIZATION:
        return None
    return next_allowance_at(
        current_plan(session, account, now, catalog), plan_subscription(session, account.id), now
    )


def ensure_free_allowance(
    session: Session, ledger: LedgerService, account: BillingAccount, now: datetime, catalog: Catalog
) -> bool:
    """Grant the allowance of the plan in force that is due on first need (free and
    complimentary plans monthly, a yearly subscription's later slices), once per period.

    Returns True when a grant was issued by this call.
    """
    due = allowance_not_issued(session, account, now, catalog)
    if due is None:
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
        priority=ALLOWANCE_PRIORITY,
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


def allowance_not_issued(
    session: Session, account: BillingAccount, now: datetime, catalog: Catalog
) -> DueAllowance | None:
    """The allowance ``ensure_free_allowance`` would issue now, without issuing it: what every
    available figure counts before the first use of the period (decision 0039)."""
    if account.kind == AccountKind.ORGANIZATION:
        return None
    sub = plan_subscription(session, account.id)
    comp = complimentary_plan(session, account, now, catalog)
    due = due_allowance(plan_in_force(account.kind, sub, comp, now, catalog), sub, comp, now, catalog)
    if due is None or _already_granted(session, account.id, due.cause_type, due.cause_id):
        return None
    return due
