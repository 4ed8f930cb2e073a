"""How the stand-in totals an invoice and a Checkout session: subtotal, discounts, then tax.

Both are recomputed from their lines whenever a line is added, so the totals are always the
lines' sum: `subtotal` (before discounts), `total_discount_amounts` and each line's
`discount_amounts`, then, with automatic tax, each line's `taxes` on what it costs after its
discount (`total_taxes`), and `total` = subtotal - discounts + tax. Amounts are integers in the
currency's minor unit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chronote_stripe_local.tax import Tax

if TYPE_CHECKING:
    from chronote_stripe_local.engine import Engine


def _product(line: dict[str, Any]) -> str:
    pricing = line.get("pricing") or {}
    details = pricing.get("price_details") or {}
    return str(details.get("product") or "")


def invoice_totals(engine: Engine, inv: dict[str, Any]) -> None:
    lines = inv["lines"]["data"]
    off = [0] * len(lines)
    for line in lines:
        line["discount_amounts"], line["discounts"] = [], []
    by_discount: list[dict[str, Any]] = []
    for discount_id in inv["discounts"]:
        coupon = engine.coupons.coupon_of(discount_id)
        if coupon is None:
            continue
        amounts = engine.coupons.amounts_off(
            coupon,
            [(ln["amount"] - off[i], _product(ln), bool(ln["discountable"])) for i, ln in enumerate(lines)],
        )
        for i, amount in enumerate(amounts):
            if amount:
                off[i] += amount
                lines[i]["discount_amounts"].append({"amount": amount, "discount": discount_id})
                lines[i]["discounts"].append(discount_id)
        by_discount.append({"amount": sum(amounts), "discount": discount_id})
    subtotal = sum(ln["amount"] for ln in lines)
    discounted = subtotal - sum(off)
    tax_total = 0
    private = engine.store.private[inv["id"]]
    if private.get("automatic_tax"):
        customer = engine.store.find(inv["customer"])
        reason, rate = engine.tax.decide(customer)
        status = "requires_location_inputs" if reason == "requires_location_inputs" else "complete"
        inv["automatic_tax"] = Tax.automatic_tax(True, status, invoice=True)
        totals: dict[tuple[str | None, str], dict[str, Any]] = {}
        for i, line in enumerate(lines):
            line["taxes"] = engine.tax.line_taxes(reason, rate, line["amount"] - off[i])
            for tax in line["taxes"]:
                details = tax["tax_rate_details"]
                key = (details["tax_rate"] if details else None, tax["taxability_reason"])
                entry = totals.setdefault(key, {**tax, "amount": 0, "taxable_amount": 0})
                entry["amount"] += tax["amount"]
                entry["taxable_amount"] += tax["taxable_amount"]
        inv["total_taxes"] = list(totals.values())
        tax_total = sum(t["amount"] for t in inv["total_taxes"])
    else:
        for line in lines:
            line["taxes"] = []
        inv["total_taxes"] = []
    inv["total_discount_amounts"] = by_discount
    inv["subtotal"] = inv["subtotal_excluding_tax"] = subtotal
    inv["total_excluding_tax"] = discounted
    inv["total"] = discounted + tax_total
    if inv["status"] == "draft":
        inv["amount_due"] = inv["amount_remaining"] = max(0, inv["total"])


def session_totals(engine: Engine, cs: dict[str, Any]) -> None:
    """Amounts due now on a Checkout session: a trial's recurring lines cost nothing today."""
    private = engine.store.private[cs["id"]]
    trial = bool(private.get("trial_end") or private.get("trial_period_days"))
    items = private["lines"]
    due = [
        0 if trial and li["price"]["recurring"] else li["price"]["unit_amount"] * li["quantity"]
        for li in items
    ]
    off = [0] * len(items)
    discount = private.get("discount")
    if discount is not None:
        coupon = engine.store.find(discount[0])
        if coupon is not None and not coupon.get("deleted"):
            off = engine.coupons.amounts_off(
                coupon,
                [(amount, li["price"]["product"], True) for amount, li in zip(due, items, strict=True)],
            )
        cs["discounts"] = [{"coupon": discount[0], "promotion_code": discount[1]}]
    else:
        cs["discounts"] = []
    taxes = [0] * len(items)
    if private.get("automatic_tax"):
        reason, rate = engine.tax.decide(session_customer(engine, cs))
        status = "requires_location_inputs" if reason == "requires_location_inputs" else "complete"
        cs["automatic_tax"] = Tax.automatic_tax(True, status)
        for i in range(len(items)):
            lines = engine.tax.line_taxes(reason, rate, due[i] - off[i])
            taxes[i] = sum(t["amount"] for t in lines)
    for i, li in enumerate(items):
        li["amount_subtotal"] = due[i]
        li["amount_discount"] = off[i]
        li["amount_tax"] = taxes[i]
        li["amount_total"] = due[i] - off[i] + taxes[i]
    cs["amount_subtotal"] = sum(due)
    cs["amount_total"] = sum(due) - sum(off) + sum(taxes)
    cs["total_details"] = {"amount_discount": sum(off), "amount_shipping": 0, "amount_tax": sum(taxes)}


def session_customer(engine: Engine, cs: dict[str, Any]) -> dict[str, Any] | None:
    """Who the tax is computed for: the session's customer, with the address typed on the page
    when there is one."""
    private = engine.store.private[cs["id"]]
    customer = engine.store.find(cs["customer"]) if cs["customer"] else None
    address = private.get("address")
    if address is None:
        return customer
    base = dict(customer) if customer else {"id": None}
    return {**base, "address": address}
