"""What a payment grants, decided from facts: pure functions, no database, no Stripe.

The webhook handlers and the auto-recharge purchase gather the facts (the plan or pack, the
invoice's period, the moment of payment), ask these rules what to grant, and hand the answer to
`purchases.issue_purchase`, which writes it once per cause. Refunds and disputes are decided here
too: the share of a purchase a refund takes back, and the order a dispute's states move in.
Credits are integers and never pass through a float.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from chronote_billing.catalog.service import CreditPack, Plan
from chronote_billing.core.clock import as_utc
from chronote_billing.plans.periods import add_months, allowance_slice
from chronote_billing.plans.proration import upgrade_credits
from chronote_billing.plans.rules import ALLOWANCE_PRIORITY

PACK_PRIORITY = 50


@dataclass(frozen=True)
class PurchaseGrant:
    """Credits bought with money: how many, from when until when, and the cause that keys them
    (a second grant of the same cause is never made)."""

    cause_key: str
    kind: str  # pack, allowance, upgrade
    product_ref: str  # the plan or pack id
    amount: int  # millicredits
    source: str  # the ledger grant's source: purchase, plan_allowance, trial
    cause_type: str  # invoice, checkout_session, payment_intent
    cause_id: str
    effective_at: datetime
    expires_at: datetime
    payment_intent: str | None
    invoice_id: str | None
    priority: int
    description: str


def pack_grant(
    pack: CreditPack,
    *,
    at: datetime,
    cause_type: str,
    cause_id: str,
    payment_intent: str | None,
    invoice_id: str | None,
) -> PurchaseGrant:
    """A paid credit pack: its credits, usable for its months from payment. One grant per
    payment: keyed by the payment intent when there is one, so a checkout, an off-session
    purchase and their webhooks all name the same grant."""
    expires = add_months(at, pack.expires_after_months)
    return PurchaseGrant(
        cause_key=f"pack:{payment_intent}" if payment_intent else f"{cause_type}:{cause_id}:pack",
        kind="pack",
        product_ref=pack.id,
        amount=pack.millicredits,
        source="purchase",
        cause_type=cause_type,
        cause_id=cause_id,
        effective_at=at,
        expires_at=expires,
        payment_intent=payment_intent,
        invoice_id=invoice_id,
        priority=PACK_PRIORITY,
        description=f"{pack.name} pack, usable until {expires.date()}",
    )


def _plan_grant(
    invoice_id: str,
    what: str,
    plan: Plan,
    amount: int,
    source: str,
    start: datetime,
    end: datetime,
    description: str,
) -> PurchaseGrant:
    """Credits a plan's invoice pays for, keyed by the invoice and what it grants."""
    return PurchaseGrant(
        cause_key=f"invoice:{invoice_id}:{what}",
        kind="upgrade" if what == "upgrade" else "allowance",
        product_ref=plan.id,
        amount=amount,
        source=source,
        cause_type="invoice",
        cause_id=invoice_id,
        effective_at=start,
        expires_at=end,
        payment_intent=None,
        invoice_id=invoice_id,
        priority=ALLOWANCE_PRIORITY,
        description=description,
    )


def allowance_grant(
    plan: Plan, invoice_id: str, period_start: datetime, period_end: datetime
) -> PurchaseGrant:
    """A paid plan invoice's included credits for the first month of its period. A yearly price
    still issues its credits monthly (0002): the other months are issued on first need."""
    _, start, end = allowance_slice(period_start, period_end, period_start)
    description = f"{plan.name} allowance {start.date()} to {end.date()}"
    return _plan_grant(
        invoice_id, "allowance", plan, plan.included_millicredits, "plan_allowance", start, end, description
    )


def trial_grant(
    plan: Plan, invoice_id: str, trial_start: datetime, trial_end: datetime
) -> PurchaseGrant | None:
    """A trial's own credits, spendable until it ends (0044); never the plan's full allowance.
    None when the trial comes without credits."""
    if plan.trial is None or plan.trial.credits <= 0:
        return None
    description = f"{plan.name} trial credits until {trial_end.date()}"
    return _plan_grant(
        invoice_id, "trial", plan, plan.trial.millicredits, "trial", trial_start, trial_end, description
    )


def upgrade_grant(
    old: Plan,
    new: Plan,
    invoice_id: str,
    *,
    changed_at: datetime,
    period_start: datetime,
    period_end: datetime,
) -> PurchaseGrant | None:
    """An upgrade's prorated difference of included credits for the rest of the current monthly
    allowance slice (0018), expiring with it; None when nothing is left to add."""
    amount, slice_end = upgrade_credits(
        old, new, changed_at=changed_at, period_start=period_start, period_end=period_end
    )
    if amount <= 0:
        return None
    description = f"Upgrade {old.name} to {new.name}: prorated allowance until {slice_end.date()}"
    return _plan_grant(
        invoice_id, "upgrade", new, amount, "plan_allowance", changed_at, slice_end, description
    )


def effective_from(grant: PurchaseGrant, now: datetime) -> datetime | None:
    """When a grant delivered `now` starts counting: its own start, but never later than now
    (a late webhook still makes the credits usable at once). None when its period already ended:
    nothing is granted then."""
    expires, effective = as_utc(grant.expires_at), as_utc(grant.effective_at)
    if expires <= now:
        return None
    return min(effective, now) if effective < expires else now


# ---------------------------------------------------------------------- refunds and disputes

# A dispute only moves forward: none, then open, then won or lost (both final).
DISPUTE_ORDER = {"none": 0, "open": 1, "won": 2, "lost": 2}


def refund_target(credits: int, charge_amount: int, refunded: int) -> int:
    """The credits a purchase loses to a charge's cumulative refunds: the refunded fraction of
    what it bought, rounded down, never more than it bought."""
    if charge_amount <= 0 or refunded <= 0:
        return 0
    return min(credits, credits * refunded // charge_amount)


def refunded_share(part: int, whole: int) -> str:
    """'all' or a whole percentage, rounded down (what was refunded, in words)."""
    if whole <= 0 or part >= whole:
        return "all"
    return f"{part * 100 // whole}%"


def dispute_state(event_type: str, status: str | None) -> str:
    """The state a dispute event reports: a new dispute is open; a closed one won or lost."""
    if event_type == "charge.dispute.created":
        return "open"
    return {"won": "won", "lost": "lost"}.get(str(status), "open")


def dispute_moves_forward(current: str, new: str) -> bool:
    return DISPUTE_ORDER[new] > DISPUTE_ORDER.get(current, 0)
