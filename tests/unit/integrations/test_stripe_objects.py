"""The typed Stripe objects the webhook handlers read (`integrations.stripe.objects`), parsed
from Stripe's own published example of each resource (tests/data/stripe_fixtures.json) and from
the shapes that differ between API versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chronote_billing.integrations.stripe.objects import (
    Charge,
    CheckoutSession,
    Dispute,
    Event,
    Invoice,
    PaymentIntent,
    Subscription,
)

EXAMPLES: dict[str, Any] = json.loads(
    (Path(__file__).parents[2] / "data" / "stripe_fixtures.json").read_text(encoding="utf-8")
)["resources"]


def test_stripes_examples_parse_and_keep_what_the_handlers_read() -> None:
    sub = Subscription.model_validate(EXAMPLES["subscription"])
    item = EXAMPLES["subscription"]["items"]["data"][0]
    assert sub.id == EXAMPLES["subscription"]["id"] and sub.item.id == item["id"]
    assert (sub.period_start, sub.period_end) == (item["current_period_start"], item["current_period_end"])

    inv = Invoice.model_validate(EXAMPLES["invoice"])
    assert inv.subscription == "subscription"  # named under `parent` since API 2025-03
    assert inv.lines[0].proration is True and inv.subscription_line() is None

    cs = CheckoutSession.model_validate(EXAMPLES["checkout.session"])
    assert (
        cs.payment_intent == EXAMPLES["checkout.session"]["payment_intent"]
        and cs.payment_intent_object is None
    )
    assert PaymentIntent.model_validate(EXAMPLES["payment_intent"]).id == EXAMPLES["payment_intent"]["id"]
    assert Charge.model_validate(EXAMPLES["charge"]).amount == EXAMPLES["charge"]["amount"]
    assert Dispute.model_validate(EXAMPLES["dispute"]).charge == EXAMPLES["dispute"]["charge"]
    event = Event.model_validate({**EXAMPLES["event"], "data": {"object": EXAMPLES["charge"]}})
    assert event.object["id"] == EXAMPLES["charge"]["id"]


def test_expanded_fields_are_ids_and_the_expanded_objects_are_kept() -> None:
    cs = CheckoutSession.model_validate(
        {
            "id": "cs_1",
            "customer": {"id": "cus_1", "object": "customer"},
            "client_reference_id": "acct_1",
            "metadata": {"chronote_account_id": "acct_2", "n": 3},
            "payment_intent": {"id": "pi_1", "created": 1700000000},
            "subscription": {"id": "sub_1", "items": {"data": []}, "current_period_end": 5},
        }
    )
    assert (cs.customer, cs.payment_intent, cs.subscription) == ("cus_1", "pi_1", "sub_1")
    assert cs.payment_intent_object is not None and cs.payment_intent_object.created == 1700000000
    assert cs.subscription_object is not None and cs.subscription_object.period_end == 5
    assert cs.metadata["n"] == "3" and cs.account_ids() == ["acct_2", "acct_1"]


def test_an_older_invoice_names_its_subscription_and_its_line_price() -> None:
    inv = Invoice.model_validate(
        {
            "id": "in_1",
            "subscription": {"id": "sub_9"},
            "status_transitions": {"paid_at": 42},
            "lines": {
                "data": [
                    {"amount": -300, "proration": True, "price": {"lookup_key": "old"}},
                    {"amount": 900, "pricing": {"price_details": {"price": {"lookup_key": "new"}}}},
                ]
            },
        }
    )
    assert (inv.subscription, inv.paid_at) == ("sub_9", 42)
    line = inv.subscription_line()
    assert line is not None and (line.amount, line.lookup_key) == (900, "new")
