"""`charge.refunded` and `charge.dispute.created|closed`: the charge's cumulative refunded amount
and its dispute state only move forward, and the purchases it paid for follow them (refunded
share taken back, frozen while disputed, taken back when lost). A refund or dispute that arrives
before the purchase it concerns is applied when the purchase is recorded."""

from __future__ import annotations

from sqlalchemy import select

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.integrations.stripe.objects import Charge, Dispute

from ..grant_rules import dispute_moves_forward, dispute_state
from ..models import StripeCharge
from ..purchases import apply_charge_effects
from .context import Applying


def on_charge_refunded(applying: Applying, ch: Charge) -> None:
    result = applying.result
    charge = _charge_row(applying, ch)
    refunded = int(ch.amount_refunded or 0)
    if refunded <= charge.amount_refunded:
        result.stale(f"charge {ch.id}: refunds up to {charge.amount_refunded} already applied")
        return
    charge.amount_refunded = refunded
    if not _follow(applying, charge):
        result.note(f"charge {ch.id}: refund recorded; no purchase of ours yet, applied when it arrives")


def on_dispute(applying: Applying, dp: Dispute) -> None:
    result = applying.result
    if not dp.charge:
        result.ignored("dispute names no charge")
        return
    # What a dispute says of its charge: its amount and payment, never its customer.
    disputed = Charge(id=dp.charge, payment_intent=dp.payment_intent, amount=dp.amount)
    charge = _charge_row(applying, disputed)
    new_state = dispute_state(applying.event.type, dp.status)
    if not dispute_moves_forward(charge.dispute_status, new_state):
        result.stale(f"charge {dp.charge}: dispute already {charge.dispute_status}")
        return
    charge.dispute_status = new_state
    if not _follow(applying, charge):
        result.note(f"charge {dp.charge}: dispute recorded; no purchase of ours yet")


def _follow(applying: Applying, charge: StripeCharge) -> bool:
    """The purchases the charge paid for follow its refunds and dispute; False: none yet."""
    applying.session.flush()
    services = applying.services
    return apply_charge_effects(
        applying.session, services.ledger, charge, applying.result.notes, catalog=services.catalog
    )


def _charge_row(applying: Applying, ch: Charge) -> StripeCharge:
    session, hints, result, now = (
        applying.session,
        applying.hints,
        applying.result,
        applying.services.clock.now(),
    )
    charge_id = ch.id
    row = session.execute(select(StripeCharge).where(StripeCharge.id == charge_id).with_for_update()).scalar()
    pi = ch.payment_intent or hints.payment_intent
    if row is None:
        row = StripeCharge(
            id=charge_id,
            account_id=None,
            payment_intent_id=pi,
            invoice_id=hints.invoice,
            amount=int(ch.amount or 0),
            amount_refunded=0,
            dispute_status="none",
            updated_at=now,
        )
        session.add(row)
    else:
        row.payment_intent_id = row.payment_intent_id or pi
        row.invoice_id = row.invoice_id or hints.invoice
        if ch.amount and (not row.amount or ch.customer is not None):
            row.amount = int(ch.amount)
        row.updated_at = now
    if ch.customer and row.account_id is None:
        row.account_id = session.execute(
            select(BillingAccount.id).where(BillingAccount.stripe_customer_id == ch.customer)
        ).scalar()
    if row.account_id is None and ch.customer:
        result.note(f"charge {charge_id}: customer {ch.customer} is not ours")
    result.account_id = row.account_id
    session.flush()
    return row
