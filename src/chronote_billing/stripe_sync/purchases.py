"""Credits bought with money, written once per cause, and kept in line with refunds and disputes.

What to grant is decided by `grant_rules`; here it is written: the ledger grant and its
`StripePurchase` record in the caller's transaction, under the wallet lock. A refund or dispute
that reached us before the purchase it concerns is applied when the purchase is recorded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.catalog.service import Catalog, CreditPack, load_catalog
from chronote_billing.core.clock import Clock
from chronote_billing.core.ids import new_id
from chronote_billing.ledger.service import LedgerService

from .grant_rules import PurchaseGrant, effective_from, pack_grant, refund_target, refunded_share
from .models import StripeCharge, StripePurchase

log = structlog.get_logger(__name__)


def issue_purchase(
    session: Session,
    ledger: LedgerService,
    clock: Clock,
    account: BillingAccount,
    grant: PurchaseGrant,
    notes: list[str],
    catalog: Catalog | None = None,
) -> StripePurchase | None:
    """Grant credits bought with money, once per cause, and apply any refund or dispute that
    reached us before the purchase did."""
    # Under the wallet lock: the auto-recharge purchase and its payment_intent.succeeded webhook
    # can record the same purchase at once; the second must find the first's, not race it.
    ledger.lock_wallet(session, account.id)
    existing = session.execute(
        select(StripePurchase).where(StripePurchase.cause_key == grant.cause_key)
    ).scalar()
    if existing is not None:
        notes.append(f"{grant.cause_key} already granted ({existing.grant_id})")
        return existing
    now = clock.now()
    effective = effective_from(grant, now)
    if effective is None:
        notes.append(
            f"{grant.cause_key}: its period ended on {grant.expires_at.isoformat()} before delivery; "
            "nothing granted"
        )
        return None
    ledger_grant = ledger.issue_grant(
        session,
        account_id=account.id,
        amount=grant.amount,
        source=grant.source,
        idempotency_key=grant.cause_key,
        cause_type=grant.cause_type,
        cause_id=grant.cause_id,
        priority=grant.priority,
        effective_at=effective,
        expires_at=grant.expires_at,
        description=grant.description,
    )
    purchase = StripePurchase(
        id=new_id("pur"),
        cause_key=grant.cause_key,
        account_id=account.id,
        kind=grant.kind,
        product_ref=grant.product_ref,
        payment_intent_id=grant.payment_intent,
        invoice_id=grant.invoice_id,
        grant_id=ledger_grant.id,
        credits=grant.amount,
        refund_target=0,
        reversed=0,
        frozen=False,
        created_at=now,
    )
    session.add(purchase)
    session.flush()
    notes.append(f"granted {grant.amount} millicredits ({grant.cause_key})")
    for charge in _charges_for(session, purchase):
        apply_charge_effects(session, ledger, charge, notes, only=purchase, catalog=catalog)
    return purchase


def grant_pack(
    session: Session,
    ledger: LedgerService,
    clock: Clock,
    account: BillingAccount,
    pack: CreditPack,
    *,
    at: datetime,
    cause_type: str,
    cause_id: str,
    payment_intent: str | None,
    invoice_id: str | None,
    notes: list[str],
    catalog: Catalog | None = None,
) -> StripePurchase | None:
    """A paid credit pack (see `grant_rules.pack_grant`), written once per payment."""
    grant = pack_grant(
        pack,
        at=at,
        cause_type=cause_type,
        cause_id=cause_id,
        payment_intent=payment_intent,
        invoice_id=invoice_id,
    )
    return issue_purchase(session, ledger, clock, account, grant, notes, catalog)


def _charges_for(session: Session, purchase: StripePurchase) -> list[StripeCharge]:
    return _paid_with(session, StripeCharge, purchase.payment_intent_id, purchase.invoice_id, StripeCharge.id)


def _purchases_for(session: Session, charge: StripeCharge) -> list[StripePurchase]:
    return _paid_with(
        session, StripePurchase, charge.payment_intent_id, charge.invoice_id, StripePurchase.cause_key
    )


def _paid_with(
    session: Session, model: Any, payment_intent: str | None, invoice_id: str | None, order: Any
) -> list[Any]:
    """The rows of `model` (charges or purchases) of one payment: its intent's or its invoice's."""
    conds = []
    if payment_intent:
        conds.append(model.payment_intent_id == payment_intent)
    if invoice_id:
        conds.append(model.invoice_id == invoice_id)
    if not conds:
        return []
    return list(session.execute(select(model).where(or_(*conds)).order_by(order)).scalars())


def apply_charge_effects(
    session: Session,
    ledger: LedgerService,
    charge: StripeCharge,
    notes: list[str],
    only: StripePurchase | None = None,
    catalog: Catalog | None = None,
) -> bool:
    """Bring the purchases a charge paid for in line with its refunds and dispute.

    Refund: the refunded fraction (cumulative) of the credits bought, taken from what is neither
    spent nor held; never overdraws. Dispute: frozen while open; lost takes back what is left.
    Returns False when no purchase of ours is linked to the charge yet.
    """
    purchases = [only] if only is not None else _purchases_for(session, charge)
    if not purchases:
        return False
    catalog = catalog or load_catalog()
    for purchase in purchases:
        product = _product_name(catalog, purchase)
        target = refund_target(purchase.credits, charge.amount, charge.amount_refunded)
        delta = target - purchase.refund_target
        if delta > 0:
            reason = (
                f"Refund of {refunded_share(charge.amount_refunded, charge.amount)} of the {product} payment"
            )
            step = f"refund:{charge.amount_refunded}"
            reversed_ = _take_back(ledger, session, charge, purchase, delta, step, reason, "refund")
            purchase.refund_target = target
            notes.append(f"refund took back {reversed_} of {delta} millicredits from {purchase.grant_id}")
            if reversed_ < delta:
                log.warning(
                    "refund_exceeds_unspent",
                    charge=charge.id,
                    grant=purchase.grant_id,
                    asked=delta,
                    reversed=reversed_,
                )
                notes.append("the rest was already spent, held or expired: nothing is overdrawn")
        if charge.dispute_status == "open" and not purchase.frozen:
            _freeze(
                ledger,
                session,
                charge,
                purchase,
                notes,
                "freeze",
                f"Frozen while the {product} payment is disputed",
            )
        elif charge.dispute_status == "won" and purchase.frozen:
            _freeze(
                ledger,
                session,
                charge,
                purchase,
                notes,
                "won",
                f"Released: the dispute on the {product} payment was won",
            )
        elif charge.dispute_status == "lost":
            left = ledger.get_grant(session, purchase.grant_id).remaining
            if left > 0:
                reason = f"Taken back: the dispute on the {product} payment was lost"
                reversed_ = _take_back(
                    ledger, session, charge, purchase, left, "dispute:lost", reason, "dispute_lost"
                )
                notes.append(f"dispute lost: took back {reversed_} millicredits")
    session.flush()
    return True


def _take_back(
    ledger: LedgerService,
    session: Session,
    charge: StripeCharge,
    purchase: StripePurchase,
    amount: int,
    step: str,
    reason: str,
    kind: str,
) -> int:
    """Reverse up to `amount` of a purchase's grant (never what is spent or held); returns how
    much was taken back."""
    view = ledger.reverse_grant(
        session,
        grant_id=purchase.grant_id,
        amount=amount,
        idempotency_key=f"charge:{charge.id}:{step}:{purchase.id}",
        reason=f"{reason} (charge {charge.id})",
        kind=kind,
    )
    purchase.reversed += view.reversed
    return view.reversed


def _freeze(
    ledger: LedgerService,
    session: Session,
    charge: StripeCharge,
    purchase: StripePurchase,
    notes: list[str],
    step: str,
    reason: str,
) -> None:
    """Freeze a disputed purchase's grant (`freeze`), or release it when the dispute is won."""
    frozen = step == "freeze"
    ledger.set_grant_frozen(
        session,
        grant_id=purchase.grant_id,
        frozen=frozen,
        idempotency_key=f"charge:{charge.id}:dispute:{step}:{purchase.id}",
        reason=f"{reason} (charge {charge.id})",
    )
    purchase.frozen = frozen
    notes.append(
        f"froze {purchase.grant_id} (dispute)" if frozen else f"unfroze {purchase.grant_id} (dispute won)"
    )


def _product_name(catalog: Catalog, purchase: StripePurchase) -> str:
    product = catalog.credit_packs.get(purchase.product_ref) or catalog.plans.get(purchase.product_ref)
    return product.name if product is not None else purchase.product_ref
