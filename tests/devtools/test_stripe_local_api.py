"""The local Stripe stand-in's API conventions, through the real `stripe` SDK: auth, errors,
idempotency keys, lists and filters, expand, events, and signed webhooks over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import stripe
from typer.testing import CliRunner

from chronote_stripe_local.params import parse_pairs
from chronote_stripe_local.testing import StripeLocalHarness
from chronote_stripe_local.webhooks import sign


def test_form_decoding_matches_stripes_bracket_notation() -> None:
    decoded = parse_pairs(
        [
            ("line_items[0][price]", "price_a"),
            ("line_items[0][quantity]", "2"),
            ("line_items[1][price]", "price_b"),
            ("metadata[0]", "zero"),
            ("metadata[plan]", "pro"),
            ("expand[]", "subscription"),
            ("expand[]", "customer"),
            ("lookup_keys[0]", "a"),
            ("description", ""),
        ]
    )
    assert decoded == {
        "line_items": [{"price": "price_a", "quantity": "2"}, {"price": "price_b"}],
        "metadata": {"0": "zero", "plan": "pro"},
        "expand": ["subscription", "customer"],
        "lookup_keys": ["a"],
        "description": "",
    }


def test_api_key_is_required(stripe_local: StripeLocalHarness) -> None:
    base = {"api": stripe_local.url}
    with pytest.raises(stripe.AuthenticationError) as live:
        stripe.StripeClient("sk_live_123456789012", base_addresses=base).v1.customers.list()  # type: ignore[arg-type]
    assert live.value.http_status == 401 and "Invalid API Key" in str(live.value.user_message)
    response = httpx.get(f"{stripe_local.url}/v1/customers")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "You did not provide an API key" in response.json()["error"]["message"]
    assert stripe.StripeClient("rk_test_restricted", base_addresses=base).v1.customers.list().data == []  # type: ignore[arg-type]


def test_missing_objects_and_bad_params_raise_the_sdks_errors(stripe_local: StripeLocalHarness) -> None:
    c = stripe_local.client
    with pytest.raises(stripe.InvalidRequestError) as missing:
        c.v1.subscriptions.retrieve("sub_nope")
    error = missing.value
    assert (error.http_status, error.code, error.param) == (404, "resource_missing", "id")
    assert error.json_body["error"]["message"] == "No such subscription: 'sub_nope'"
    with pytest.raises(stripe.InvalidRequestError) as bad:
        c.v1.checkout.sessions.create({"success_url": "https://x"})
    assert (bad.value.http_status, bad.value.code, bad.value.param) == (400, "parameter_missing", "mode")
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        c.raw_request("get", "/v1/payouts")
    assert unknown.value.http_status == 404


def test_idempotency_key_replays_the_first_response(stripe_local: StripeLocalHarness) -> None:
    c = stripe_local.client
    first = c.v1.customers.create({"email": "a@example.com"}, {"idempotency_key": "cust-acct-1"})
    again = c.v1.customers.create({"email": "a@example.com"}, {"idempotency_key": "cust-acct-1"})
    assert again.id == first.id
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(c.v1.customers.list().data) == 1
    assert [e["type"] for e in stripe_local.events()] == ["customer.created"]
    assert again.last_response.body == first.last_response.body

    with pytest.raises(stripe.IdempotencyError) as conflict:
        c.v1.customers.create({"email": "b@example.com"}, {"idempotency_key": "cust-acct-1"})
    assert conflict.value.http_status == 400
    assert "same parameters" in str(conflict.value.user_message)
    # Requests that failed validation are not saved: the same key may be used again.
    with pytest.raises(stripe.InvalidRequestError):
        c.v1.prices.create({"currency": "usd"}, {"idempotency_key": "price-1"})
    product = c.v1.products.create({"name": "P"})
    price = c.v1.prices.create(
        {"currency": "usd", "unit_amount": 5, "product": product.id}, {"idempotency_key": "price-1"}
    )
    assert price.unit_amount == 5


def test_lookup_keys_filter_archive_and_transfer(stripe_local: StripeLocalHarness) -> None:
    c = stripe_local.client
    product = c.v1.products.create({"name": "Chronote Server"})

    def price(amount: int, key: str | None, interval: str = "month", **extra: Any) -> Any:
        params = {
            "product": product.id,
            "currency": "usd",
            "unit_amount": amount,
            "recurring": {"interval": interval},
            **extra,
        }
        if key:
            params["lookup_key"] = key
        return c.v1.prices.create(params)

    basic = price(1200, "chronote_basic_monthly")
    pro = price(2900, "chronote_pro_monthly")
    price(29000, "chronote_pro_annual", "year")
    found = c.v1.prices.list(
        {"lookup_keys": ["chronote_basic_monthly", "chronote_pro_monthly"], "expand": ["data.product"]}
    )
    assert sorted(p.lookup_key for p in found.data) == ["chronote_basic_monthly", "chronote_pro_monthly"]
    assert found.data[0].product.name == "Chronote Server"
    assert [
        p.id
        for p in c.v1.prices.list(
            {"lookup_keys": ["chronote_pro_annual"], "recurring": {"interval": "month"}}
        ).data
    ] == []

    with pytest.raises(stripe.InvalidRequestError) as taken:
        price(3500, "chronote_pro_monthly")
    assert taken.value.param == "lookup_key"
    new_pro = price(3500, "chronote_pro_monthly", transfer_lookup_key=True)
    assert c.v1.prices.retrieve(pro.id).lookup_key is None
    assert [p.id for p in c.v1.prices.list({"lookup_keys": ["chronote_pro_monthly"]}).data] == [new_pro.id]

    archived = c.v1.prices.update(basic.id, {"active": False})
    assert archived.active is False
    active = c.v1.prices.list({"active": True, "product": product.id})
    assert basic.id not in [p.id for p in active.data] and len(active.data) == 3
    updated = [e for e in stripe_local.events("price.updated") if e["data"]["object"]["id"] == basic.id]
    assert updated[-1]["data"]["previous_attributes"] == {"active": True}


def test_lists_paginate_like_stripe(stripe_local: StripeLocalHarness) -> None:
    c = stripe_local.client
    ids = [
        c.v1.customers.create({"email": f"p{i}@example.com", "metadata": {"n": str(i)}}).id for i in range(23)
    ]
    page = c.v1.customers.list({"limit": 10})
    assert page.has_more and len(page.data) == 10 and page.url == "/v1/customers"
    assert page.data[0].id == ids[-1]  # newest first
    assert [cust.id for cust in page.auto_paging_iter()] == ids[::-1]
    before = c.v1.customers.list({"limit": 3, "ending_before": ids[5]})
    assert [cust.id for cust in before.data] == ids[8:5:-1]
    found = c.v1.customers.search({"query": "metadata['n']:'7'"})
    assert [cust.id for cust in found.data] == [ids[7]]
    assert [cust.id for cust in c.v1.customers.list({"email": "p3@example.com"}).data] == [ids[3]]


def test_events_are_listed_and_filtered(stripe_local: StripeLocalHarness) -> None:
    c = stripe_local.client
    customer = c.v1.customers.create({"email": "e@example.com"})
    c.v1.customers.update(customer.id, {"name": "Eve", "metadata": {"k": "v"}})
    events = c.v1.events.list({"type": "customer.*"})
    assert [e.type for e in events.data] == ["customer.updated", "customer.created"]
    updated = c.v1.events.retrieve(events.data[0].id)
    assert updated.data.previous_attributes.to_dict() == {"name": None, "metadata": {"k": None}}
    assert (
        updated.request.id.startswith("req_")
        and updated.api_version == stripe._api_version._ApiVersion.CURRENT
    )
    created = events.data[1].created
    assert c.v1.events.list({"created": {"gt": created + 10}}).data == []
    assert len(c.v1.events.list({"types": ["customer.created"], "created": {"gte": created}}).data) == 1


class _Receiver(BaseHTTPRequestHandler):
    statuses: list[int] = []
    received: list[tuple[bytes, str]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((body, self.headers["Stripe-Signature"]))
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"statuses": [], "received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/webhooks/stripe", handler
    server.shutdown()
    server.server_close()


def test_webhooks_are_signed_delivered_in_order_and_retried(
    stripe_local: StripeLocalHarness, receiver: tuple[str, type[_Receiver]]
) -> None:
    url, handler = receiver
    handler.statuses = [500]  # the first delivery fails and is retried
    webhooks = stripe_local.stand_in.webhooks
    backoff = webhooks.backoff
    webhooks.backoff = 1.5  # the retry comes after the next event's first attempt
    try:
        stripe_local.send_webhooks_to(url)
        c = stripe_local.client
        customer = c.v1.customers.create({"email": "w@example.com"})
        c.v1.customers.update(customer.id, {"name": "W"})
        assert stripe_local.wait_for_webhooks(10)
        # The receiver sees the retry before the stand-in has recorded its answer (and marked
        # the event delivered), so wait on the stand-in's own record, not on the receiver.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(d.attempt == 2 and d.ok for d in webhooks.deliveries):
            time.sleep(0.02)
    finally:
        webhooks.backoff = backoff

    bodies = [(json.loads(body)["id"], json.loads(body)["type"]) for body, _ in handler.received]
    created_id = stripe_local.events("customer.created")[0]["id"]
    assert bodies[0] == (created_id, "customer.created")  # first attempt, answered 500
    assert bodies[1][1] == "customer.updated"  # later events are not held up
    assert (created_id, "customer.created") in bodies[2:]  # the retry
    for body, signature in handler.received:
        event = stripe.Webhook.construct_event(body, signature, stripe_local.webhook_secret)
        assert event.object == "event"
    attempts = [(d.event_type, d.attempt, d.status) for d in stripe_local.stand_in.webhooks.deliveries]
    assert ("customer.created", 1, 500) in attempts and ("customer.created", 2, 200) in attempts
    assert c.v1.events.retrieve(created_id).pending_webhooks == 0

    body, signature = handler.received[0]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(
            body.replace(b"customer", b"cust0mer"), signature, stripe_local.webhook_secret
        )
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, signature, "whsec_other")


def test_signature_format() -> None:
    header = sign(b'{"id": "evt_1"}', "whsec_abc", timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    stripe.WebhookSignature.verify_header('{"id": "evt_1"}', header, "whsec_abc", tolerance=None)


def test_cli_command_is_registered() -> None:
    from chronote_billing.cli.main import app

    result = CliRunner().invoke(app, ["stripe-local", "--help"])
    assert result.exit_code == 0
    assert "--webhook-url" in result.output and "--port" in result.output


def test_unknown_parameters_are_refused_like_stripe(stripe_local: StripeLocalHarness) -> None:
    c = stripe_local.client
    with pytest.raises(stripe.InvalidRequestError) as top:
        c.raw_request("post", "/v1/customers", emial="typo@example.com")
    assert (top.value.code, top.value.param) == ("parameter_unknown", "emial")
    assert "Received unknown parameter: emial" in str(top.value.user_message)
    with pytest.raises(stripe.InvalidRequestError) as nested:
        c.raw_request(
            "post",
            "/v1/checkout/sessions",
            mode="payment",
            success_url="https://x",
            line_items=[{"pric": "p"}],
        )
    assert nested.value.param == "line_items[0][pric]"
    # Valid Stripe parameters the stand-in does not act on are accepted, as is any metadata key.
    customer = c.v1.customers.create(
        {"email": "a@example.com", "preferred_locales": ["en"], "metadata": {"x_y": "1"}}
    )
    assert customer.metadata["x_y"] == "1"


def test_every_route_names_a_real_sdk_parameter_type() -> None:
    from chronote_stripe_local.api import PARAMS, ROUTES
    from chronote_stripe_local.validation import params_class

    for method, path, _handler in ROUTES:
        if "/test_helpers/charges/" in path or path.endswith("/advance_time"):
            continue  # stand-in only
        assert (method, path) in PARAMS, (method, path)
        params_class(PARAMS[(method, path)])


def test_malformed_requests_get_stripe_errors_not_500s(stripe_local: StripeLocalHarness) -> None:
    from chronote_stripe_local.server import TEST_SECRET_KEY

    auth = {"Authorization": f"Bearer {TEST_SECRET_KEY}"}
    # A numeric or empty top-level key is an unknown parameter, not a crash.
    for body in ("0=x", "=x"):
        r = stripe_local.http.post(
            "/v1/customers",
            content=body,
            headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    # Invoice items are dated by `date`: filtering them by creation time works.
    listed = stripe_local.http.get("/v1/invoiceitems", params={"created[gt]": "1"}, headers=auth)
    assert listed.status_code == 200 and listed.json()["object"] == "list"
    c = stripe_local.client
    product = c.v1.products.create({"name": "Decimal"})
    for bad in ("abc", "inf", "-5"):
        with pytest.raises(stripe.InvalidRequestError) as refused:
            c.v1.prices.create({"product": product.id, "currency": "usd", "unit_amount_decimal": bad})
        assert refused.value.code == "parameter_invalid_decimal"
    price = c.v1.prices.create({"product": product.id, "currency": "usd", "unit_amount_decimal": "1250.7"})
    assert price.unit_amount == 1250
    # Paying a Checkout session whose customer was deleted meanwhile: Stripe's error on the page.
    customer = c.v1.customers.create({"email": "gone@example.com"})
    session = c.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": customer.id,
            "line_items": [{"price": price.id, "quantity": 1}],
            "success_url": "https://example.com/ok",
        }
    )
    c.v1.customers.delete(customer.id)
    paid = stripe_local.pay_checkout(session)
    assert paid.status_code in (400, 404) and "No such customer" in paid.text
