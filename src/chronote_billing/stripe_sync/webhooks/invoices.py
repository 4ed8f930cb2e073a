"""`invoice.paid` and `invoice.payment_failed`: paid is final, the first failure starts the
7-day grace, and a paid invoice grants what it paid for, once (ledger keys derived from the
invoice id): a plan period's allowance, a trial's credits, an upgrade's prorated difference, or a
credit pack bought on an invoice."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.catalog.service import Plan
from chronote_billing.core.clock import as_utc
from chronote_billing.integrations.stripe.objects import Invoice, InvoiceLine

from .. import trials
from ..grant_rules import PurchaseGrant, allowance_grant, pack_grant, trial_grant, upgrade_grant
from ..metadata import PACK_CHECKOUT
from ..models import StripeInvoice, StripeSubscription
from ..plan_subscriptions import plan_for_lookup_key, refresh_plan_subscription
from ..timestamps import from_ts
from .context import Applying

# Invoices of a subscription's periods, which grant the period's allowance.
PERIOD_REASONS = ("subscription_create", "subscription_cycle", "subscription", "subscription_threshold")


def on_invoice_paid(applying: Applying, inv: Invoice) -> None:
    account = applying.account(inv)
    if account is None:
        return
    paid_ts = inv.paid_at or applying.event.created
    row = _invoice_row(applying, inv, account.id)
    row.status = "paid"
    row.amount_paid = int(inv.amount_paid or 0)
    row.paid_at = row.paid_at or (from_ts(paid_ts) if paid_ts else applying.services.clock.now())
    applying.session.flush()
    if inv.subscription is None:
        applying.grant(account, _pack(applying, inv, from_ts(paid_ts)))
        return
    reason = inv.billing_reason or ""
    if reason == "subscription_update":
        applying.grant(account, upgrade(applying, inv))
    elif reason in PERIOD_REASONS:
        applying.grant(account, allowance(applying, account, inv, inv.subscription))
    else:
        applying.result.note(f"invoice {inv.id} ({reason or 'manual'}) grants nothing")
    refresh_plan_subscription(applying.session, account.id)


def on_invoice_failed(applying: Applying, inv: Invoice) -> None:
    account = applying.account(inv)
    if account is None:
        return
    row = _invoice_row(applying, inv, account.id)
    failed_at = from_ts(applying.event.created)
    if row.status != "paid":
        row.status = "failed"
        row.first_failed_at = (
            min(as_utc(row.first_failed_at), failed_at) if row.first_failed_at else failed_at
        )
        applying.result.note(f"payment failed; the 7-day grace runs from {row.first_failed_at.isoformat()}")
    else:
        applying.result.stale(f"invoice {inv.id} is already paid")
    applying.session.flush()
    refresh_plan_subscription(applying.session, account.id)


def _invoice_row(applying: Applying, inv: Invoice, account_id: str) -> StripeInvoice:
    session, now = applying.session, applying.services.clock.now()
    row = session.execute(select(StripeInvoice).where(StripeInvoice.id == inv.id).with_for_update()).scalar()
    if row is None:
        row = StripeInvoice(
            id=inv.id,
            account_id=account_id,
            subscription_id=inv.subscription,
            billing_reason=inv.billing_reason,
            status="open",
            amount_paid=0,
            first_failed_at=None,
            paid_at=None,
            updated_at=now,
        )
        session.add(row)
    row.updated_at = now
    return row


def _pack(applying: Applying, inv: Invoice, paid_at: datetime) -> PurchaseGrant | None:
    """An invoice of no subscription: a credit pack bought on it (a taxed auto-recharge), or the
    receipt of a pack checkout, which grants nothing (its checkout grants the pack, 0043)."""
    if inv.metadata.get("chronote_kind") == PACK_CHECKOUT:
        applying.result.note(
            f"invoice {inv.id} is the receipt of a pack checkout; its checkout grants the pack"
        )
        return None
    pack_id = inv.metadata.get("chronote_pack_id")
    if not pack_id:
        applying.result.ignored(f"invoice {inv.id} is neither a plan nor a pack invoice")
        return None
    pack = applying.services.catalog.credit_packs.get(pack_id)
    if pack is None:
        applying.result.ignored(f"invoice {inv.id} names unknown pack {pack_id!r}")
        return None
    return pack_grant(
        pack, at=paid_at, cause_type="invoice", cause_id=inv.id, payment_intent=None, invoice_id=inv.id
    )


def allowance(applying: Applying, account: BillingAccount, inv: Invoice, sub_id: str) -> PurchaseGrant | None:
    """A period invoice's allowance, or its trial's credits when it starts a trial."""
    line = inv.subscription_line()
    plan = _invoice_plan(applying, inv, line, sub_id)
    if plan is None:
        applying.result.ignored(f"invoice {inv.id}: no catalog plan found; no allowance")
        return None
    if plan.scope != account.kind or plan.included_credits <= 0:
        applying.result.ignored(
            f"invoice {inv.id}: plan {plan.id} grants nothing to a {account.kind} account"
        )
        return None
    period = line.period if line is not None else None
    start_ts = (period.start if period else None) or inv.period_start
    end_ts = (period.end if period else None) or inv.period_end
    trial_plan = trials.trial_invoice_plan(applying.services.catalog, inv, line)
    if trial_plan is not None and start_ts and end_ts:
        return trial_grant(trial_plan, inv.id, from_ts(start_ts), from_ts(end_ts))
    if not start_ts or not end_ts or int(end_ts) <= int(start_ts):
        sub_row = applying.session.get(StripeSubscription, sub_id)
        if sub_row is None:
            applying.result.ignored(f"invoice {inv.id}: no service period")
            return None
        start, end = sub_row.current_period_start, sub_row.current_period_end
    else:
        start, end = from_ts(start_ts), from_ts(end_ts)
    return allowance_grant(plan, inv.id, start, end)


def upgrade(applying: Applying, inv: Invoice) -> PurchaseGrant | None:
    """The prorated difference of included credits for the rest of the current allowance
    period (0018), from what our plan change wrote on the subscription."""
    meta, plans = inv.subscription_metadata, applying.services.catalog.plans
    new, old = (
        plans.get(meta.get("chronote_plan_id", "")),
        plans.get(meta.get("chronote_previous_plan_id", "")),
    )
    moments = _moments(meta, "chronote_changed_at", "chronote_period_start", "chronote_period_end")
    if new is None or old is None or moments is None:
        applying.result.ignored(
            f"invoice {inv.id}: plan change not made through Chronote; no prorated credits"
        )
        return None
    changed, start, end = moments
    grant = upgrade_grant(old, new, inv.id, changed_at=changed, period_start=start, period_end=end)
    if grant is None:
        applying.result.note(f"invoice {inv.id}: upgrade {old.id} to {new.id} leaves no credits to add")
    return grant


def _moments(meta: dict[str, str], *keys: str) -> tuple[datetime, ...] | None:
    try:
        return tuple(from_ts(int(meta[key])) for key in keys)
    except (KeyError, ValueError):
        return None


def _invoice_plan(applying: Applying, inv: Invoice, line: InvoiceLine | None, sub_id: str) -> Plan | None:
    """The plan an invoice pays for: its line's price, else what our checkout wrote on the
    subscription, else the subscription we mirror."""
    catalog = applying.services.catalog
    found = plan_for_lookup_key(catalog, line.lookup_key if line else None)
    if found:
        return found[0]
    plan_id = inv.subscription_metadata.get("chronote_plan_id")
    if plan_id and plan_id in catalog.plans:
        return catalog.plans[plan_id]
    row = applying.session.get(StripeSubscription, sub_id)
    if row is not None:
        return catalog.plans.get(row.pending_plan_id or row.plan_id)
    return None
