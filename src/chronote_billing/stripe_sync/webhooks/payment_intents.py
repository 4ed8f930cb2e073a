"""`payment_intent.succeeded`: an auto-recharge's credit pack bought off-session (the payments of
checkouts and invoices have their own events, which carry their effect)."""

from __future__ import annotations

from chronote_billing.integrations.stripe.objects import PaymentIntent

from ..grant_rules import pack_grant
from ..metadata import PACK_OFF_SESSION
from ..timestamps import from_ts
from .context import Applying


def on_payment_intent_succeeded(applying: Applying, pi: PaymentIntent) -> None:
    if pi.metadata.get("chronote_kind") != PACK_OFF_SESSION:
        applying.result.ignored("payment intent of a checkout or invoice: their own events carry the effect")
        return
    account = applying.account(pi)
    if account is None:
        return
    pack = applying.services.catalog.credit_packs.get(pi.metadata.get("chronote_pack_id", ""))
    if pack is None:
        applying.result.ignored(f"payment intent {pi.id} names no known credit pack")
        return
    # The payment's own time, as the auto-recharge purchase uses: both ask for one grant.
    paid_at = from_ts(pi.created or applying.event.created)
    applying.grant(
        account,
        pack_grant(
            pack,
            at=paid_at,
            cause_type="payment_intent",
            cause_id=pi.id,
            payment_intent=pi.id,
            invoice_id=None,
        ),
    )
