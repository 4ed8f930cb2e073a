"""A credit pack charged to the saved card, off-session (auto-recharge, decision 0045): a bare
PaymentIntent, or a taxed invoice when Stripe Tax is on (`pack_invoices`, decision 0043). The
credits are granted as soon as Stripe confirms the payment, and again never: the webhook that
confirms the same payment finds the same purchase."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from chronote_billing.catalog.service import CreditPack
from chronote_billing.integrations.stripe.client import (
    StripeFailure,
    idempotent,
    request,
    stripe_key,
    to_dict,
)

from .customers import saved_card
from .dependencies import AccountSnapshot, BillingDependencies, get_account
from .errors import NoStripeCustomer, PaymentFailed
from .metadata import PACK_OFF_SESSION, account_metadata
from .operation import StripeWrite
from .pack_invoices import pay_pack_invoice, payment_refused
from .purchases import grant_pack
from .schemas import PackPurchaseView
from .timestamps import from_ts, to_ts


def buy_pack_off_session(
    billing: BillingDependencies, account_id: str, pack_id: str, idempotency_key: str
) -> PackPurchaseView:
    """Charge a credit pack to the customer's saved default card (auto-recharge)."""
    write = StripeWrite.of(
        "pack_off_session", account_id, idempotency_key, {"pack": pack_id}, PackPurchaseView
    )
    pack = billing.catalog.pack(pack_id)

    def check(session: Session) -> tuple[PackPurchaseView | None, AccountSnapshot]:
        account = get_account(session, account_id)
        return write.first_answer(session), AccountSnapshot.of(account)

    first, acct = billing.db.read(check)
    if first is not None:
        return first
    if not acct.customer:
        raise NoStripeCustomer(
            f"Account '{account_id}' has no saved payment method: buy a pack once through checkout.",
            account_id=account_id,
        )
    method = saved_card(billing, acct.customer)
    if not method:
        raise PaymentFailed(
            f"Account '{account_id}' has no saved card to charge.", account_id=account_id, pack=pack_id
        )
    meta = {**account_metadata(acct), "chronote_pack_id": pack.id, "chronote_kind": PACK_OFF_SESSION}
    if billing.settings.stripe_automatic_tax:
        paid = pay_pack_invoice(
            billing.client,
            account_id=account_id,
            customer=acct.customer,
            pack=pack,
            price_id=billing.price_id(pack.lookup_key),
            method=method,
            metadata=meta,
            key=write.key,
            declined=PaymentFailed,
        )
        intent, invoice_id, status, created_ts = paid.payment_intent, paid.invoice, paid.status, paid.created
    else:
        pi = charge_pack(billing, acct, pack, method, meta, write.key)
        intent, invoice_id, status = str(pi["id"]), None, str(pi.get("status"))
        created_ts = int(pi.get("created") or 0)
    if status != "succeeded":
        raise PaymentFailed(
            f"The payment for {pack.name} is {status}; no credits were added.",
            account_id=account_id,
            payment_intent=intent,
        )
    created = from_ts(created_ts or to_ts(billing.clock.now()))

    def save(session: Session) -> PackPurchaseView:
        first = write.first_answer(session)
        if first is not None:
            return first
        notes: list[str] = []
        # One grant per payment: keyed as the webhook that confirms the same payment keys it.
        purchase = grant_pack(
            session,
            billing.ledger,
            billing.clock,
            get_account(session, account_id),
            pack,
            at=created,
            cause_type="invoice" if invoice_id else "payment_intent",
            cause_id=invoice_id or str(intent),
            payment_intent=None if invoice_id else intent,
            invoice_id=invoice_id,
            notes=notes,
            catalog=billing.catalog,
        )
        answer = PackPurchaseView(
            account_id=account_id,
            pack=pack.id,
            payment_intent=intent or "",
            invoice=invoice_id,
            status=status,
            granted=purchase is not None,
            grant_id=purchase.grant_id if purchase else None,
        )
        return write.remember(session, answer, billing.clock.now())

    return billing.db.write(save)


def charge_pack(
    billing: BillingDependencies,
    acct: AccountSnapshot,
    pack: CreditPack,
    method: str,
    meta: dict[str, str],
    key: str,
) -> dict[str, Any]:
    """A PaymentIntent for the pack's price, confirmed off-session (no tax: decision 0043)."""
    try:
        return to_dict(
            request(
                lambda: billing.client.v1.payment_intents.create(
                    params={
                        "amount": pack.unit_amount,
                        "currency": pack.currency,
                        "customer": acct.customer or "",
                        "payment_method": method,
                        "off_session": True,
                        "confirm": True,
                        "description": f"Chronote {pack.name} (auto-recharge)",
                        "metadata": meta,
                    },
                    options=idempotent(stripe_key("pack-off-session", acct.id, key)),
                )
            )
        )
    except StripeFailure as exc:
        raise payment_refused(exc, "charge the saved card", acct.id, pack, PaymentFailed) from exc
