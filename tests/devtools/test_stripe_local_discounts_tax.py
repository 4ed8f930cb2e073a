"""The stand-in's coupons, promotion codes, automatic tax, trials without a card, and the
documents a customer reads (hosted invoice, PDF, receipt), through the SDK and the hosted page."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from chronote_stripe_local.testing import CARD_OK, StripeLocalHarness

DAY = 86400
START = 1_800_000_000


@pytest.fixture
def shop(stripe_local: StripeLocalHarness) -> dict[str, Any]:
    c = stripe_local.client
    product = c.v1.products.create({"name": "Pro"})
    other = c.v1.products.create({"name": "Credits"})
    monthly = c.v1.prices.create(
        {"product": product.id, "currency": "usd", "unit_amount": 900, "recurring": {"interval": "month"}}
    )
    pack = c.v1.prices.create({"product": other.id, "currency": "usd", "unit_amount": 1500})
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": START})
    customer = c.v1.customers.create({"name": "Ada", "test_clock": clock.id})
    return {
        "product": product.id,
        "other": other.id,
        "monthly": monthly.id,
        "pack": pack.id,
        "clock": clock.id,
        "customer": customer.id,
    }


def subscribe(stripe_local: StripeLocalHarness, shop: dict[str, Any], **extra: Any) -> Any:
    c = stripe_local.client
    details = extra.pop("details", {})
    session = c.v1.checkout.sessions.create(
        {
            "mode": "subscription",
            "customer": shop["customer"],
            "line_items": [{"price": shop["monthly"], "quantity": 1}],
            "success_url": "https://example.com/ok",
            **extra,
        }
    )
    card = details.pop("card", CARD_OK)
    response = stripe_local.pay_checkout(session, card=card, **details)
    assert response.status_code == 303, response.text
    session = c.v1.checkout.sessions.retrieve(session.id)
    return c.v1.subscriptions.retrieve(session.subscription)


def invoices(stripe_local: StripeLocalHarness, customer: str) -> list[dict[str, Any]]:
    listing = stripe_local.client.raw_request("get", "/v1/invoices", customer=customer, limit=100).data
    return list(reversed(listing["data"]))  # type: ignore[index]


def test_a_repeating_percent_coupon_discounts_three_months_then_stops(stripe_local, shop) -> None:
    c = stripe_local.client
    coupon = c.v1.coupons.create({"percent_off": 25.5, "duration": "repeating", "duration_in_months": 3})
    sub = subscribe(stripe_local, shop, discounts=[{"coupon": coupon.id}])
    for _ in range(4):
        stripe_local.advance_clock(shop["clock"], seconds=31 * DAY)
    totals = [(i["subtotal"], i["total"]) for i in invoices(stripe_local, shop["customer"])]
    # 25.5% of 900 is 229.5, rounded half up to 230 (integers, never floats).
    assert totals == [(900, 670), (900, 670), (900, 670), (900, 900), (900, 900)]
    first = invoices(stripe_local, shop["customer"])[0]
    assert first["total_discount_amounts"][0]["amount"] == 230
    assert first["lines"]["data"][0]["discount_amounts"][0]["amount"] == 230
    assert c.v1.coupons.retrieve(coupon.id).times_redeemed == 1
    assert c.v1.subscriptions.retrieve(sub.id).discounts  # the discount stays, ended by its date


def test_a_once_amount_coupon_is_capped_at_the_price_and_used_once(stripe_local, shop) -> None:
    c = stripe_local.client
    coupon = c.v1.coupons.create({"amount_off": 1000, "currency": "usd", "duration": "once"})
    sub = subscribe(stripe_local, shop, discounts=[{"coupon": coupon.id}])
    stripe_local.advance_clock(shop["clock"], seconds=31 * DAY)
    assert [(i["total"], i["amount_paid"]) for i in invoices(stripe_local, shop["customer"])] == [
        (0, 0),
        (900, 900),
    ]
    assert c.v1.subscriptions.retrieve(sub.id).discounts == []
    assert "customer.discount.deleted" in stripe_local.received_types()


def test_forever_discounts_every_renewal(stripe_local, shop) -> None:
    coupon = stripe_local.client.v1.coupons.create({"percent_off": 50, "duration": "forever"})
    subscribe(stripe_local, shop, discounts=[{"coupon": coupon.id}])
    for _ in range(2):
        stripe_local.advance_clock(shop["clock"], seconds=31 * DAY)
    assert [i["total"] for i in invoices(stripe_local, shop["customer"])] == [450, 450, 450]


def test_refusals_of_codes_that_cannot_be_redeemed(stripe_local, shop) -> None:
    c = stripe_local.client
    base = {
        "mode": "subscription",
        "customer": shop["customer"],
        "line_items": [{"price": shop["monthly"], "quantity": 1}],
        "success_url": "https://example.com/ok",
    }
    wrong_product = c.v1.coupons.create({"percent_off": 10, "applies_to": {"products": [shop["other"]]}})
    one_use = c.v1.coupons.create({"percent_off": 10})
    once = c.v1.promotion_codes.create(
        {"promotion": {"type": "coupon", "coupon": one_use.id}, "code": "ONCE", "max_redemptions": 1}
    )
    soon = c.v1.promotion_codes.create(
        {"promotion": {"type": "coupon", "coupon": one_use.id}, "code": "SOON", "expires_at": START + DAY}
    )
    off = c.v1.promotion_codes.create(
        {"promotion": {"type": "coupon", "coupon": one_use.id}, "code": "OFF", "active": False}
    )
    big = c.v1.promotion_codes.create(
        {
            "promotion": {"type": "coupon", "coupon": one_use.id},
            "code": "BIG",
            "restrictions": {"minimum_amount": 5000, "minimum_amount_currency": "usd"},
        }
    )
    cases = [
        ({"discounts": [{"coupon": wrong_product.id}]}, "does not apply"),
        ({"discounts": [{"promotion_code": off.id}]}, "not active"),
        ({"discounts": [{"promotion_code": big.id}]}, r"at least \$50\.00"),
        ({"discounts": [{"coupon": "nope"}]}, "No such coupon"),
        ({"discounts": [{"coupon": one_use.id}], "allow_promotion_codes": True}, "only specify one"),
    ]
    for extra, message in cases:
        with pytest.raises(stripe.InvalidRequestError, match=message):
            c.v1.checkout.sessions.create({**base, **extra})
    subscribe(stripe_local, shop, discounts=[{"promotion_code": once.id}])
    assert c.v1.promotion_codes.retrieve(once.id).active is False
    with pytest.raises(stripe.InvalidRequestError, match="not active"):
        c.v1.checkout.sessions.create({**base, "discounts": [{"promotion_code": once.id}]})
    stripe_local.advance_clock(shop["clock"], seconds=2 * DAY)
    with pytest.raises(stripe.InvalidRequestError, match="expired"):
        c.v1.checkout.sessions.create({**base, "discounts": [{"promotion_code": soon.id}]})
    with pytest.raises(stripe.InvalidRequestError, match="already exists"):
        c.v1.promotion_codes.create({"promotion": {"type": "coupon", "coupon": one_use.id}, "code": "big"})


def test_a_code_typed_on_the_page_lowers_the_payment_and_a_bad_one_changes_nothing(
    stripe_local, shop
) -> None:
    c = stripe_local.client
    coupon = c.v1.coupons.create({"percent_off": 20, "applies_to": {"products": [shop["other"]]}})
    c.v1.promotion_codes.create({"promotion": {"type": "coupon", "coupon": coupon.id}, "code": "PACK20"})
    session = c.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": shop["customer"],
            "line_items": [{"price": shop["pack"], "quantity": 1}],
            "success_url": "https://example.com/ok",
            "allow_promotion_codes": True,
        }
    )
    refused = stripe_local.pay_checkout(session, promotion_code="NOPE")
    assert refused.status_code == 400 and "This code is invalid." in refused.text
    assert c.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert stripe_local.pay_checkout(session, promotion_code="pack20").status_code == 303
    done = c.v1.checkout.sessions.retrieve(session.id)
    assert (done.amount_subtotal, done.total_details.amount_discount, done.amount_total) == (1500, 300, 1200)
    assert c.v1.payment_intents.retrieve(done.payment_intent).amount == 1200
    assert done.discounts[0].promotion_code is not None


def test_a_fully_discounted_pack_needs_no_payment(stripe_local, shop) -> None:
    c = stripe_local.client
    free = c.v1.coupons.create({"percent_off": 100})
    session = c.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": shop["customer"],
            "line_items": [{"price": shop["pack"], "quantity": 1}],
            "success_url": "https://example.com/ok",
            "discounts": [{"coupon": free.id}],
        }
    )
    assert stripe_local.pay_checkout(session, card=None).status_code == 303
    done = c.v1.checkout.sessions.retrieve(session.id)
    assert (done.payment_status, done.payment_intent, done.amount_total) == ("no_payment_required", None, 0)


@pytest.mark.parametrize(
    ("country", "tax_id", "tax", "reason"),
    [
        ("DE", None, 171, "standard_rated"),
        ("FR", "FR12345678901", 0, "reverse_charge"),
        ("US", None, 0, "not_collecting"),
    ],
)
def test_automatic_tax_by_country(stripe_local, shop, country, tax_id, tax, reason) -> None:
    details: dict[str, str] = {"country": country}
    extra: dict[str, Any] = {
        "automatic_tax": {"enabled": True},
        "customer_update": {"address": "auto", "name": "auto"},
    }
    if tax_id:
        details |= {"tax_id_type": "eu_vat", "tax_id_value": tax_id, "business_name": "Acme SARL"}
        extra["tax_id_collection"] = {"enabled": True}
    sub = subscribe(stripe_local, shop, details=details, **extra)
    assert sub.automatic_tax.enabled is True
    first = invoices(stripe_local, shop["customer"])[0]
    assert (first["total_excluding_tax"], first["total"], first["amount_paid"]) == (900, 900 + tax, 900 + tax)
    assert first["automatic_tax"]["status"] == "complete"
    assert first["total_taxes"][0]["taxability_reason"] == reason
    assert first["customer_address"]["country"] == country
    stripe_local.advance_clock(shop["clock"], seconds=31 * DAY)
    assert invoices(stripe_local, shop["customer"])[1]["total"] == 900 + tax  # renewals are taxed too
    if tax:
        rate = stripe_local.client.v1.tax_rates.retrieve(
            first["total_taxes"][0]["tax_rate_details"]["tax_rate"]
        )
        assert (rate.country, rate.percentage) == ("DE", 19)
    if tax_id:
        assert stripe_local.client.v1.customers.retrieve(shop["customer"]).name == "Acme SARL"
        assert first["customer_tax_ids"] == [{"type": "eu_vat", "value": tax_id}]


def test_tax_needs_an_address_and_refuses_sessions_that_cannot_save_one(stripe_local, shop) -> None:
    c = stripe_local.client
    base = {
        "mode": "payment",
        "customer": shop["customer"],
        "line_items": [{"price": shop["pack"], "quantity": 1}],
        "success_url": "https://example.com/ok",
        "automatic_tax": {"enabled": True},
    }
    with pytest.raises(stripe.InvalidRequestError, match="requires a valid address"):
        c.v1.checkout.sessions.create(base)
    session = c.v1.checkout.sessions.create({**base, "customer_update": {"address": "auto"}})
    assert session.automatic_tax.status == "requires_location_inputs"
    missing = stripe_local.pay_checkout(session)
    assert missing.status_code == 400 and "billing address" in missing.text
    assert stripe_local.pay_checkout(session, country="NL").status_code == 303
    done = c.v1.checkout.sessions.retrieve(session.id)
    assert (done.total_details.amount_tax, done.amount_total) == (315, 1815)


def test_a_trial_without_a_card_is_cancelled_at_its_end(stripe_local, shop) -> None:
    c = stripe_local.client
    sub = subscribe(
        stripe_local,
        shop,
        payment_method_collection="if_required",
        subscription_data={
            "trial_period_days": 7,
            "trial_settings": {"end_behavior": {"missing_payment_method": "cancel"}},
        },
        details={"card": None},
    )
    assert (sub.status, sub.default_payment_method) == ("trialing", None)
    stripe_local.advance_clock(shop["clock"], seconds=8 * DAY)
    ended = c.v1.subscriptions.retrieve(sub.id)
    assert ended.status == "canceled"
    assert [i["total"] for i in invoices(stripe_local, shop["customer"])] == [0]


def test_a_trial_with_a_card_is_charged_at_its_end(stripe_local, shop) -> None:
    sub = subscribe(stripe_local, shop, subscription_data={"trial_period_days": 7})
    assert sub.status == "trialing"
    stripe_local.advance_clock(shop["clock"], seconds=8 * DAY)
    assert stripe_local.client.v1.subscriptions.retrieve(sub.id).status == "active"
    assert [i["amount_paid"] for i in invoices(stripe_local, shop["customer"])] == [0, 900]


def test_invoices_and_receipts_can_be_read(stripe_local, shop) -> None:
    c = stripe_local.client
    session = c.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": shop["customer"],
            "line_items": [{"price": shop["pack"], "quantity": 1}],
            "success_url": "https://example.com/ok",
            "invoice_creation": {"enabled": True},
        }
    )
    assert stripe_local.pay_checkout(session).status_code == 303
    done = c.v1.checkout.sessions.retrieve(session.id)
    invoice = c.v1.invoices.retrieve(done.invoice, {"expand": ["payments"]})
    assert (invoice.status, invoice.amount_paid) == ("paid", 1500)
    assert invoice.payments.data[0].payment.payment_intent == done.payment_intent
    page = stripe_local.http.get(invoice.hosted_invoice_url)
    assert page.status_code == 200 and invoice.number in page.text
    document = stripe_local.http.get(invoice.invoice_pdf)
    assert document.headers["content-type"] == "application/pdf" and document.content.startswith(b"%PDF-1.4")
    charge = c.v1.charges.retrieve(c.v1.payment_intents.retrieve(done.payment_intent).latest_charge)
    receipt = stripe_local.http.get(charge.receipt_url)
    assert receipt.status_code == 200 and "$15.00" in receipt.text
    assert stripe_local.http.get("/invoices/not-a-token").status_code == 404
