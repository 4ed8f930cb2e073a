"""The local Stripe stand-in's flows, driven as the billing service and a person drive Stripe:
the SDK for API calls, httpx on the hosted Checkout and billing portal pages, test clocks for time."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import stripe

from chronote_stripe_local.testing import (
    CARD_DECLINED,
    CARD_DECLINES_RENEWALS,
    CARD_OK,
    StripeLocalHarness,
)

START = 1_800_000_000  # 2027-01-15T08:00:00Z
DAY = 86400


@pytest.fixture
def catalog(stripe_local: StripeLocalHarness) -> SimpleNamespace:
    c = stripe_local.client
    personal = c.v1.products.create({"name": "Chronote Personal"})
    credits = c.v1.products.create({"name": "Chronote Credits"})

    def price(product: Any, amount: int, key: str, interval: str | None = None, **metadata: str) -> Any:
        params: dict[str, Any] = {
            "product": product.id,
            "currency": "usd",
            "unit_amount": amount,
            "lookup_key": key,
            "metadata": metadata,
        }
        if interval:
            params["recurring"] = {"interval": interval}
        return c.v1.prices.create(params)

    return SimpleNamespace(
        monthly=price(
            personal, 900, "chronote_personal_pro_monthly", "month", plan="personal_pro", scope="personal"
        ),
        annual=price(
            personal, 9000, "chronote_personal_pro_annual", "year", plan="personal_pro", scope="personal"
        ),
        max=price(
            personal, 2900, "chronote_personal_max_monthly", "month", plan="personal_max", scope="personal"
        ),
        pack=price(credits, 1500, "chronote_credits_1000", credits="1000", scope="any"),
    )


def on_clock(stripe_local: StripeLocalHarness, **fields: Any) -> tuple[Any, Any]:
    c = stripe_local.client
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": START})
    customer = c.v1.customers.create(
        {
            "email": "ada@example.com",
            "test_clock": clock.id,
            "metadata": {"chronote_account_id": "acct_ada"},
            **fields,
        }
    )
    return clock, customer


def subscribe(stripe_local: StripeLocalHarness, customer: Any, price: Any, card: str = CARD_OK) -> Any:
    c = stripe_local.client
    session = c.v1.checkout.sessions.create(
        {
            "mode": "subscription",
            "customer": customer.id,
            "client_reference_id": "acct_ada",
            "line_items": [{"price": price.id, "quantity": 1}],
            "success_url": "https://chronote.example/billing/done?session={CHECKOUT_SESSION_ID}",
            "cancel_url": "https://chronote.example/billing",
            "metadata": {"chronote_account_id": "acct_ada"},
            "subscription_data": {"metadata": {"chronote_account_id": "acct_ada", "plan": "personal_pro"}},
        }
    )
    assert stripe_local.pay_checkout(session, card=card).status_code == 303
    session = c.v1.checkout.sessions.retrieve(session.id)
    return c.v1.subscriptions.retrieve(session.subscription)


def test_checkout_subscription_paid_on_the_hosted_page(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    customer = c.v1.customers.create(
        {"email": "ada@example.com", "metadata": {"chronote_account_id": "acct_ada"}}
    )
    session = c.v1.checkout.sessions.create(
        {
            "mode": "subscription",
            "customer": customer.id,
            "client_reference_id": "acct_ada",
            "line_items": [{"price": catalog.monthly.id, "quantity": 1}],
            "success_url": "https://chronote.example/done?session={CHECKOUT_SESSION_ID}",
            "cancel_url": "https://chronote.example/billing",
            "metadata": {"chronote_account_id": "acct_ada"},
            "subscription_data": {"metadata": {"chronote_account_id": "acct_ada"}},
        }
    )
    assert session.status == "open" and session.payment_status == "unpaid" and session.amount_total == 900
    assert session.url.startswith(stripe_local.url + "/pay/cs_test_")

    page = stripe_local.http.get(session.url)
    assert page.status_code == 200
    assert "$9.00" in page.text and "Chronote Personal" in page.text
    assert "href='https://chronote.example/billing'" in page.text  # the Cancel link goes to cancel_url

    paid = stripe_local.http.post(
        session.url, data={"card": CARD_OK, "email": "ada@example.com", "name": "Ada"}
    )
    assert paid.status_code == 303
    assert paid.headers["location"] == f"https://chronote.example/done?session={session.id}"

    session = c.v1.checkout.sessions.retrieve(session.id, {"expand": ["subscription", "line_items"]})
    assert (session.status, session.payment_status) == ("complete", "paid")
    assert session.customer == customer.id and session.client_reference_id == "acct_ada"
    assert session.line_items.data[0].price.id == catalog.monthly.id
    sub = session.subscription
    assert sub.status == "active" and sub.customer == customer.id
    assert sub.metadata.to_dict() == {"chronote_account_id": "acct_ada"}
    item = sub["items"].data[0]
    assert item.price.id == catalog.monthly.id
    assert item.current_period_end - item.current_period_start in range(28 * DAY, 32 * DAY)
    assert sub.default_payment_method is not None

    invoice = c.v1.invoices.retrieve(sub.latest_invoice, {"expand": ["payments"]})
    assert session.invoice == invoice.id
    assert (invoice.billing_reason, invoice.status, invoice.amount_paid) == (
        "subscription_create",
        "paid",
        900,
    )
    assert invoice.parent.subscription_details.subscription == sub.id
    assert invoice.parent.subscription_details.metadata.to_dict() == {"chronote_account_id": "acct_ada"}
    line = invoice.lines.data[0]
    assert line.pricing.price_details.price == catalog.monthly.id
    assert (line.period.start, line.period.end) == (item.current_period_start, item.current_period_end)
    pi = c.v1.payment_intents.retrieve(invoice.payments.data[0].payment.payment_intent)
    assert pi.status == "succeeded" and pi.amount_received == 900
    charge = c.v1.charges.retrieve(pi.latest_charge)
    assert charge.paid and charge.amount == 900 and charge.customer == customer.id

    types = stripe_local.received_types()
    for expected in (
        "customer.subscription.created",
        "invoice.paid",
        "payment_intent.succeeded",
        "charge.succeeded",
    ):
        assert expected in types
    assert types[-1] == "checkout.session.completed"
    assert types.index("customer.subscription.created") < types.index("invoice.paid")
    completed = stripe_local.received[-1].data.object
    assert completed.subscription == sub.id and completed.customer == customer.id
    assert completed.payment_status == "paid" and completed.client_reference_id == "acct_ada"
    assert completed.metadata.to_dict() == {"chronote_account_id": "acct_ada"}

    again = stripe_local.http.get(session.url if session.url else f"/pay/{session.id}")
    assert "complete" in again.text


def test_cancel_link_and_expiry(stripe_local: StripeLocalHarness, catalog: SimpleNamespace) -> None:
    c = stripe_local.client
    session = c.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "line_items": [{"price": catalog.pack.id, "quantity": 1}],
            "success_url": "https://chronote.example/ok",
            "cancel_url": "https://chronote.example/no",
        }
    )
    assert "https://chronote.example/no" in stripe_local.http.get(session.url).text
    expired = c.v1.checkout.sessions.expire(session.id)
    assert expired.status == "expired" and expired.url is None
    assert stripe_local.received_types()[-1] == "checkout.session.expired"
    response = stripe_local.http.post(f"/pay/{session.id}", data={"card": CARD_OK})
    assert response.status_code == 400 and "expired" in response.text
    with pytest.raises(stripe.InvalidRequestError):
        c.v1.checkout.sessions.expire(session.id)


def test_declined_card_leaves_the_session_open(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    customer = c.v1.customers.create({"email": "ben@example.com"})
    session = c.v1.checkout.sessions.create(
        {
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": catalog.monthly.id, "quantity": 1}],
            "success_url": "https://x/ok",
        }
    )
    response = stripe_local.pay_checkout(session, card=CARD_DECLINED)
    assert response.status_code == 402 and "declined" in response.text
    assert c.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert c.v1.subscriptions.list({"customer": customer.id}).data == []


def test_checkout_in_payment_mode_buys_a_pack(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    customer = c.v1.customers.create(
        {"email": "org@example.com", "metadata": {"chronote_account_id": "acct_org"}}
    )
    session = c.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": customer.id,
            "client_reference_id": "acct_org",
            "line_items": [{"price": catalog.pack.id, "quantity": 2}],
            "success_url": "https://chronote.example/ok?cs={CHECKOUT_SESSION_ID}",
            "metadata": {"chronote_account_id": "acct_org", "pack": "chronote_credits_1000"},
            "payment_intent_data": {
                "metadata": {"chronote_account_id": "acct_org"},
                "setup_future_usage": "off_session",
            },
        }
    )
    assert session.amount_total == 3000 and session.subscription is None
    assert stripe_local.pay_checkout(session).status_code == 303
    session = c.v1.checkout.sessions.retrieve(session.id, {"expand": ["payment_intent.latest_charge"]})
    assert (session.status, session.payment_status, session.subscription) == ("complete", "paid", None)
    pi = session.payment_intent
    assert pi.status == "succeeded" and pi.amount == 3000 and pi.customer == customer.id
    assert pi.metadata.to_dict() == {"chronote_account_id": "acct_org"}
    assert pi.latest_charge.metadata.to_dict() == {"chronote_account_id": "acct_org"}
    # setup_future_usage saved the card on the customer: it can pay off-session later.
    methods = c.v1.customers.payment_methods.list(customer.id)
    assert [m.id for m in methods.data] == [pi.payment_method]
    types = stripe_local.received_types()
    assert types[-3:] == ["charge.succeeded", "payment_intent.succeeded", "checkout.session.completed"]
    assert stripe_local.received[-1].data.object.payment_intent == pi.id


def test_plan_change_with_proration_keeps_one_subscription(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    clock, customer = on_clock(stripe_local)
    sub = subscribe(stripe_local, customer, catalog.monthly)
    start, end = sub["items"].data[0].current_period_start, sub["items"].data[0].current_period_end
    stripe_local.advance_clock(clock.id, seconds=(end - start) // 2)

    updated = c.v1.subscriptions.update(
        sub.id,
        {
            "items": [{"id": sub["items"].data[0].id, "price": catalog.max.id}],
            "proration_behavior": "always_invoice",
        },
    )
    assert [i.price.id for i in updated["items"].data] == [catalog.max.id]
    assert (updated["items"].data[0].current_period_start, updated["items"].data[0].current_period_end) == (
        start,
        end,
    )
    assert len(c.v1.subscriptions.list({"customer": customer.id}).data) == 1

    invoice = c.v1.invoices.retrieve(updated.latest_invoice)
    assert (invoice.billing_reason, invoice.status) == ("subscription_update", "paid")
    lines = invoice.lines.data
    assert all(line.parent.subscription_item_details.proration for line in lines)
    credit, charge = sorted(lines, key=lambda line: line.amount)
    assert credit.amount == -450 and credit.description.startswith("Unused time on Chronote Personal")
    assert charge.amount == 1450 and charge.description.startswith("Remaining time on Chronote Personal")
    assert invoice.amount_paid == 1000

    event = next(e for e in reversed(stripe_local.received) if e.type == "customer.subscription.updated")
    assert event.data.previous_attributes["items"]["data"][0]["price"]["id"] == catalog.monthly.id
    assert event.data.object["items"]["data"][0]["price"]["id"] == catalog.max.id


def test_prorations_wait_for_the_renewal_invoice(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    clock, customer = on_clock(stripe_local)
    sub = subscribe(stripe_local, customer, catalog.max)
    stripe_local.advance_clock(clock.id, seconds=10 * DAY)
    updated = c.v1.subscriptions.update(
        sub.id, {"items": [{"id": sub["items"].data[0].id, "price": catalog.monthly.id}]}
    )
    assert updated.latest_invoice == sub.latest_invoice  # create_prorations: nothing invoiced yet
    pending = c.v1.invoice_items.list({"customer": customer.id, "pending": True}).data
    assert sorted(ii.amount < 0 for ii in pending) == [False, True] and all(ii.proration for ii in pending)

    stripe_local.advance_clock(clock.id, seconds=25 * DAY)
    renewal = c.v1.invoices.retrieve(c.v1.subscriptions.retrieve(sub.id).latest_invoice)
    assert renewal.billing_reason == "subscription_cycle" and renewal.status == "paid"
    assert len(renewal.lines.data) == 3
    assert sum(line.amount for line in renewal.lines.data) == renewal.total
    assert c.v1.invoice_items.list({"customer": customer.id, "pending": True}).data == []

    none = c.v1.subscriptions.update(
        sub.id,
        {"items": [{"id": sub["items"].data[0].id, "price": catalog.max.id}], "proration_behavior": "none"},
    )
    assert none["items"].data[0].price.id == catalog.max.id
    assert c.v1.invoice_items.list({"customer": customer.id, "pending": True}).data == []


def test_interval_change_restarts_the_cycle(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    clock, customer = on_clock(stripe_local)
    sub = subscribe(stripe_local, customer, catalog.monthly)
    stripe_local.advance_clock(clock.id, seconds=3 * DAY)
    updated = c.v1.subscriptions.update(
        sub.id, {"items": [{"id": sub["items"].data[0].id, "price": catalog.annual.id}]}
    )
    item = updated["items"].data[0]
    assert item.current_period_start == START + 3 * DAY
    assert item.current_period_end - item.current_period_start in (365 * DAY, 366 * DAY)
    invoice = c.v1.invoices.retrieve(updated.latest_invoice)
    assert invoice.billing_reason == "subscription_update"
    assert sorted(line.parent.subscription_item_details.proration for line in invoice.lines.data) == [
        False,
        True,
    ]


def test_cancel_at_period_end_through_the_portal_page(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    clock, customer = on_clock(stripe_local)
    sub = subscribe(stripe_local, customer, catalog.monthly)
    portal = c.v1.billing_portal.sessions.create(
        {"customer": customer.id, "return_url": "https://chronote.example/billing"}
    )
    page = stripe_local.http.get(portal.url)
    assert page.status_code == 200 and sub.id in page.text and "Cancel at period end" in page.text
    assert "https://chronote.example/billing" in page.text

    response = stripe_local.portal(portal, "cancel_at_period_end", sub.id)
    assert response.status_code == 303
    sub = c.v1.subscriptions.retrieve(sub.id)
    end = sub["items"].data[0].current_period_end
    assert sub.cancel_at_period_end and sub.cancel_at == end and sub.status == "active"
    event = stripe_local.received[-1]
    assert event.type == "customer.subscription.updated"
    assert event.data.previous_attributes["cancel_at_period_end"] is False
    assert "Cancels on" in stripe_local.http.get(portal.url).text

    invoices_before = len(c.v1.invoices.list({"customer": customer.id}).data)
    stripe_local.advance_clock(clock.id, to=end + 3600)
    sub = c.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "canceled" and sub.ended_at == end
    assert "customer.subscription.deleted" in stripe_local.received_types()
    assert len(c.v1.invoices.list({"customer": customer.id}).data) == invoices_before


def test_portal_switch_plan_and_cancel_now(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    _clock, customer = on_clock(stripe_local)
    sub = subscribe(stripe_local, customer, catalog.monthly)
    portal = c.v1.billing_portal.sessions.create({"customer": customer.id})
    page = stripe_local.http.get(portal.url).text
    assert catalog.max.id in page and catalog.annual.id in page  # the other prices of the product

    assert stripe_local.portal(portal, "switch", sub.id, price=catalog.max.id).status_code == 303
    sub = c.v1.subscriptions.retrieve(sub.id)
    assert sub["items"].data[0].price.id == catalog.max.id
    assert c.v1.invoices.retrieve(sub.latest_invoice).billing_reason == "subscription_update"

    assert stripe_local.portal(portal, "cancel_now", sub.id).status_code == 303
    sub = c.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "canceled"
    assert stripe_local.received_types()[-1] == "customer.subscription.deleted"


def test_a_portal_configuration_decides_what_the_portal_page_offers(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    _clock, customer = on_clock(stripe_local)
    sub = subscribe(stripe_local, customer, catalog.monthly)
    config = c.v1.billing_portal.configurations.create(
        {
            "features": {
                "payment_method_update": {"enabled": True},
                "subscription_cancel": {"enabled": True, "mode": "immediately"},
                "subscription_update": {"enabled": False},
            },
            "metadata": {"who": "test"},
        }
    )
    assert not config.is_default and config.features.subscription_cancel.mode == "immediately"
    listed = c.v1.billing_portal.configurations.list({"is_default": True}).data
    assert [x.is_default for x in listed] == [True]
    portal = c.v1.billing_portal.sessions.create({"customer": customer.id, "configuration": config.id})
    assert portal.configuration == config.id
    page = stripe_local.http.get(portal.url).text
    assert "Cancel now" in page and "Use this card" in page
    assert "Switch plan" not in page and "Cancel at period end" not in page
    refused = stripe_local.portal(portal, "switch", sub.id, price=catalog.max.id)
    assert refused.status_code == 400
    assert c.v1.subscriptions.retrieve(sub.id)["items"].data[0].price.id == catalog.monthly.id

    c.v1.billing_portal.configurations.update(config.id, {"active": False})
    with pytest.raises(stripe.InvalidRequestError) as inactive:
        c.v1.billing_portal.sessions.create({"customer": customer.id, "configuration": config.id})
    assert inactive.value.param == "configuration"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        c.v1.billing_portal.sessions.create({"customer": customer.id, "configuration": "bpc_nope"})
    assert missing.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as bad:
        c.v1.billing_portal.configurations.create(
            {"features": {"customer_update": {"enabled": True, "allowed_updates": ["shoe_size"]}}}  # type: ignore[list-item]
        )
    assert bad.value.param == "features[customer_update][allowed_updates]"


def test_test_clock_renews_a_subscription(stripe_local: StripeLocalHarness, catalog: SimpleNamespace) -> None:
    c = stripe_local.client
    clock, customer = on_clock(stripe_local)
    sub = subscribe(stripe_local, customer, catalog.monthly)
    first_end = sub["items"].data[0].current_period_end
    stripe_local.received.clear()

    advanced = stripe_local.advance_clock(clock.id, to=first_end + 3600)
    assert advanced.status == "ready" and advanced.frozen_time == first_end + 3600
    sub = c.v1.subscriptions.retrieve(sub.id)
    item = sub["items"].data[0]
    assert item.current_period_start == first_end and sub.status == "active"
    invoice = c.v1.invoices.retrieve(sub.latest_invoice)
    assert (invoice.billing_reason, invoice.status, invoice.amount_paid) == (
        "subscription_cycle",
        "paid",
        900,
    )
    assert (invoice.lines.data[0].period.start, invoice.lines.data[0].period.end) == (
        first_end,
        item.current_period_end,
    )
    assert invoice.created == first_end

    types = stripe_local.received_types()
    assert "invoice.paid" in types
    updated = next(e for e in stripe_local.received if e.type == "customer.subscription.updated")
    assert updated.data.object["items"]["data"][0]["current_period_start"] == first_end
    assert "items" in updated.data.previous_attributes
    paid = next(e for e in stripe_local.received if e.type == "invoice.paid")
    assert paid.created == first_end and paid.data.object.id == invoice.id

    listed = c.v1.invoices.list({"subscription": sub.id})
    assert [i.billing_reason for i in listed.data] == ["subscription_cycle", "subscription_create"]


def test_failed_renewal_goes_past_due_then_recovers(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    clock, customer = on_clock(stripe_local)
    sub = subscribe(stripe_local, customer, catalog.monthly, card=CARD_DECLINES_RENEWALS)
    assert sub.status == "active"  # the card paid while the person was there
    end = sub["items"].data[0].current_period_end
    stripe_local.received.clear()

    stripe_local.advance_clock(clock.id, to=end + 3600)
    sub = c.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "past_due"
    invoice = c.v1.invoices.retrieve(sub.latest_invoice)
    assert (invoice.status, invoice.attempt_count) == ("open", 1)
    assert invoice.next_payment_attempt == end + 3 * DAY
    types = stripe_local.received_types()
    assert "invoice.payment_failed" in types and "invoice.paid" not in types
    failed = next(e for e in stripe_local.received if e.type == "invoice.payment_failed")
    assert failed.data.object.parent.subscription_details.subscription == sub.id
    past_due = [e for e in stripe_local.received if e.type == "customer.subscription.updated"][-1]
    assert (
        past_due.data.object.status == "past_due" and past_due.data.previous_attributes["status"] == "active"
    )

    # Stripe retries on day 3; still declined.
    stripe_local.advance_clock(clock.id, to=end + 3 * DAY + 60)
    assert c.v1.invoices.retrieve(invoice.id).attempt_count == 2

    # The person puts a working card in the portal: the open invoice is paid, the plan is back.
    portal = c.v1.billing_portal.sessions.create({"customer": customer.id})
    assert stripe_local.portal(portal, "use_card", card=CARD_OK).status_code == 303
    assert c.v1.invoices.retrieve(invoice.id).status == "paid"
    assert c.v1.subscriptions.retrieve(sub.id).status == "active"


def test_exhausted_retries_cancel_the_subscription(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    clock, customer = on_clock(stripe_local)
    sub = subscribe(stripe_local, customer, catalog.monthly, card=CARD_DECLINES_RENEWALS)
    end = sub["items"].data[0].current_period_end
    stripe_local.advance_clock(clock.id, to=end + 8 * DAY)
    sub = c.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "canceled" and sub.cancellation_details.reason == "payment_failed"
    assert stripe_local.received_types().count("invoice.payment_failed") == 4


def test_partial_and_full_refunds(stripe_local: StripeLocalHarness, catalog: SimpleNamespace) -> None:
    c = stripe_local.client
    customer = c.v1.customers.create({"email": "org@example.com"})
    session = c.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": customer.id,
            "line_items": [{"price": catalog.pack.id, "quantity": 1}],
            "success_url": "https://x/ok",
        }
    )
    stripe_local.pay_checkout(session)
    pi = c.v1.payment_intents.retrieve(c.v1.checkout.sessions.retrieve(session.id).payment_intent)

    refund = c.v1.refunds.create({"payment_intent": pi.id, "amount": 500, "reason": "requested_by_customer"})
    assert (refund.amount, refund.status, refund.charge) == (500, "succeeded", pi.latest_charge)
    charge = c.v1.charges.retrieve(pi.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (500, False)
    refunded = next(e for e in stripe_local.received if e.type == "charge.refunded")
    assert refunded.data.object.amount_refunded == 500
    assert refunded.data.previous_attributes["amount_refunded"] == 0
    assert stripe_local.received_types()[-2:] == ["charge.refunded", "refund.created"]

    with pytest.raises(stripe.InvalidRequestError) as too_much:
        c.v1.refunds.create({"charge": charge.id, "amount": 1001})
    assert too_much.value.code == "amount_too_large"
    c.v1.refunds.create({"charge": charge.id})
    charge = c.v1.charges.retrieve(charge.id)
    assert (charge.amount_refunded, charge.refunded) == (1500, True)
    assert [r.amount for r in charge.refunds.data] == [1000, 500]
    with pytest.raises(stripe.InvalidRequestError) as again:
        c.v1.refunds.create({"charge": charge.id})
    assert again.value.code == "charge_already_refunded"
    assert [r.amount for r in c.v1.refunds.list({"charge": charge.id}).data] == [1000, 500]


def test_dispute_helper_and_outcome(stripe_local: StripeLocalHarness, catalog: SimpleNamespace) -> None:
    c = stripe_local.client
    customer = c.v1.customers.create({"email": "org@example.com"})
    session = c.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "customer": customer.id,
            "line_items": [{"price": catalog.pack.id, "quantity": 1}],
            "success_url": "https://x/ok",
        }
    )
    stripe_local.pay_checkout(session)
    pi = c.v1.payment_intents.retrieve(c.v1.checkout.sessions.retrieve(session.id).payment_intent)

    dispute = stripe_local.dispute(pi.latest_charge)
    assert (dispute["status"], dispute["amount"], dispute["charge"]) == (
        "needs_response",
        1500,
        pi.latest_charge,
    )
    created = next(e for e in stripe_local.received if e.type == "charge.dispute.created")
    assert created.data.object.id == dispute["id"] and created.data.object.payment_intent == pi.id
    assert c.v1.charges.retrieve(pi.latest_charge).disputed is True
    with pytest.raises(stripe.InvalidRequestError) as refused:
        c.v1.refunds.create({"payment_intent": pi.id})
    assert refused.value.code == "charge_disputed"

    won = c.v1.disputes.update(dispute["id"], {"evidence": {"uncategorized_text": "winning_evidence"}})
    assert won.status == "won"
    assert "charge.dispute.closed" in stripe_local.received_types()
    assert [d.id for d in c.v1.disputes.list({"charge": pi.latest_charge}).data] == [dispute["id"]]


def test_off_session_payment_for_auto_recharge(stripe_local: StripeLocalHarness) -> None:
    c = stripe_local.client
    customer = c.v1.customers.create({"email": "org@example.com"})
    card = c.v1.payment_methods.attach("pm_card_visa", {"customer": customer.id})
    c.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": card.id}})
    default = c.v1.customers.retrieve(customer.id).invoice_settings.default_payment_method
    pi = c.v1.payment_intents.create(
        {
            "amount": 6000,
            "currency": "usd",
            "customer": customer.id,
            "payment_method": default,
            "off_session": True,
            "confirm": True,
            "metadata": {"chronote_account_id": "acct_org", "auto_recharge": "1"},
        }
    )
    assert pi.status == "succeeded" and pi.amount_received == 6000
    assert c.v1.charges.retrieve(pi.latest_charge).metadata["auto_recharge"] == "1"
    assert stripe_local.received_types()[-2:] == ["charge.succeeded", "payment_intent.succeeded"]

    failing = c.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": customer.id})
    with pytest.raises(stripe.CardError) as declined:
        c.v1.payment_intents.create(
            {
                "amount": 6000,
                "currency": "usd",
                "customer": customer.id,
                "payment_method": failing.id,
                "off_session": True,
                "confirm": True,
            }
        )
    assert declined.value.code == "card_declined" and declined.value.http_status == 402
    failed_pi = declined.value.error.payment_intent
    assert (
        failed_pi.status == "requires_payment_method" and failed_pi.last_payment_error.code == "card_declined"
    )
    assert stripe_local.received_types()[-1] == "payment_intent.payment_failed"

    with pytest.raises(stripe.InvalidRequestError) as missing:
        c.v1.payment_intents.create(
            {"amount": 6000, "currency": "usd", "customer": customer.id, "confirm": True, "off_session": True}
        )
    assert missing.value.param == "payment_method"


def test_invoice_for_a_pack_charged_to_the_default_card(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    customer = c.v1.customers.create({"email": "org@example.com", "payment_method": "pm_card_visa"})
    card = c.v1.customers.payment_methods.list(customer.id).data[0]
    c.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": card.id}})
    invoice = c.v1.invoices.create({"customer": customer.id, "metadata": {"auto_recharge": "1"}})
    c.v1.invoice_items.create(
        {"customer": customer.id, "pricing": {"price": catalog.pack.id}, "invoice": invoice.id}
    )
    invoice = c.v1.invoices.finalize_invoice(invoice.id)
    assert (invoice.status, invoice.amount_due, invoice.billing_reason) == ("open", 1500, "manual")
    invoice = c.v1.invoices.pay(invoice.id)
    assert (invoice.status, invoice.amount_paid) == ("paid", 1500)
    paid = next(e for e in stripe_local.received if e.type == "invoice.paid")
    assert paid.data.object.metadata.to_dict() == {"auto_recharge": "1"}
    assert paid.data.object.lines.data[0].pricing.price_details.price == catalog.pack.id


def test_global_clock_helper_renews_subscriptions_not_on_a_test_clock(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    customer = c.v1.customers.create({"email": "cy@example.com"})
    sub = subscribe(stripe_local, customer, catalog.monthly)
    stripe_local.advance_time(32 * DAY)
    sub = c.v1.subscriptions.retrieve(sub.id)
    assert c.v1.invoices.retrieve(sub.latest_invoice).billing_reason == "subscription_cycle"
    assert sub.status == "active"


def test_trial_then_first_payment_at_trial_end(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    clock, customer = on_clock(stripe_local)
    trial_end = START + 10 * DAY
    session = c.v1.checkout.sessions.create(
        {
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": catalog.monthly.id, "quantity": 1}],
            "success_url": "https://x/ok",
            "subscription_data": {"trial_end": trial_end, "metadata": {"chronote_account_id": "acct_ada"}},
        }
    )
    assert session.amount_total == 0
    stripe_local.pay_checkout(session)
    session = c.v1.checkout.sessions.retrieve(session.id)
    assert session.payment_status == "no_payment_required"
    sub = c.v1.subscriptions.retrieve(session.subscription)
    assert (sub.status, sub.trial_end, sub["items"].data[0].current_period_end) == (
        "trialing",
        trial_end,
        trial_end,
    )
    first = c.v1.invoices.retrieve(sub.latest_invoice)
    assert (first.status, first.total, first.billing_reason) == ("paid", 0, "subscription_create")

    stripe_local.advance_clock(clock.id, to=trial_end + 60)
    sub = c.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "active" and sub["items"].data[0].current_period_start == trial_end
    renewal = c.v1.invoices.retrieve(sub.latest_invoice)
    assert (renewal.billing_reason, renewal.status, renewal.amount_paid) == (
        "subscription_cycle",
        "paid",
        900,
    )


def test_portal_resume_undoes_a_scheduled_cancellation(
    stripe_local: StripeLocalHarness, catalog: SimpleNamespace
) -> None:
    c = stripe_local.client
    _clock, customer = on_clock(stripe_local)
    sub = subscribe(stripe_local, customer, catalog.monthly)
    c.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True})
    portal = c.v1.billing_portal.sessions.create({"customer": customer.id})
    assert "value=resume" in stripe_local.http.get(portal.url).text
    assert stripe_local.portal(portal, "resume", sub.id).status_code == 303
    sub = c.v1.subscriptions.retrieve(sub.id, {"expand": ["latest_invoice.payments"]})
    assert (sub.cancel_at_period_end, sub.cancel_at, sub.canceled_at) == (False, None, None)
    assert sub.latest_invoice.payments.data[0].status == "paid"
