"""The account's one plan subscription, derived from the mirror of its Stripe subscriptions.

Webhooks (and reconcile, and the import of today's data) keep `StripeSubscription`, one row per
Stripe subscription with the newest state applied to it; `refresh_plan_subscription` derives the
account's `PlanSubscription` from those rows and the invoices' failures, which is what
the plan rules (`plans`) read.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.catalog.service import Catalog, Plan, PlanPrice
from chronote_billing.core.clock import as_utc
from chronote_billing.plans.models import PlanSubscription

from .models import StripeInvoice, StripeSubscription
from .timestamps import from_ts

LIVE_STATUSES = ("active", "trialing", "past_due", "unpaid", "incomplete", "paused")
ENDED_STATUSES = ("canceled", "incomplete_expired")
# The order of a subscription's states within one period, for events of the same second.
STATUS_RANK = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "past_due": 3,
    "unpaid": 4,
    "paused": 4,
    "canceled": 9,
    "incomplete_expired": 9,
}


def plan_for_lookup_key(catalog: Catalog, lookup_key: str | None) -> tuple[Plan, PlanPrice] | None:
    """The catalog plan and price a Stripe price stands for, by its lookup key."""
    if not lookup_key:
        return None
    found = catalog.price_by_lookup_key(lookup_key)
    if isinstance(found, PlanPrice):
        return catalog.plans[found.plan_id], found
    return None


def refresh_plan_subscription(session: Session, account_id: str) -> PlanSubscription | None:
    """Derive the account's one plan subscription from the newest state of each subscription.

    A live subscription wins over ended ones (the newest live one if Stripe somehow has two);
    with none live, the most recently ended one is kept so the history shows why.
    """
    subs = list(
        session.execute(
            select(StripeSubscription).where(StripeSubscription.account_id == account_id)
        ).scalars()
    )
    if not subs:
        return None
    chosen = max(subs, key=lambda s: (s.status in LIVE_STATUSES and not s.deleted, s.stripe_created, s.id))
    failures = [
        as_utc(f)
        for f in session.execute(
            select(StripeInvoice.first_failed_at).where(
                StripeInvoice.subscription_id == chosen.id,
                StripeInvoice.status == "failed",
                StripeInvoice.first_failed_at.is_not(None),
            )
        ).scalars()
        if f is not None
    ]
    failed_at = min(failures) if failures else None
    status = chosen.status
    # Stripe's subscription.updated may still be on its way after an invoice event.
    if status in ("active", "trialing") and failed_at is not None:
        status = "past_due"
    elif status == "past_due" and failed_at is None:
        paid_since = session.execute(
            select(StripeInvoice.id).where(
                StripeInvoice.subscription_id == chosen.id,
                StripeInvoice.status == "paid",
                StripeInvoice.paid_at >= from_ts(chosen.last_event_created),
            )
        ).first()
        if paid_since is not None:
            status = "active"
    row = session.execute(
        select(PlanSubscription).where(PlanSubscription.account_id == account_id).with_for_update()
    ).scalar()
    values = dict(
        stripe_subscription_id=chosen.id,
        stripe_customer_id=chosen.customer_id,
        plan_id=chosen.plan_id,
        price_lookup_key=chosen.price_lookup_key,
        interval=chosen.interval,
        status=status,
        current_period_start=chosen.current_period_start,
        current_period_end=chosen.current_period_end,
        cancel_at_period_end=chosen.cancel_at_period_end,
        payment_failed_at=failed_at if status == "past_due" else None,
        last_event_created=chosen.last_event_created,
        updated_at=from_ts(chosen.last_event_created) if chosen.last_event_created else chosen.updated_at,
        pending_plan_id=chosen.pending_plan_id,
    )
    if row is None:
        row = PlanSubscription(account_id=account_id, **values)
        session.add(row)
    else:
        for key, value in values.items():
            setattr(row, key, value)
    session.flush()
    return row
