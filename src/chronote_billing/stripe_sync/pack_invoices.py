"""An auto-recharge bought as a taxed invoice (decision 0043): with Stripe Tax on, a bare
PaymentIntent would charge no tax and leave no invoice, so the pack's price goes on an invoice
with `automatic_tax`, which is finalized and paid off-session with the saved card.

Every call carries an idempotency key derived from the purchase's own key, so a job run twice
makes one invoice and pays it once. No database transaction is open here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chronote_billing.catalog.service import CreditPack
from chronote_billing.core.errors import BillingError, ExternalServiceError
from chronote_billing.integrations.stripe.client import (
    StripeClient,
    StripeFailure,
    expandable_id,
    idempotent,
    request,
    stripe_key,
    to_dict,
)


@dataclass(frozen=True)
class PaidPack:
    invoice: str
    payment_intent: str | None
    status: str  # succeeded, or Stripe's invoice status when it is not paid
    created: int


def pay_pack_invoice(
    client: StripeClient,
    *,
    account_id: str,
    customer: str,
    pack: CreditPack,
    price_id: str,
    method: str,
    metadata: dict[str, str],
    key: str,
    declined: type[BillingError],
) -> PaidPack:
    def opts(step: str) -> Any:
        return idempotent(stripe_key("pack-invoice", account_id, key, step))

    try:
        paid = request(lambda: _invoice_and_pay(client, customer, pack, price_id, method, metadata, opts))
    except StripeFailure as exc:
        raise payment_refused(exc, "invoice the pack", account_id, pack, declined) from exc
    payments = ((paid.get("payments") or {}).get("data")) or []
    intent = expandable_id(((payments[0] if payments else {}).get("payment") or {}).get("payment_intent"))
    transitions = paid.get("status_transitions") or {}
    return PaidPack(
        invoice=str(paid["id"]),
        payment_intent=intent,
        status="succeeded" if paid.get("status") == "paid" else str(paid.get("status")),
        created=int(transitions.get("paid_at") or paid.get("created") or 0),
    )


def payment_refused(
    exc: StripeFailure, doing: str, account_id: str, pack: CreditPack, declined: type[BillingError]
) -> BillingError:
    """A declined card is the purchase's own refusal (`declined`); anything else is Stripe's."""
    if exc.kind == "card_declined":
        return declined(
            f"The saved card was declined: {exc.user_message or exc}", account_id=account_id, pack=pack.id
        )
    return ExternalServiceError(f"Stripe refused or failed to {doing}: {exc}")


def _invoice_and_pay(
    client: StripeClient,
    customer: str,
    pack: CreditPack,
    price_id: str,
    method: str,
    metadata: dict[str, str],
    opts: Any,
) -> dict[str, Any]:
    """The four requests, each with its own idempotency key: a retry makes one invoice, paid once."""
    invoice = to_dict(
        client.v1.invoices.create(
            params={
                "customer": customer,
                "auto_advance": False,
                "automatic_tax": {"enabled": True},
                "default_payment_method": method,
                "description": f"Chronote {pack.name} (auto-recharge)",
                "metadata": metadata,
            },
            options=opts("create"),
        )
    )
    client.v1.invoice_items.create(
        params={"customer": customer, "invoice": invoice["id"], "pricing": {"price": price_id}},
        options=opts("item"),
    )
    client.v1.invoices.finalize_invoice(
        invoice["id"], params={"auto_advance": False}, options=opts("finalize")
    )
    return to_dict(
        client.v1.invoices.pay(
            invoice["id"],
            params={"off_session": True, "payment_method": method, "expand": ["payments"]},
            options=opts("pay"),
        )
    )
