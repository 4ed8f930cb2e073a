"""What a person types on the hosted Checkout page besides the card, and what Checkout does with
it: a promotion code (when the session has `allow_promotion_codes`), a billing address (when
`billing_address_collection=required`, or when automatic tax needs a location), a business name
and tax id (`tax_id_collection`), saved on the customer as `customer_update` allows; and the
invoice a paid `payment`-mode session creates with `invoice_creation[enabled]`.

`check` validates and prices the page's entries on the session only (a refusal leaves the
customer untouched); `save` then stores them on the customer, before the payment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chronote_stripe_local import amounts, objects
from chronote_stripe_local.coupons import discount_object
from chronote_stripe_local.errors import StripeError
from chronote_stripe_local.params import Params
from chronote_stripe_local.tax import TAX_ID_TYPES

if TYPE_CHECKING:
    from chronote_stripe_local.engine import Engine

ADDRESS_FIELDS = ("line1", "postal_code", "city", "country")


def needs_address(engine: Engine, cs: dict[str, Any]) -> bool:
    private = engine.store.private[cs["id"]]
    customer = engine.store.find(cs["customer"]) if cs["customer"] else None
    if cs["billing_address_collection"] == "required":
        return True
    return bool(private.get("automatic_tax")) and not (customer or {}).get("address")


def check(engine: Engine, cs: dict[str, Any], details: dict[str, str]) -> None:
    private = engine.store.private[cs["id"]]
    code = (details.get("promotion_code") or "").strip()
    if code and cs["allow_promotion_codes"]:
        promo = engine.coupons.find_active_code(code)
        if promo is None:
            raise StripeError(
                400, "This code is invalid.", code="promotion_code_invalid", param="promotion_code"
            )
        coupon = engine.coupons.coupon(promo["promotion"]["coupon"], "promotion_code")
        due = [
            (li["price"]["unit_amount"] * li["quantity"], li["price"]["product"])
            for li in private["lines"]
            if not (
                li["price"]["recurring"] and (private.get("trial_end") or private.get("trial_period_days"))
            )
        ]
        engine.coupons.check(
            coupon,
            promo,
            customer=cs["customer"],
            lines=due or [(0, "")],
            currency=cs["currency"],
            param="promotion_code",
        )
        private["discount"] = (coupon["id"], promo["id"])
    country = (details.get("country") or "").strip().upper()
    if country and (len(country) != 2 or not country.isalpha()):
        raise StripeError(400, "Enter the country as a two-letter code, e.g. DE.", param="address[country]")
    if needs_address(engine, cs) and not country:
        raise StripeError(400, "Enter your billing address (at least its country).", param="address[country]")
    if country:
        private["address"] = {
            **objects.empty_address(),
            **{k: (details.get(k) or "").strip() or None for k in ADDRESS_FIELDS},
            "country": country,
        }
    tax_value = (details.get("tax_id_value") or "").strip()
    if tax_value and cs.get("tax_id_collection", {}).get("enabled"):
        kind = details.get("tax_id_type") or "eu_vat"
        if kind not in TAX_ID_TYPES:
            raise StripeError(400, "Choose the kind of tax ID.", param="tax_id_type")
    amounts.session_totals(engine, cs)


def card_optional(cs: dict[str, Any]) -> bool:
    """Nothing is due now and the session does not insist on a card."""
    if cs["amount_total"] > 0:
        return False
    return cs["mode"] == "payment" or cs["payment_method_collection"] == "if_required"


def save(
    engine: Engine, cs: dict[str, Any], customer: dict[str, Any] | None, details: dict[str, str]
) -> dict[str, Any]:
    """Store the page's address, business name and tax id on the customer (as the session's
    `customer_update` allows) and price the session for good; returns what was collected."""
    private = engine.store.private[cs["id"]]
    update: dict[str, str] = private.get("customer_update") or {}
    address = private.get("address")
    business = (details.get("business_name") or "").strip() or None
    tax_value = (details.get("tax_id_value") or "").replace(" ", "").upper()
    collect_ids = bool(cs.get("tax_id_collection", {}).get("enabled"))
    tax_ids: list[dict[str, str]] = []
    if customer is not None:
        before = engine.render(customer)
        if address is not None and (update.get("address") == "auto" or not customer["address"]):
            customer["address"] = address
        if business and update.get("name") == "auto":
            customer["name"] = business
        engine.emit_updated("customer.updated", customer, before)
        if tax_value and collect_ids:
            kind = details.get("tax_id_type") or "eu_vat"
            created = engine.tax.create_tax_id(customer["id"], Params({"type": kind, "value": tax_value}))
            tax_ids.append({"type": created["type"], "value": created["value"]})
    amounts.session_totals(engine, cs)
    return {"address": address, "business_name": business, "tax_ids": tax_ids}


def discount_of(engine: Engine, cs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    found = engine.store.private[cs["id"]].get("discount")
    if not found:
        return None
    coupon = engine.coupons.coupon(found[0], "discounts[0][coupon]")
    promo = engine.store.get("promotion_code", found[1]) if found[1] else None
    return coupon, promo


def post_payment_invoice(
    engine: Engine, cs: dict[str, Any], customer: dict[str, Any], pi: dict[str, Any] | None
) -> dict[str, Any]:
    """The paid invoice of a `payment`-mode session created with `invoice_creation[enabled]`:
    the same lines, discount and tax as the session, paid by its payment."""
    billing = engine.billing
    private = engine.store.private[cs["id"]]
    data = cs["invoice_creation"]["invoice_data"]
    now = engine.now(customer["id"])
    inv = billing.new_invoice(
        customer,
        billing_reason="manual",
        subscription=None,
        period=(now, now),
        description=data.get("description"),
        metadata=dict(data.get("metadata") or {}),
        auto_advance=False,
        currency=cs["currency"],
    )
    engine.store.private[inv["id"]]["automatic_tax"] = bool(private.get("automatic_tax"))
    for li in private["lines"]:
        price, qty = li["price"], li["quantity"]
        item = billing._new_invoice_item(
            customer,
            price=price,
            quantity=qty,
            amount=price["unit_amount"] * qty,
            description=li["description"],
            period=(now, now),
            sub=None,
            item=None,
            proration=False,
            metadata={},
        )
        billing._attach_item(inv, item)
    found = private.get("discount")
    if found:
        discount = discount_object(
            id=objects.new_id("di_1"),
            coupon=found[0],
            promotion_code=found[1],
            customer=customer["id"],
            start=now,
            end=None,
            invoice=inv["id"],
            checkout_session=cs["id"],
        )
        engine.store.add(discount)
        inv["discounts"] = [discount["id"]]
    engine.emit("invoice.created", inv)
    billing.finalize(inv)
    if inv["status"] == "open":
        if pi is not None:
            payment = objects.invoice_payment(
                id=objects.new_id("inpay_1"),
                created=now,
                invoice=inv["id"],
                amount=inv["amount_due"],
                currency=inv["currency"],
                payment_intent=pi["id"],
            )
            payment["status"] = "paid"
            payment["amount_paid"] = pi["amount"]
            payment["status_transitions"]["paid_at"] = now
            engine.store.add(payment)
        billing._mark_paid(inv, amount=inv["amount_due"])
    return inv
