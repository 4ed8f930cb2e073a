"""Trials (decision 0044): one per person or per Discord server, ever.

A trial checkout reserves the subject's row (`offered`); the subscription's events move it to
`active` while trialing, `converted` once paid, `ended` when canceled (`stripe_sync.trials`
follows Stripe's subscription); an unpaid checkout that expires releases it. The trial's first
invoice grants the plan's trial credits, which expire when the trial ends. Everything here runs
inside the caller's transaction and calls no network.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.catalog.service import Catalog, Plan
from chronote_billing.core.clock import as_utc
from chronote_billing.core.errors import Conflict, ValidationFailed

from .models import PlanTrial
from .schemas import TrialView


class NoTrial(ValidationFailed):
    code = "no_trial"
    title = "This plan has no trial"


class TrialAlreadyUsed(Conflict):
    code = "trial_already_used"
    title = "The trial was already used"


def subject(account: BillingAccount) -> tuple[str, str]:
    """Trials belong to the person or the server, whoever pays: their Discord id."""
    return str(account.kind), str(account.owner_ref)


def plan_trial(plan: Plan) -> Plan:
    if plan.trial is None:
        raise NoTrial(f"{plan.name} has no free trial.", field="trial", plan=plan.id)
    return plan


def existing(session: Session, account: BillingAccount, lock: bool = False) -> PlanTrial | None:
    query = select(PlanTrial).where(
        PlanTrial.subject_kind == subject(account)[0], PlanTrial.subject_ref == subject(account)[1]
    )
    return session.execute(query.with_for_update() if lock else query).scalar()


def refuse_if_used(row: PlanTrial | None, account: BillingAccount) -> None:
    """A second trial is refused; an open trial checkout may be replaced by a new one."""
    if row is None or row.status == "offered":
        return
    whose = "This person" if account.kind == AccountKind.PERSONAL else "This server"
    raise TrialAlreadyUsed(
        f"{whose} already had a free trial ({row.plan_id}, {row.status}); trials are once per "
        f"{'person' if account.kind == AccountKind.PERSONAL else 'server'}, ever.",
        field="trial",
        plan=row.plan_id,
    )


def reserve(
    session: Session,
    account: BillingAccount,
    plan: Plan,
    checkout_session_id: str,
    replaces: str | None,
    now: datetime,
) -> bool:
    """Reserve the subject's trial for this checkout; False when someone else holds it."""
    row = existing(session, account, lock=True)
    if row is not None:
        if row.status != "offered" or row.checkout_session_id not in (replaces, checkout_session_id):
            return False
        row.checkout_session_id, row.plan_id, row.account_id, row.updated_at = (
            checkout_session_id,
            plan.id,
            account.id,
            now,
        )
        return True
    kind, ref = subject(account)
    values = {
        "subject_kind": kind,
        "subject_ref": ref,
        "account_id": account.id,
        "plan_id": plan.id,
        "status": "offered",
        "checkout_session_id": checkout_session_id,
        "card_on_file": False,
        "created_at": now,
        "updated_at": now,
    }
    dialect = session.get_bind().dialect.name
    stmt: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(PlanTrial).values(**values)
    result = session.execute(stmt.on_conflict_do_nothing(index_elements=["subject_kind", "subject_ref"]))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release_offer(session: Session, checkout_session_id: str) -> bool:
    """A trial checkout expired unpaid: its reservation is given back."""
    result = session.execute(
        delete(PlanTrial).where(
            PlanTrial.checkout_session_id == checkout_session_id, PlanTrial.status == "offered"
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def trial_view(
    session: Session, account: BillingAccount, now: datetime, catalog: Catalog
) -> TrialView | None:
    """The trial running now, if any: what the portal and entitlements say about it."""
    if account.kind not in (AccountKind.PERSONAL, AccountKind.SERVER):
        return None
    row = existing(session, account)
    if row is None or row.status != "active" or row.trial_end is None or as_utc(row.trial_end) <= now:
        return None
    plan = catalog.plans.get(row.plan_id)
    free = catalog.free_plan(str(account.kind))
    return TrialView(
        plan=row.plan_id,
        plan_name=plan.name if plan else row.plan_id,
        ends_at=as_utc(row.trial_end),
        credits=plan.trial.credits if plan and plan.trial else 0,
        card_on_file=row.card_on_file,
        then=(plan.name if plan else row.plan_id) if row.card_on_file else (free.name if free else "free"),
    )


def trial_offer(session: Session, account: BillingAccount, plan: Plan) -> bool:
    """Whether the account may start this plan's trial now."""
    if plan.trial is None or plan.scope != account.kind:
        return False
    row = existing(session, account)
    return row is None or row.status == "offered"


__all__ = [
    "NoTrial",
    "TrialAlreadyUsed",
    "existing",
    "plan_trial",
    "refuse_if_used",
    "release_offer",
    "reserve",
    "subject",
    "trial_offer",
    "trial_view",
]
