"""`customer.subscription.created|updated|deleted`: the mirror of each Stripe subscription,
applied in Stripe's order and never backwards (0018), and the account's plan subscription
derived from it.

Each subscription keeps the ordering key of the newest event applied to it (`created`, then the
period start, the status's rank and the event id): an older event is stored and not applied, a
deletion is final, and a same-second tie is settled by Stripe's current state, read beforehand.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import select

from chronote_billing.catalog.service import Catalog, Plan
from chronote_billing.integrations.stripe.objects import Subscription

from .. import trials
from ..models import StripeSubscription
from ..plan_subscriptions import ENDED_STATUSES, STATUS_RANK, plan_for_lookup_key, refresh_plan_subscription
from ..timestamps import from_ts
from .context import Applying, Hints

DELETED = "customer.subscription.deleted"


def plan_in_force(catalog: Catalog, sub: Subscription, plan: Plan, status: str) -> tuple[str, str | None]:
    """(the plan in force, the plan pending at the period end). A downgrade keeps the plan paid
    for until the period ends (0018): our plan change writes on the subscription the plan it came
    from and until when."""
    until, previous = (
        sub.metadata.get("chronote_downgrade_until"),
        sub.metadata.get("chronote_downgrade_from"),
    )
    if not (previous and until and until.isdigit() and int(until) == int(sub.period_end or 0)):
        return plan.id, None
    previous_plan = catalog.plans.get(previous)
    if (
        status not in ENDED_STATUSES
        and previous_plan is not None
        and previous_plan.rank > plan.rank
        and previous_plan.scope == plan.scope
    ):
        return previous_plan.id, plan.id
    return plan.id, None


def on_subscription(applying: Applying, sub: Subscription) -> None:
    services, session, event, hints, result = (
        applying.services,
        applying.session,
        applying.event,
        applying.hints,
        applying.result,
    )
    account = applying.account(sub)
    if account is None:
        return
    found = plan_for_lookup_key(services.catalog, sub.lookup_key)
    if found is None:
        result.ignored(f"subscription {sub.id} has no catalog plan price ({sub.lookup_key!r})")
        return
    plan, plan_price = found
    if plan.scope != account.kind:
        result.ignored(f"plan {plan.id} is not for a {account.kind} account; subscription {sub.id} ignored")
        return
    start_ts, end_ts = sub.period_start, sub.period_end
    if not start_ts or not end_ts:
        result.ignored(f"subscription {sub.id} carries no current period")
        return
    status = sub.status or "incomplete"
    deleted = event.type == DELETED
    if deleted and status not in ENDED_STATUSES:
        status = "canceled"
    rank = f"{int(start_ts):012d}:{STATUS_RANK.get(status, 5)}:{event.id}"

    row = session.execute(
        select(StripeSubscription).where(StripeSubscription.id == sub.id).with_for_update()
    ).scalar()
    if row is not None:
        if row.deleted:
            result.stale(f"subscription {sub.id} was already deleted; a deletion is final")
            return
        if not deleted and event.created == row.last_event_created and hints.subscription is not None:
            # A same-second tie: Stripe's current state of the subscription decides.
            on_subscription(replace(applying, hints=Hints(tie=True)), hints.subscription)
            return
        if (
            not deleted
            and not hints.tie
            and (event.created, rank) <= (row.last_event_created, row.last_event_rank)
        ):
            result.stale(f"older than the newest event applied to {sub.id}; stored, not applied")
            return

    in_force, pending = plan_in_force(services.catalog, sub, plan, status)
    now = services.clock.now()
    values = dict(
        account_id=account.id,
        customer_id=sub.customer or "",
        status=status,
        plan_id=in_force,
        price_lookup_key=plan_price.lookup_key,
        interval=plan_price.interval,
        pending_plan_id=pending,
        current_period_start=from_ts(start_ts),
        current_period_end=from_ts(end_ts),
        cancel_at_period_end=sub.cancels,
        stripe_created=int(sub.created or event.created),
        last_event_created=max(event.created, row.last_event_created if row else 0),
        last_event_rank=rank,
        deleted=deleted,
        updated_at=now,
    )
    if row is None:
        session.add(StripeSubscription(id=sub.id, **values))
        session.flush()
    else:
        for key, value in values.items():
            setattr(row, key, value)
    trial_note = trials.observe_subscription(session, account, sub, status, now)
    if trial_note:
        result.note(trial_note)
    refresh_plan_subscription(session, account.id)
