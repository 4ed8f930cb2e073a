"""An account's invoices and receipts, read from Stripe when asked (decision 0043).

Invoices (plans, renewals, pack checkouts, taxed auto-recharges) come with their number, tax,
status and Stripe's hosted page and PDF. Payments no invoice covers (older packs, untaxed
auto-recharges) appear as their charge's receipt. Nothing here is stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal, require_view
from chronote_billing.integrations.stripe.client import StripeClient, call, expandable_id, to_dict

from .dependencies import BillingDependencies, get_account
from .timestamps import from_ts

MAX_DOCUMENTS = 24


class BillingDocument(BaseModel):
    object: str = "billing_document"
    kind: Literal["invoice", "receipt"]
    id: str = Field(description="Stripe's invoice (in_...) or charge (ch_...) id.")
    number: str | None = Field(description="The invoice number; a receipt's own number when Stripe gave one.")
    date: datetime
    description: str | None
    amount: int = Field(description="Total in the currency's minor unit, tax included.")
    tax: int | None = Field(description="Tax in minor units; None when Stripe did not compute it.")
    amount_refunded: int = 0
    currency: str
    status: str = Field(description="Stripe's invoice status (paid, open, void, ...) or 'paid'/'refunded'.")
    url: str | None = Field(description="Stripe's hosted invoice page, or the receipt.")
    pdf_url: str | None


class BillingDocumentList(BaseModel):
    object: str = "list"
    account_id: str
    data: list[BillingDocument]


def documents(billing: BillingDependencies, principal: Principal, account_id: str) -> BillingDocumentList:
    """The account's invoices and receipts, newest first, read from its own Stripe customer."""

    def check(session: Session) -> str | None:
        account = get_account(session, account_id)
        require_view(session, principal, account)
        return account.stripe_customer_id

    customer = billing.db.read(check)
    data = list_documents(billing.client, customer) if customer else []
    return BillingDocumentList(account_id=account_id, data=data)


def list_documents(client: StripeClient, customer: str, limit: int = MAX_DOCUMENTS) -> list[BillingDocument]:
    invoices = call(
        "list invoices",
        lambda: client.v1.invoices.list(
            params={"customer": customer, "limit": limit, "expand": ["data.payments"]}
        ),
    )
    documents: list[BillingDocument] = []
    covered: set[str] = set()
    for raw in invoices.data:
        inv = to_dict(raw)
        for payment in ((inv.get("payments") or {}).get("data")) or []:
            intent = expandable_id((payment.get("payment") or {}).get("payment_intent"))
            if intent:
                covered.add(intent)
        if inv.get("status") == "draft":
            continue
        taxes = inv.get("total_taxes")
        documents.append(
            BillingDocument(
                kind="invoice",
                id=str(inv["id"]),
                number=inv.get("number"),
                date=from_ts(_when(inv)),
                description=inv.get("description") or _first_line(inv),
                amount=int(inv.get("total") or 0),
                tax=sum(int(t.get("amount") or 0) for t in taxes) if taxes else None,
                currency=str(inv.get("currency") or ""),
                status=str(inv.get("status")),
                url=inv.get("hosted_invoice_url"),
                pdf_url=inv.get("invoice_pdf"),
            )
        )
    charges = call(
        "list charges", lambda: client.v1.charges.list(params={"customer": customer, "limit": limit})
    )
    for listed in charges.data:
        charge = to_dict(listed)
        intent = expandable_id(charge.get("payment_intent"))
        if charge.get("status") != "succeeded" or (intent and intent in covered):
            continue
        refunded = int(charge.get("amount_refunded") or 0)
        documents.append(
            BillingDocument(
                kind="receipt",
                id=str(charge["id"]),
                number=charge.get("receipt_number"),
                date=from_ts(int(charge.get("created") or 0)),
                description=charge.get("description"),
                amount=int(charge.get("amount") or 0),
                tax=None,
                amount_refunded=refunded,
                currency=str(charge.get("currency") or ""),
                status="refunded" if charge.get("refunded") else "paid",
                url=charge.get("receipt_url"),
                pdf_url=None,
            )
        )
    documents.sort(key=lambda d: (d.date, d.id), reverse=True)
    return documents[:limit]


def _when(inv: dict[str, Any]) -> int:
    transitions = inv.get("status_transitions") or {}
    return int(transitions.get("finalized_at") or inv.get("created") or 0)


def _first_line(inv: dict[str, Any]) -> str | None:
    lines = ((inv.get("lines") or {}).get("data")) or []
    return str(lines[0].get("description")) if lines else None
