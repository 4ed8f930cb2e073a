"""An auto-recharge bought as a taxed invoice (decision 0043): with Stripe Tax on, a bare
PaymentIntent would charge no tax and leave no invoice, so the pack's price goes on an invoice
with `automatic_tax`, which is finalized and paid off-session with the saved card.

Every call carries an idempotency key derived from the purchase's own key, so a job run twice
makes one invoice and pays it once. No database transaction is open here.
"""

from __future__ import annotations

from dataclasses import dataclass

import stripe
from stripe._request_options import RequestOptions

from chronote_billing.catalog.service import CreditPack
from chronote_billing.core.errors import BillingError, ExternalServiceError

from .client import expandable_id, stripe_key, to_dict


@dataclass(frozen=True)
class PaidPack:
    invoice: str
    payment_intent: str | None
    status: str  # succeeded, or Stripe's invoice status when it is not paid
    created: int


def pay_pack_invoice(
    client: stripe.StripeClient,
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
    def opts(step: str) -> RequestOptions:
        return {"idempotency_key": stripe_key("pack-invoice", account_id, key, step)}

    try:
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
        paid = to_dict(
            client.v1.invoices.pay(
                invoice["id"],
                params={"off_session": True, "payment_method": method, "expand": ["payments"]},
                options=opts("pay"),
            )
        )
    except stripe.CardError as exc:
        raise declined(
            f"The saved card was declined: {exc.user_message or exc}", account_id=account_id, pack=pack.id
        ) from exc
    except stripe.StripeError as exc:
        raise ExternalServiceError(f"Stripe refused or failed to invoice the pack: {exc}") from exc
    payments = ((paid.get("payments") or {}).get("data")) or []
    intent = expandable_id(((payments[0] if payments else {}).get("payment") or {}).get("payment_intent"))
    transitions = paid.get("status_transitions") or {}
    return PaidPack(
        invoice=str(paid["id"]),
        payment_intent=intent,
        status="succeeded" if paid.get("status") == "paid" else str(paid.get("status")),
        created=int(transitions.get("paid_at") or paid.get("created") or 0),
    )
