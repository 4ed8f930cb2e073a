"""Following a trial through Stripe (decision 0044): the trial's row in `plans.trials` moves with
its subscription's state, and the subscription's first invoice, for nothing, starts it.

Everything here runs inside the caller's transaction and calls no network.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.catalog.service import Catalog, Plan
from chronote_billing.integrations.stripe.objects import Invoice, InvoiceLine, Subscription
from chronote_billing.plans.models import PlanTrial
from chronote_billing.plans.trials import existing, subject

from .timestamps import from_ts

TRIAL_META = "chronote_trial_plan"


def observe_subscription(
    session: Session, account: BillingAccount, sub: Subscription, status: str, now: datetime
) -> str | None:
    """Follow a trial subscription's state; returns a note when something changed."""
    plan_id = sub.metadata.get(TRIAL_META)
    if not plan_id or account.kind not in (AccountKind.PERSONAL, AccountKind.SERVER):
        return None
    row = existing(session, account, lock=True)
    if row is None:
        kind, ref = subject(account)
        session.execute(
            insert(PlanTrial).values(
                subject_kind=kind,
                subject_ref=ref,
                account_id=account.id,
                plan_id=plan_id,
                status="offered",
                card_on_file=False,
                created_at=now,
                updated_at=now,
            )
        )
        row = existing(session, account, lock=True)
        assert row is not None
    if row.subscription_id not in (None, sub.id):
        return f"trial of {row.subject_kind} already taken by subscription {row.subscription_id}"
    row.subscription_id = sub.id
    if sub.trial_start:
        row.trial_start = from_ts(sub.trial_start)
    if sub.trial_end:
        row.trial_end = from_ts(sub.trial_end)
    row.card_on_file = bool(sub.default_payment_method)
    new = {"trialing": "active", "active": "converted", "past_due": "converted", "canceled": "ended"}.get(
        status
    )
    order = {"offered": 0, "active": 1, "converted": 2, "ended": 3}
    # Forward only; a trial that converted stays converted when the paid plan later ends.
    if new is not None and order[new] > order[row.status] and row.status != "converted":
        row.status = new
        row.updated_at = now
        return f"trial {new}"
    return None


def trial_invoice_plan(catalog: Catalog, inv: Invoice, line: InvoiceLine | None) -> Plan | None:
    """The plan whose trial this invoice starts: a subscription's first invoice, for nothing, of
    a subscription made by a trial checkout."""
    plan_id = inv.subscription_metadata.get(TRIAL_META)
    if not plan_id or inv.billing_reason != "subscription_create":
        return None
    if line is None or line.amount != 0:
        return None
    plan = catalog.plans.get(plan_id)
    return plan if plan is not None and plan.trial is not None else None


__all__ = ["TRIAL_META", "observe_subscription", "trial_invoice_plan"]
