"""Changing the plan of an account's one subscription (0018, 0040), previewing the change first,
and cancelling at the period end (or undoing that)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal, require_manage
from chronote_billing.accounts.models import AccountKind
from chronote_billing.catalog.service import Plan
from chronote_billing.core.clock import as_utc
from chronote_billing.integrations.stripe.client import call, expandable_id, idempotent, stripe_key, to_dict
from chronote_billing.integrations.stripe.objects import Invoice, Subscription
from chronote_billing.plans.models import PlanSubscription
from chronote_billing.plans.proration import PlanChangeDecision, change_moment, decide_plan_change
from chronote_billing.plans.service import plan_subscription

from .dependencies import BillingDependencies, get_account
from .errors import NoSubscription, PlanChangeNotSupported, organization_plan_refused
from .operation import StripeWrite
from .plan_subscriptions import ENDED_STATUSES
from .schemas import CancelView, PlanChangePreview, PlanChangeView
from .timestamps import from_ts, to_ts


def change_plan(
    billing: BillingDependencies,
    principal: Principal,
    account_id: str,
    *,
    plan_id: str,
    interval: str,
    idempotency_key: str,
) -> PlanChangeView:
    """Change the plan of the account's one subscription (0018): an upgrade now with a prorated
    invoice, a downgrade at the end of the period. Never a second subscription."""
    write = StripeWrite.of(
        "plan_change", account_id, idempotency_key, {"plan": plan_id, "interval": interval}, PlanChangeView
    )
    catalog = billing.catalog

    def check(session: Session) -> tuple[PlanChangeView | None, PlanSubscription | None, Plan | None]:
        account = get_account(session, account_id)
        require_manage(session, principal, account)
        first = write.first_answer(session)
        if first is not None:
            return first, None, None
        target = _target_plan(billing, account.kind, plan_id, interval, refuse_free=True)
        sub = _live_subscription(
            session,
            account.id,
            f"Account '{account.id}' has no subscription to change; start a checkout instead.",
        )
        session.expunge(sub)
        return None, sub, target

    first, sub, target = billing.db.read(check)
    if first is not None:
        return first
    assert sub is not None and target is not None
    current = catalog.plan(sub.plan_id)
    now = billing.clock.now()
    period_start, period_end = as_utc(sub.current_period_start), as_utc(sub.current_period_end)
    decision = decide_plan_change(
        current, sub.interval, sub.pending_plan_id, target, interval, period_start, period_end, now
    )
    answer = PlanChangeView(
        account_id=account_id,
        subscription_id=sub.stripe_subscription_id,
        from_plan=current.id,
        to_plan=target.id,
        interval=interval,
        effective="unchanged",
        effective_at=now,
        invoice=None,
    )
    if decision.kind == "unchanged":
        return write.answered(billing.db, answer, billing.clock.now())
    if decision.kind == "unsupported":
        raise PlanChangeNotSupported(decision.message, field="interval")

    stripe_sub = to_dict(
        call(
            "read the subscription",
            lambda: billing.client.v1.subscriptions.retrieve(sub.stripe_subscription_id),
        )
    )
    items = (stripe_sub.get("items") or {}).get("data") or []
    if not items:
        raise PlanChangeNotSupported("The Stripe subscription has no item to change.")
    price_id = billing.price_id(target.price(interval).lookup_key)
    body, changed_at = subscription_update(
        decision, current, target, interval, items[0]["id"], price_id, sub, now
    )
    updated = to_dict(
        call(
            "change the plan",
            lambda: billing.client.v1.subscriptions.update(
                sub.stripe_subscription_id,
                params=body,  # type: ignore[arg-type]
                options=idempotent(stripe_key("plan-change", account_id, write.key)),
            ),
        )
    )
    upgrade = decision.effective == "now"
    invoice_id = expandable_id(updated.get("latest_invoice")) if upgrade else None
    # The plan in force shows at once (decision 0040); the webhooks find it done.
    invoice = (
        to_dict(call("read the invoice", lambda: billing.client.v1.invoices.retrieve(invoice_id)))
        if invoice_id
        else None
    )
    billing.webhooks.apply_fetched(
        subscription=Subscription.model_validate(updated),
        invoice=Invoice.model_validate(invoice) if invoice is not None else None,
    )
    answer = answer.model_copy(
        update={
            "effective": "now" if upgrade else "period_end",
            "effective_at": changed_at if upgrade else period_end,
            "invoice": invoice_id,
        }
    )
    return write.answered(billing.db, answer, billing.clock.now())


def subscription_update(
    decision: PlanChangeDecision,
    current: Plan,
    target: Plan,
    interval: str,
    item_id: str,
    price_id: str,
    sub: PlanSubscription,
    now: datetime,
) -> tuple[dict[str, Any], datetime]:
    """What Stripe is asked to change, and when the change counts from. An upgrade is invoiced
    now, prorated; the metadata lets the invoice's webhook grant the prorated credits (0018). A
    downgrade changes the price now (so the renewal charges it) with no proration, and names the
    plan paid for, which stays in force until the period ends."""
    period_start, period_end = as_utc(sub.current_period_start), as_utc(sub.current_period_end)
    upgrade = decision.effective == "now"
    changed_at = decision.effective_at if upgrade else change_moment(now, period_start, period_end)
    metadata: dict[str, str] = {"chronote_plan_id": target.id, "chronote_interval": interval}
    body: dict[str, Any] = {"items": [{"id": item_id, "price": price_id}]}
    if upgrade:
        metadata.update(
            chronote_previous_plan_id=current.id,
            chronote_change_kind=decision.kind,
            chronote_changed_at=str(to_ts(changed_at)),
            chronote_period_start=str(to_ts(period_start)),
            chronote_period_end=str(to_ts(period_end)),
            chronote_downgrade_from="",
            chronote_downgrade_until="",
        )
        body.update(proration_behavior="always_invoice", cancel_at_period_end=False)
        if decision.kind != "interval":
            body["proration_date"] = to_ts(changed_at)
    else:
        is_cancel_of_pending = decision.kind == "cancel_pending"
        metadata.update(
            chronote_previous_plan_id="",
            chronote_change_kind="" if is_cancel_of_pending else "downgrade",
            chronote_downgrade_from="" if is_cancel_of_pending else current.id,
            chronote_downgrade_until="" if is_cancel_of_pending else str(to_ts(period_end)),
        )
        body.update(proration_behavior="none")
    body["metadata"] = metadata
    return body, changed_at


def preview_plan_change(
    billing: BillingDependencies, principal: Principal, account_id: str, *, plan_id: str, interval: str
) -> PlanChangePreview:
    """What changing to ``plan_id`` would do, before it is done: the plan in force, when the
    change applies, and the amount charged at once (decision 0040). Nothing is written."""

    def work(session: Session) -> PlanChangePreview:
        account = get_account(session, account_id)
        require_manage(session, principal, account)
        target = _target_plan(billing, account.kind, plan_id, interval)
        sub = _live_subscription(
            session,
            account.id,
            f"{account.display_name} has no subscription to change; choose a plan to subscribe.",
        )
        current = billing.catalog.plan(sub.plan_id)
        decision = decide_plan_change(
            current,
            sub.interval,
            sub.pending_plan_id,
            target,
            interval,
            as_utc(sub.current_period_start),
            as_utc(sub.current_period_end),
            billing.clock.now(),
        )
        return PlanChangePreview(
            account_id=account.id,
            from_plan=current.id,
            from_plan_name=current.name,
            from_interval=sub.interval,
            to_plan=target.id,
            to_plan_name=target.name,
            interval=interval,
            kind=decision.kind,
            effective=decision.effective,
            effective_at=decision.effective_at,
            amount_due=decision.amount_due,
            currency=decision.currency,
            message=decision.message,
        )

    return billing.db.read(work)


def cancel(
    billing: BillingDependencies,
    principal: Principal,
    account_id: str,
    *,
    idempotency_key: str,
    resume: bool = False,
) -> CancelView:
    """Cancel at period end (the plan stays until then), or undo that."""
    write = StripeWrite.of("cancel", account_id, idempotency_key, {"resume": resume}, CancelView)

    def check(session: Session) -> tuple[CancelView | None, PlanSubscription | None]:
        account = get_account(session, account_id)
        require_manage(session, principal, account)
        first = write.first_answer(session)
        if first is not None:
            return first, None
        sub = _live_subscription(
            session, account.id, f"Account '{account.id}' has no subscription to cancel."
        )
        session.expunge(sub)
        return None, sub

    first, sub = billing.db.read(check)
    if first is not None:
        return first
    assert sub is not None
    updated = to_dict(
        call(
            "cancel the subscription" if not resume else "resume the subscription",
            lambda: billing.client.v1.subscriptions.update(
                sub.stripe_subscription_id,
                params={"cancel_at_period_end": not resume},
                options=idempotent(stripe_key("cancel", account_id, write.key)),
            ),
        )
    )
    items = (updated.get("items") or {}).get("data") or [{}]
    end_ts = items[0].get("current_period_end") or updated.get("current_period_end")
    answer = CancelView(
        account_id=account_id,
        subscription_id=sub.stripe_subscription_id,
        cancel_at_period_end=bool(updated.get("cancel_at_period_end", not resume)),
        ends_at=from_ts(end_ts) if end_ts else sub.current_period_end,
    )
    return write.answered(billing.db, answer, billing.clock.now())


def _target_plan(
    billing: BillingDependencies, kind: str, plan_id: str, interval: str, refuse_free: bool = False
) -> Plan:
    """The plan asked for, if the account's kind may have it at this interval."""
    if kind == AccountKind.ORGANIZATION:
        raise organization_plan_refused(billing.catalog, plan_id, kind)
    target = billing.catalog.plan_for_scope(plan_id, kind)
    if refuse_free and target.is_free:
        raise PlanChangeNotSupported(
            "To go back to the free plan, cancel the subscription; it ends with the period.", field="plan"
        )
    target.price(interval)
    return target


def _live_subscription(session: Session, account_id: str, refusal: str) -> PlanSubscription:
    sub = plan_subscription(session, account_id)
    if sub is None or sub.status in ENDED_STATUSES:
        raise NoSubscription(refusal, account_id=account_id)
    return sub
