"""Every object the local Stripe stand-in serves has the fields and JSON types of Stripe's own
example of that resource (tests/data/stripe_fixtures.json, from Stripe's OpenAPI fixtures).

Rules, applied recursively to nested objects and to the elements of lists:
- every field of the example is present;
- a field the example lacks is allowed only if the installed `stripe` SDK declares it on that
  resource (Stripe leaves some out of its examples, e.g. `pricing.price_details`);
- values have the example's JSON type; `null` where the example has a value is allowed only
  where the SDK declares the field `Optional`; where the example is `null` any type is allowed;
- `metadata` and hashes that are `{}` in the example are free-form;
- a string whose SDK annotation lists `Literal[...]` values is one of them (e.g. a status).
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest
from stripe._object_classes import get_object_class

from chronote_stripe_local.testing import CARD_DECLINES_RENEWALS, CARD_OK, StripeLocalHarness

FIXTURES: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "data" / "stripe_fixtures.json").read_text()
)["resources"]


def _annotations(cls: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for klass in reversed(getattr(cls, "__mro__", ())):
        out.update(getattr(klass, "__annotations__", {}))
    return out


def _optional(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith("Optional[") or "None" in annotation
    return typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation)


_LITERAL = re.compile(r"Literal\[([^\]]*)\]")


def _literal_values(annotation: Any) -> set[str]:
    values: set[str] = set()
    for group in _LITERAL.findall(repr(annotation)):
        values |= {a or b for a, b in re.findall(r"'([^']*)'|\"([^\"]*)\"", group)}
    return values


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    assert value is None, value
    return "null"


def _sdk_class(value: dict[str, Any], parent: Any, key: str) -> Any:
    if "object" in value and isinstance(value["object"], str):
        try:
            return get_object_class("V1", value["object"])
        except KeyError:
            return None
    inner = getattr(parent, "_inner_class_types", {}) if parent is not None else {}
    return inner.get(key)


def shape_problems(ours: Any, example: Any, cls: Any = None, path: str = "") -> list[str]:
    problems: list[str] = []
    if isinstance(example, dict) and isinstance(ours, dict):
        if not example or path.endswith("metadata"):
            return problems
        declared = _annotations(cls)
        for key in example:
            if key not in ours:
                problems.append(f"{path}.{key}: missing")
        for key, value in ours.items():
            where = f"{path}.{key}"
            allowed = (
                _literal_values(declared.get(key, ""))
                if isinstance(value, str) and key != "object"
                else set()
            )
            if allowed and value not in allowed:
                problems.append(f"{where}: {value!r} is not one of the SDK's values {sorted(allowed)}")
            if key not in example:
                if key not in declared:
                    problems.append(
                        f"{where}: not in Stripe's example nor in the SDK's {getattr(cls, '__name__', cls)}"
                    )
                continue
            expected = example[key]
            if expected is None:
                continue
            if value is None:
                if not _optional(declared.get(key, "")):
                    problems.append(
                        f"{where}: null, but Stripe's example has {_json_type(expected)} and the SDK does not make it Optional"
                    )
                continue
            if _json_type(value) != _json_type(expected):
                problems.append(f"{where}: {_json_type(value)}, Stripe's example has {_json_type(expected)}")
                continue
            if isinstance(value, dict):
                problems += shape_problems(value, expected, _sdk_class(value, cls, key), where)
            elif isinstance(value, list) and expected:
                for i, element in enumerate(value):
                    sub = expected[0]
                    if isinstance(element, dict) and isinstance(sub, dict):
                        problems += shape_problems(
                            element, sub, _sdk_class(element, None, key), f"{where}[{i}]"
                        )
                    elif _json_type(element) != _json_type(sub):
                        problems.append(
                            f"{where}[{i}]: {_json_type(element)}, Stripe's example has {_json_type(sub)}"
                        )
        return problems
    if _json_type(ours) != _json_type(example):
        problems.append(f"{path}: {_json_type(ours)}, Stripe's example has {_json_type(example)}")
    return problems


def assert_shape(obj: dict[str, Any], resource: str | None = None) -> None:
    resource = resource or obj["object"]
    example = FIXTURES[resource]
    if resource == "event":
        # The envelope is checked here; `data.object` against the example of its own resource.
        assert_shape(obj["data"]["object"])
        obj = dict(obj, data=dict(obj["data"], object=example["data"]["object"]))
    problems = shape_problems(obj, example, _sdk_class(obj, None, ""), resource)
    assert not problems, f"{resource} {obj.get('id')}:\n" + "\n".join(problems)


LIST_EXAMPLE = FIXTURES["subscription"]["items"]


def assert_list(listing: dict[str, Any], resource: str) -> None:
    assert sorted(listing) == sorted(LIST_EXAMPLE), listing.keys()
    assert (
        listing["object"] == "list"
        and isinstance(listing["has_more"], bool)
        and isinstance(listing["url"], str)
    )
    for obj in listing["data"]:
        assert_shape(obj, resource)


def test_the_shape_checker_catches_differences() -> None:
    good = json.loads(json.dumps(FIXTURES["refund"]))
    assert shape_problems(good, FIXTURES["refund"], get_object_class("V1", "refund"), "refund") == []
    bad = dict(good, amount="100", invented=1)
    del bad["charge"]
    problems = shape_problems(bad, FIXTURES["refund"], get_object_class("V1", "refund"), "refund")
    assert any(".amount: string" in p for p in problems)
    assert any(".invented" in p for p in problems)
    assert any(".charge: missing" in p for p in problems)
    # Enumerations: a value the SDK does not know is a difference.
    assert shape_problems(
        dict(good, reason="oops"), FIXTURES["refund"], get_object_class("V1", "refund"), "refund"
    )
    # null is fine only where the SDK says Optional: refund.amount is a plain int.
    assert shape_problems(
        dict(good, amount=None), FIXTURES["refund"], get_object_class("V1", "refund"), "refund"
    )


@pytest.fixture
def world(stripe_local: StripeLocalHarness) -> dict[str, Any]:
    """One of everything the stand-in serves, made through the SDK and the hosted pages."""
    c = stripe_local.client
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": 1_800_000_000, "name": "shapes"})
    product = c.v1.products.create({"name": "Chronote Pro", "metadata": {"scope": "personal"}})
    monthly = c.v1.prices.create(
        {
            "product": product.id,
            "currency": "usd",
            "unit_amount": 900,
            "recurring": {"interval": "month"},
            "lookup_key": "shape_monthly",
        }
    )
    annual = c.v1.prices.create(
        {"product": product.id, "currency": "usd", "unit_amount": 9000, "recurring": {"interval": "year"}}
    )
    plus = c.v1.prices.create(
        {"product": product.id, "currency": "usd", "unit_amount": 1900, "recurring": {"interval": "month"}}
    )
    pack = c.v1.prices.create(
        {"product_data": {"name": "Credits 1000"}, "currency": "usd", "unit_amount": 1500}
    )
    customer = c.v1.customers.create(
        {"email": "shape@example.com", "test_clock": clock.id, "metadata": {"chronote_account_id": "a1"}}
    )
    coupon = c.v1.coupons.create(
        {"percent_off": 25.5, "duration": "repeating", "duration_in_months": 3, "name": "Launch"}
    )
    c.v1.coupons.create({"id": "TENOFF", "amount_off": 1000, "currency": "usd", "duration": "once"})
    gone = c.v1.coupons.create({"percent_off": 5, "applies_to": {"products": [product.id]}})
    promo = c.v1.promotion_codes.create(
        {
            "promotion": {"type": "coupon", "coupon": coupon.id},
            "code": "SHAPE25",
            "max_redemptions": 10,
            "restrictions": {"minimum_amount": 500, "minimum_amount_currency": "usd"},
        }
    )
    sub_session = c.v1.checkout.sessions.create(
        {
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": monthly.id, "quantity": 1}],
            "success_url": "https://example.com/ok",
            "subscription_data": {"metadata": {"chronote_account_id": "a1"}},
            "discounts": [{"promotion_code": promo.id}],
            "automatic_tax": {"enabled": True},
            "tax_id_collection": {"enabled": True},
            "customer_update": {"address": "auto", "name": "auto"},
        }
    )
    open_session = c.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": customer.id,
            "line_items": [{"price": pack.id, "quantity": 1}],
            "success_url": "https://example.com/ok",
        }
    )
    paid = stripe_local.pay_checkout(
        sub_session,
        card=CARD_OK,
        country="DE",
        postal_code="10115",
        business_name="Shape GmbH",
        tax_id_type="eu_vat",
        tax_id_value="FR12345678901",
    )
    assert paid.status_code == 303, paid.text
    pay_session = c.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": customer.id,
            "line_items": [{"price": pack.id, "quantity": 2}],
            "success_url": "https://example.com/ok",
            "payment_intent_data": {"metadata": {"credits": "1000"}, "setup_future_usage": "off_session"},
            "allow_promotion_codes": True,
            "automatic_tax": {"enabled": True},
            "customer_update": {"address": "auto"},
            "invoice_creation": {"enabled": True, "invoice_data": {"metadata": {"kind": "pack"}}},
        }
    )
    paid = stripe_local.pay_checkout(pay_session, card=CARD_OK, promotion_code="shape25")
    assert paid.status_code == 303, paid.text
    tax_id = c.v1.customers.tax_ids.create(customer.id, {"type": "gb_vat", "value": "GB123456789"})
    c.v1.customers.tax_ids.delete(customer.id, tax_id.id)
    c.v1.coupons.delete(gone.id)
    sub_session = c.v1.checkout.sessions.retrieve(sub_session.id)
    pay_session = c.v1.checkout.sessions.retrieve(pay_session.id)
    sub = c.v1.subscriptions.retrieve(sub_session.subscription)
    c.v1.subscriptions.update(
        sub.id,
        {
            "items": [{"id": sub["items"].data[0].id, "price": plus.id}],
            "proration_behavior": "always_invoice",
        },
    )
    portal = c.raw_request(
        "post", "/v1/billing_portal/sessions", customer=customer.id, return_url="https://example.com"
    ).data
    assert stripe_local.portal(portal["url"], "use_card", card=CARD_DECLINES_RENEWALS).status_code == 303
    stripe_local.advance_clock(clock.id, seconds=32 * 86400)  # the renewal declines: past_due
    pi = c.v1.payment_intents.retrieve(pay_session.payment_intent)
    refund = c.v1.refunds.create({"payment_intent": pi.id, "amount": 500})
    other = c.v1.payment_intents.create(
        {
            "amount": 1500,
            "currency": "usd",
            "customer": customer.id,
            "payment_method": pi.payment_method,
            "off_session": True,
            "confirm": True,
        }
    )
    dispute = stripe_local.dispute(other.latest_charge)
    manual = c.v1.invoices.create({"customer": customer.id})
    item = c.v1.invoice_items.create(
        {"customer": customer.id, "pricing": {"price": pack.id}, "invoice": manual.id}
    )
    deleted_product = c.v1.products.create({"name": "Gone"})
    return {
        "clock": clock.id,
        "product": product.id,
        "deleted_product": deleted_product.id,
        "prices": [monthly.id, annual.id, plus.id, pack.id],
        "customer": customer.id,
        "sessions": [sub_session.id, pay_session.id, open_session.id],
        "subscription": sub.id,
        "payment_intents": [pi.id, other.id],
        "refund": refund.id,
        "dispute": dispute["id"],
        "manual_invoice": manual.id,
        "coupons": [coupon.id, "TENOFF"],
        "deleted_coupon": gone.id,
        "promotion_code": promo.id,
        "tax_id": tax_id.id,
        "invoice_item": item.id,
        "portal": portal,
        "portal_configuration": c.v1.billing_portal.configurations.create(
            {
                "features": {
                    "invoice_history": {"enabled": True},
                    "subscription_cancel": {"enabled": True, "mode": "at_period_end"},
                },
                "metadata": {"purpose": "shape"},
            }
        ).id,
    }


def test_every_served_resource_has_stripes_shape(
    stripe_local: StripeLocalHarness, world: dict[str, Any]
) -> None:
    c = stripe_local.client

    def get(path: str, **params: Any) -> dict[str, Any]:
        data: dict[str, Any] = c.raw_request("get", path, **params).data  # type: ignore[assignment]
        return data

    seen: set[str] = set()

    def check(obj: dict[str, Any], resource: str | None = None) -> None:
        assert_shape(obj, resource)
        seen.add(resource or obj["object"])

    check(get(f"/v1/customers/{world['customer']}"))
    assert_list(get("/v1/customers"), "customer")
    check(get(f"/v1/products/{world['product']}"))
    assert_list(get("/v1/products"), "product")
    for price in world["prices"]:
        check(get(f"/v1/prices/{price}"))
    assert_list(get("/v1/prices", lookup_keys=["shape_monthly"]), "price")
    for pm in get(f"/v1/customers/{world['customer']}/payment_methods")["data"]:
        check(pm)
    for session in world["sessions"]:
        check(get(f"/v1/checkout/sessions/{session}"))
        for line in get(f"/v1/checkout/sessions/{session}/line_items")["data"]:
            check(line, "item")
    assert_list(get("/v1/checkout/sessions"), "checkout.session")
    check(world["portal"])
    check(get(f"/v1/billing_portal/configurations/{world['portal']['configuration']}"))
    check(get(f"/v1/billing_portal/configurations/{world['portal_configuration']}"))
    assert_list(get("/v1/billing_portal/configurations"), "billing_portal.configuration")
    sub = get(f"/v1/subscriptions/{world['subscription']}")
    check(sub)
    assert sub["status"] == "past_due"
    assert_list(get("/v1/subscriptions", status="all"), "subscription")
    for item in get("/v1/subscription_items", subscription=world["subscription"])["data"]:
        check(item)
    invoices = get("/v1/invoices", customer=world["customer"], limit=100)["data"]
    assert {i["billing_reason"] for i in invoices} >= {
        "subscription_create",
        "subscription_update",
        "subscription_cycle",
        "manual",
    }
    for invoice in invoices:
        check(invoice)
        for line in get(f"/v1/invoices/{invoice['id']}/lines")["data"]:
            check(line)
        expanded = get(f"/v1/invoices/{invoice['id']}", expand=["payments"])
        for payment in expanded["payments"]["data"]:
            check(payment)
    discounted = [i for i in invoices if i["discounts"]]
    assert discounted and any(i["total_taxes"] for i in invoices)
    for invoice in discounted:
        for discount in get(f"/v1/invoices/{invoice['id']}", expand=["discounts"])["discounts"]:
            check(discount)
    for coupon in world["coupons"]:
        check(get(f"/v1/coupons/{coupon}", expand=["applies_to"]))
    assert_list(get("/v1/coupons"), "coupon")
    check(get(f"/v1/promotion_codes/{world['promotion_code']}"))
    assert_list(get("/v1/promotion_codes", code="shape25"), "promotion_code")
    for rate in get("/v1/tax_rates")["data"]:
        check(rate)
    for tax_id in get(f"/v1/customers/{world['customer']}/tax_ids")["data"]:
        check(tax_id)
    check(get(f"/v1/subscriptions/{world['subscription']}", expand=["discounts"])["discounts"][0])
    check(c.raw_request("delete", "/v1/coupons/TENOFF").data, "deleted_coupon")  # type: ignore[arg-type]
    deleted_id = get(f"/v1/customers/{world['customer']}", expand=["tax_ids"])["tax_ids"]["data"][0]["id"]
    check(
        c.raw_request("delete", f"/v1/customers/{world['customer']}/tax_ids/{deleted_id}").data,  # type: ignore[arg-type]
        "deleted_tax_id",
    )
    check(get(f"/v1/invoiceitems/{world['invoice_item']}"))
    assert_list(get("/v1/invoiceitems"), "invoiceitem")
    assert_list(get("/v1/invoice_payments"), "invoice_payment")
    for pi in get("/v1/payment_intents", limit=100)["data"]:
        check(pi)
    statuses = set()
    for charge in get("/v1/charges", limit=100)["data"]:
        check(charge)
        statuses.add(charge["status"])
    assert statuses == {"succeeded", "failed"}
    check(get(f"/v1/refunds/{world['refund']}"))
    assert_list(get("/v1/refunds"), "refund")
    check(get(f"/v1/disputes/{world['dispute']}"))
    assert_list(get("/v1/disputes"), "dispute")
    check(get(f"/v1/test_helpers/test_clocks/{world['clock']}"))
    assert_list(get("/v1/test_helpers/test_clocks"), "test_helpers.test_clock")

    events = get("/v1/events", limit=100)
    assert_list(events, "event")
    for event in stripe_local.events():
        check(get(f"/v1/events/{event['id']}"))
        data_object = event["data"]["object"]
        kind = data_object["object"]
        assert kind in FIXTURES, f"event {event['type']} carries a {kind}, which has no example"
        check(data_object)

    deleted = c.raw_request("delete", f"/v1/products/{world['deleted_product']}").data
    check(deleted, "deleted_product")  # type: ignore[arg-type]
    deleted = c.raw_request("delete", f"/v1/customers/{world['customer']}").data
    check(deleted, "deleted_customer")  # type: ignore[arg-type]
    check(get(f"/v1/customers/{world['customer']}"), "deleted_customer")
    deleted = c.raw_request("delete", f"/v1/test_helpers/test_clocks/{world['clock']}").data
    check(deleted, "deleted_test_helpers.test_clock")  # type: ignore[arg-type]

    # Every resource in the project's copy of Stripe's examples is served and was checked.
    assert seen == set(FIXTURES) - {"plan"}, set(FIXTURES) - seen
    # `plan` is checked where the stand-in serves it: inside subscription items.
    assert sub["items"]["data"][0]["plan"]["object"] == "plan"
