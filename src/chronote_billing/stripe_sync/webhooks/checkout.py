"""`checkout.session.completed|async_payment_succeeded|expired`: the local record of a checkout
follows it, an expired trial checkout gives its reservation back, and a paid credit-pack checkout
grants the pack (a subscription checkout's effect comes with its subscription and invoice)."""

from __future__ import annotations

from chronote_billing.integrations.stripe.objects import CheckoutSession
from chronote_billing.plans import trials

from ..grant_rules import pack_grant
from ..models import StripeCheckoutSession
from ..timestamps import from_ts
from .context import Applying

EXPIRED = "checkout.session.expired"
PAID = ("paid", "no_payment_required")


def on_checkout(applying: Applying, cs: CheckoutSession) -> None:
    session, event, result = applying.session, applying.event, applying.result
    account = applying.account(cs)
    if account is None:
        return
    if cs.client_reference_id and cs.client_reference_id != account.id:
        result.ignored(
            f"session {cs.id} names account {cs.client_reference_id} but its customer is {account.id}'s"
        )
        return
    local = session.get(StripeCheckoutSession, cs.id)
    if event.type == EXPIRED:
        if local is not None and local.status == "open":
            local.status = "expired"
        result.note("checkout expired")
        if trials.release_offer(session, cs.id):
            result.note("its trial reservation was released")
        return
    if local is not None and local.status != "complete":
        local.status = "complete"
        local.completed_at = from_ts(event.created)
    if cs.mode != "payment":
        result.note("subscription checkout: the subscription and invoice events carry its effect")
        return
    if cs.payment_status not in PAID:
        result.ignored(f"session {cs.id} is not paid yet ({cs.payment_status})")
        return
    pack_id = cs.metadata.get("chronote_pack_id") or (local.pack_id if local else None)
    pack = applying.services.catalog.credit_packs.get(pack_id or "")
    if pack is None:
        result.ignored(f"session {cs.id} names no known credit pack ({pack_id!r})")
        return
    paid_at = from_ts(event.created)
    grant = pack_grant(
        pack,
        at=paid_at,
        cause_type="checkout_session",
        cause_id=cs.id,
        payment_intent=cs.payment_intent,
        invoice_id=cs.invoice,
    )
    applying.grant(account, grant)
