"""End to end through the local Stripe stand-in and the official SDK: catalog sync, checkout,
plan changes, renewals on a test clock, failed payments, refunds and disputes. Webhooks travel
from the stand-in, signed, into the app's `POST /webhooks/stripe`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import select

import tests.stripe_payloads as stripe_payloads
from chronote_billing.accounts.models import BillingAccount
from chronote_billing.catalog.service import PlanScopeMismatch, UnknownPlan, load_catalog
from chronote_billing.core.errors import PermissionDenied
from chronote_billing.integrations.stripe.client import to_dict
from chronote_billing.notifications.models import OutboxEntry
from chronote_billing.plans.models import PlanSubscription
from chronote_billing.plans.service import ensure_free_allowance
from chronote_billing.stripe_sync.catalog_sync import sync_catalog
from chronote_billing.stripe_sync.errors import NoStripeCustomer, SubscriptionExists
from chronote_billing.stripe_sync.models import StripeSubscription
from chronote_stripe_local.testing import CARD_DECLINES_RENEWALS, StripeLocalHarness
from tests.factories import DAY, Billing, billing_environment


@pytest.fixture
def billing(stripe_local: StripeLocalHarness, db, clock, make_account) -> Iterator[Billing]:  # type: ignore[no-untyped-def]
    yield from billing_environment(stripe_local, db, clock, make_account, webhooks_must_succeed=True)


def test_catalog_sync_is_idempotent_and_archives_replaced_prices(billing: Billing) -> None:
    client = billing.service.client
    again = sync_catalog(client)
    assert not again.changed, again.actions
    # products, prices, coupons, promotion codes, the customer portal configuration
    assert again.count("unchanged") == 3 + 9 + 2 + 2 + 1

    catalog = load_catalog()
    pro = catalog.plans["personal_pro"]
    cheaper = dataclasses.replace(
        pro, prices=(dataclasses.replace(pro.prices[0], unit_amount=800), pro.prices[1])
    )
    changed = dataclasses.replace(catalog, plans={**catalog.plans, "personal_pro": cheaper})
    old = client.v1.prices.list({"lookup_keys": ["chronote_personal_pro_monthly"]}).data[0]
    report = sync_catalog(client, changed)
    assert report.count("create") == 1 and report.count("archive") == 1
    assert client.v1.prices.retrieve(old.id).active is False
    new = client.v1.prices.list({"lookup_keys": ["chronote_personal_pro_monthly"], "active": True}).data[0]
    assert new.unit_amount == 800 and new.id != old.id
    assert not sync_catalog(client, changed).changed
    sync_catalog(client)  # back to the catalog in force


def test_personal_pro_monthly_purchase_grants_the_allowance(billing: Billing) -> None:
    account_id, person = billing.person("personal")
    billing.buy_plan(account_id, person, "personal_pro")
    assert billing.plan(account_id) == "personal_pro"
    customer = billing.db.read(lambda s: s.get(BillingAccount, account_id).stripe_customer_id)
    meta = billing.service.client.v1.customers.retrieve(customer).metadata
    owner = billing.db.read(lambda s: s.get(BillingAccount, account_id).owner_ref)
    assert meta["chronote_account_id"] == account_id and meta["discord_user_id"] == owner
    assert meta["account_kind"] == "personal"
    (grant,) = [g for g in billing.grants(account_id) if g.source == "plan_allowance"]
    assert grant.amount == 1_500_000 and grant.cause_type == "invoice"
    view = billing.service.get_subscription(person, account_id)
    assert view.plan_source == "paid" and view.status == "active" and view.interval == "month"

    # A second checkout for a plan is refused: plan changes update the one subscription.
    with pytest.raises(SubscriptionExists):
        billing.service.start_checkout(person, account_id, idempotency_key="again", plan_id="personal_pro")

    # The customer portal opens this account's own customer, nobody else's.
    portal = billing.service.open_customer_portal(person, account_id, idempotency_key="portal-1")
    assert portal.customer == customer and portal.url.startswith("http")
    other_id, other = billing.person("personal")
    with pytest.raises(PermissionDenied):
        billing.service.open_customer_portal(other, account_id, idempotency_key="portal-2")
    with pytest.raises(NoStripeCustomer):
        billing.service.open_customer_portal(other, other_id, idempotency_key="portal-3")


def test_server_basic_to_pro_upgrade_keeps_one_subscription_with_proration(billing: Billing) -> None:
    account_id, manager = billing.person("server")
    clock_id = billing.on_test_clock(account_id)
    billing.buy_plan(account_id, manager, "server_basic")
    assert billing.plan(account_id) == "server_basic"
    billing.advance(clock_id, 10 * DAY)

    change = billing.service.change_plan(
        manager, account_id, plan_id="server_pro", interval="month", idempotency_key="up-1"
    )
    assert change.effective == "now" and change.invoice
    billing.harness.wait_for_webhooks()
    # A retry returns the first answer and changes nothing more.
    assert (
        billing.service.change_plan(
            manager, account_id, plan_id="server_pro", interval="month", idempotency_key="up-1"
        )
        == change
    )
    customer = billing.db.read(lambda s: s.get(BillingAccount, account_id).stripe_customer_id)
    subs = billing.service.client.v1.subscriptions.list({"customer": customer, "status": "all"}).data
    assert len(subs) == 1 and subs[0].items.data[0].price.lookup_key == "chronote_pro_monthly"
    invoice = billing.service.client.v1.invoices.retrieve(change.invoice)
    assert invoice.billing_reason == "subscription_update" and invoice.amount_paid > 0
    assert billing.plan(account_id) == "server_pro"
    upgrade = [g for g in billing.grants(account_id) if g.cause_id == change.invoice]
    assert len(upgrade) == 1
    diff = 20_000_000 - 4_800_000
    assert diff * 0.6 <= upgrade[0].amount <= diff * 0.7  # about 20 of 30 days left

    # Downgrade back to basic: takes effect at renewal, still one subscription.
    down = billing.service.change_plan(
        manager, account_id, plan_id="server_basic", interval="month", idempotency_key="down-1"
    )
    billing.harness.wait_for_webhooks()
    assert down.effective == "period_end"
    assert billing.plan(account_id) == "server_pro"
    billing.advance(clock_id, 21 * DAY)
    assert billing.plan(account_id) == "server_basic"
    subs = billing.service.client.v1.subscriptions.list({"customer": customer, "status": "all"}).data
    assert len(subs) == 1


def test_organization_buys_a_credit_pack(billing: Billing) -> None:
    account_id, operator = billing.person("organization")
    with pytest.raises(PlanScopeMismatch):
        billing.service.start_checkout(operator, account_id, idempotency_key="plan", plan_id="server_pro")
    view = billing.service.start_checkout(
        operator, account_id, idempotency_key="pack-1", pack_id="credits_5000"
    )
    assert view.mode == "payment"
    assert (
        billing.service.start_checkout(operator, account_id, idempotency_key="pack-1", pack_id="credits_5000")
        == view
    )
    assert billing.harness.pay_checkout(view.url).status_code == 303
    billing.harness.wait_for_webhooks()
    (grant,) = billing.grants(account_id)
    assert grant.source == "purchase" and grant.amount == 5_000_000
    assert grant.expires_at.year == billing.clock.now().year + 1

    # Auto-recharge: the saved card is charged off-session; credits once, however often retried.
    first = billing.service.buy_pack_off_session(account_id, "credits_1000", "recharge-1")
    assert first.granted and first.status == "succeeded"
    billing.harness.wait_for_webhooks()
    assert billing.service.buy_pack_off_session(account_id, "credits_1000", "recharge-1") == first
    assert billing.balance(account_id).available == 6_000_000


def test_renewal_on_the_test_clock_grants_a_new_allowance_and_the_rest_expires(billing: Billing) -> None:
    account_id, person = billing.person("personal")
    clock_id = billing.on_test_clock(account_id)
    billing.buy_plan(account_id, person, "personal_pro")
    billing.db.write(
        lambda s: billing.container.ledger.debit(
            s, account_id=account_id, amount=500_000, idempotency_key="use", reason="meeting"
        )
    )
    billing.advance(clock_id, 31 * DAY)
    allowances = sorted(
        (g for g in billing.grants(account_id) if g.source == "plan_allowance"), key=lambda g: g.created_at
    )
    assert len(allowances) == 2
    assert allowances[0].status in ("expired", "closed") and allowances[0].expires_at <= billing.clock.now()
    balance = billing.balance(account_id)
    assert balance.available == 1_500_000
    billing.db.write(lambda s: billing.container.ledger.sweep(s, account_id))
    statement = billing.db.read(lambda s: billing.container.ledger.statement(s, account_id)).data
    assert any(line.kind == "expiry" and line.amount == -1_000_000 for line in statement), [
        (line.kind, line.amount) for line in statement
    ]


def test_failed_renewal_goes_through_grace_to_free(billing: Billing) -> None:
    account_id, person = billing.person("personal")
    clock_id = billing.on_test_clock(account_id)
    billing.buy_plan(account_id, person, "personal_pro", card=CARD_DECLINES_RENEWALS)
    billing.advance(clock_id, 31 * DAY)
    view = billing.service.get_subscription(person, account_id)
    assert view.status == "past_due" and view.in_grace and view.plan == "personal_pro"
    # Chronote is told through the outbox, once, in the transaction that recorded the failure.
    failed = billing.db.read(
        lambda s: s.execute(
            select(OutboxEntry.type).where(
                OutboxEntry.account_id == account_id, OutboxEntry.type == "payment.failed"
            )
        ).all()
    )
    assert len(failed) == 1
    billing.advance(clock_id, 8 * DAY)
    assert billing.plan(account_id) == "personal_free"
    assert billing.db.write(
        lambda s: ensure_free_allowance(
            s,
            billing.container.ledger,
            s.get(BillingAccount, account_id),
            billing.clock.now(),
            billing.container.catalog,
        )
    )
    assert billing.balance(account_id).available == 120_000


def test_refund_claws_back_and_dispute_freezes(billing: Billing) -> None:
    account_id, person = billing.person("personal")
    view = billing.service.start_checkout(person, account_id, idempotency_key="pack", pack_id="credits_1000")
    billing.harness.pay_checkout(view.url)
    billing.harness.wait_for_webhooks()
    client = billing.service.client
    cs = client.v1.checkout.sessions.retrieve(view.id)
    pi = client.v1.payment_intents.retrieve(cs.payment_intent)
    client.v1.refunds.create({"payment_intent": pi.id, "amount": 600})
    billing.harness.wait_for_webhooks()
    assert billing.balance(account_id).available == 600_000
    # A refund larger than what is left after spending: takes what is left, never overdraws.
    billing.db.write(
        lambda s: billing.container.ledger.debit(
            s, account_id=account_id, amount=500_000, idempotency_key="use", reason="meeting"
        )
    )
    client.v1.refunds.create({"payment_intent": pi.id})
    billing.harness.wait_for_webhooks()
    balance = billing.balance(account_id)
    assert balance.available == 0 and balance.posted == 0

    # A dispute on another purchase freezes what is left of it.
    view2 = billing.service.start_checkout(
        person, account_id, idempotency_key="pack2", pack_id="credits_1000"
    )
    billing.harness.pay_checkout(view2.url)
    billing.harness.wait_for_webhooks()
    cs2 = client.v1.checkout.sessions.retrieve(view2.id)
    pi2 = client.v1.payment_intents.retrieve(cs2.payment_intent)
    billing.harness.dispute(pi2.latest_charge)
    billing.harness.wait_for_webhooks()
    balance = billing.balance(account_id)
    assert balance.available == 0 and balance.frozen == 1_000_000


def test_customer_portal_offers_cards_invoices_and_cancelling_but_no_plan_switch(billing: Billing) -> None:
    from chronote_billing.stripe_sync.catalog_sync import find_portal_configuration

    client = billing.service.client
    config = find_portal_configuration(client)
    assert config is not None
    features = config["features"]
    assert not features["subscription_update"]["enabled"]
    assert features["subscription_cancel"] == {
        **features["subscription_cancel"],
        "enabled": True,
        "mode": "at_period_end",
    }
    assert features["payment_method_update"]["enabled"] and features["invoice_history"]["enabled"]

    account_id, person = billing.person("personal")
    billing.buy_plan(account_id, person, "personal_pro")
    portal = billing.service.open_customer_portal(person, account_id, idempotency_key="portal")
    page = billing.harness.http.get(portal.url).text
    assert "Cancel at period end" in page and "Use this card" in page and "Invoice history" in page
    assert "Switch plan" not in page and "Cancel now" not in page
    subscription = billing.db.read(
        lambda s: s.execute(
            select(StripeSubscription).where(StripeSubscription.account_id == account_id)
        ).scalar_one()
    )
    refused = billing.harness.portal(portal.url, "cancel_now", subscription.id)
    assert refused.status_code == 400 and "does not allow" in refused.text
    assert billing.plan(account_id) == "personal_pro"
    done = billing.harness.portal(portal.url, "cancel_at_period_end", subscription.id)
    assert done.status_code == 303
    billing.harness.wait_for_webhooks()
    view = billing.service.get_subscription(person, account_id)
    assert view.cancel_at_period_end and billing.plan(account_id) == "personal_pro"

    # Someone changed it in Stripe's dashboard: the next sync puts it back, and says what it fixed.
    client.v1.billing_portal.configurations.update(
        config["id"], {"features": {"subscription_update": {"enabled": True}}}
    )
    report = sync_catalog(client)
    assert ("update", "customer portal configuration", "subscription_update") in report.actions
    assert not find_portal_configuration(client)["features"]["subscription_update"]["enabled"]
    assert not sync_catalog(client).changed


def test_refund_of_a_plan_invoice_takes_back_its_share_of_the_allowance(billing: Billing) -> None:
    account_id, person = billing.person("personal")
    billing.buy_plan(account_id, person, "personal_pro")
    (allowance,) = [g for g in billing.grants(account_id) if g.source == "plan_allowance"]
    client = billing.service.client
    customer = billing.db.read(lambda s: s.get(BillingAccount, account_id).stripe_customer_id)
    invoices = client.v1.invoices.list({"customer": customer}).data
    (invoice,) = [i for i in invoices if i.amount_paid > 0]
    (payment,) = client.v1.invoice_payments.list({"invoice": invoice.id}).data
    pi = client.v1.payment_intents.retrieve(payment.payment.payment_intent)
    spent = 300_000
    billing.db.write(
        lambda s: billing.container.ledger.debit(
            s, account_id=account_id, amount=spent, idempotency_key="meeting", reason="meeting"
        )
    )
    # Refund a quarter of what the invoice charged: a quarter of the allowance comes back out.
    client.v1.refunds.create({"charge": pi.latest_charge, "amount": invoice.amount_paid // 4})
    billing.harness.wait_for_webhooks()
    taken = allowance.amount * (invoice.amount_paid // 4) // invoice.amount_paid
    grant = next(g for g in billing.grants(account_id) if g.id == allowance.id)
    assert grant.remaining == allowance.amount - spent - taken
    # The rest of the charge refunded: takes what is left unspent, never more.
    client.v1.refunds.create({"charge": pi.latest_charge})
    billing.harness.wait_for_webhooks()
    grant = next(g for g in billing.grants(account_id) if g.id == allowance.id)
    assert grant.remaining == 0 and billing.balance(account_id).posted >= 0
    statement = billing.db.read(lambda s: billing.container.ledger.statement(s, account_id)).data
    assert sum(1 for line in statement if "Refund of" in line.reason and line.kind == "refund") == 2


def test_lost_dispute_takes_back_what_is_left_of_the_purchase(billing: Billing) -> None:
    account_id, person = billing.person("personal")
    view = billing.service.start_checkout(person, account_id, idempotency_key="pack", pack_id="credits_1000")
    billing.harness.pay_checkout(view.url)
    billing.harness.wait_for_webhooks()
    client = billing.service.client
    pi = client.v1.payment_intents.retrieve(client.v1.checkout.sessions.retrieve(view.id).payment_intent)
    billing.db.write(
        lambda s: billing.container.ledger.debit(
            s, account_id=account_id, amount=250_000, idempotency_key="use", reason="meeting"
        )
    )
    dispute = billing.harness.dispute(pi.latest_charge)
    billing.harness.wait_for_webhooks()
    assert billing.balance(account_id).frozen == 750_000
    client.v1.disputes.close(dispute["id"])  # the merchant accepts it: lost
    billing.harness.wait_for_webhooks()
    balance = billing.balance(account_id)
    assert (balance.available, balance.frozen, balance.posted) == (0, 0, 0)
    (grant,) = [g for g in billing.grants(account_id) if g.source == "purchase"]
    assert grant.remaining == 0 and grant.status == "closed"
    # A redelivered "lost" changes nothing more.
    lost = [
        e
        for e in billing.harness.events("charge.dispute.closed")
        if e["data"]["object"]["id"] == dispute["id"]
    ]
    billing.harness.stand_in.webhooks.resend(lost[-1])
    assert billing.balance(account_id).posted == 0


def test_bad_checkout_requests(billing: Billing) -> None:
    account_id, person = billing.person("personal")
    with pytest.raises(UnknownPlan):
        billing.service.start_checkout(person, account_id, idempotency_key="a", plan_id="gold")
    with pytest.raises(PlanScopeMismatch):
        billing.service.start_checkout(person, account_id, idempotency_key="b", plan_id="server_pro")
    server_id, manager = billing.person("server")
    with pytest.raises(PermissionDenied):
        billing.service.start_checkout(person, server_id, idempotency_key="c", plan_id="server_pro")
    assert billing.db.read(lambda s: s.get(BillingAccount, account_id).stripe_customer_id) is None


def test_cli_catalog_sync_and_subscription(billing: Billing) -> None:
    from typer.testing import CliRunner

    from chronote_billing.cli import output
    from chronote_billing.cli.main import app

    account_id, person = billing.person("personal")
    billing.buy_plan(account_id, person, "personal_pro")
    output.set_container(billing.container)
    try:
        runner = CliRunner()
        synced = runner.invoke(app, ["catalog", "sync"])
        assert synced.exit_code == 0, synced.output
        assert "0 created, 0 updated, 0 archived, 17 unchanged" in synced.output
        shown = runner.invoke(app, ["subscription", account_id])
        assert shown.exit_code == 0 and "personal_pro (paid)" in shown.output
        missing = runner.invoke(app, ["subscription", "acct_nope"])
        assert missing.exit_code == 1 and "No billing account" in missing.output
    finally:
        output.set_container(None)


def test_same_second_subscription_events_are_settled_by_stripes_current_state(billing: Billing) -> None:
    """Stripe's `created` has one-second resolution: an earlier state delivered late in the same
    second, with an event id that sorts later, must not undo a cancellation."""
    account_id, person = billing.person("personal")
    billing.buy_plan(account_id, person, "personal_pro")
    client = billing.service.client
    sub_id = billing.db.read(lambda s: s.get(PlanSubscription, account_id).stripe_subscription_id)
    earlier_state = to_dict(client.v1.subscriptions.retrieve(sub_id))
    assert earlier_state["cancel_at_period_end"] is False

    client.v1.subscriptions.update(sub_id, {"cancel_at_period_end": True})
    billing.harness.wait_for_webhooks()
    assert billing.service.get_subscription(person, account_id).cancel_at_period_end
    newest = billing.db.read(lambda s: s.get(StripeSubscription, sub_id).last_event_created)

    late = stripe_payloads.event(
        "customer.subscription.updated", earlier_state, created=newest, event_id="evt_" + "z" * 24
    )
    body = json.dumps(late, default=str).encode()
    reply = billing.app.post(
        "/webhooks/stripe",
        content=body,
        headers={
            "Stripe-Signature": stripe_payloads.sign(body, billing.harness.webhook_secret),
            "Content-Type": "application/json",
        },
    )
    assert reply.status_code == 200
    assert billing.service.get_subscription(person, account_id).cancel_at_period_end


def test_a_checkout_return_applies_the_payment_before_the_webhooks(billing: Billing) -> None:
    """Decision 0040: the return page confirms the session with Stripe and applies it; the
    webhooks that arrive afterwards find everything done."""
    held: list[tuple[bytes, dict[str, str]]] = []
    billing.harness.send_webhooks_to(lambda payload, headers: held.append((payload, headers)) or 200)
    account_id, person = billing.person("personal")
    view = billing.service.start_checkout(person, account_id, idempotency_key="ret-1", plan_id="personal_pro")
    pending = billing.service.confirm_checkout(person, account_id, view.id)
    assert pending.state == "pending" and "pending" in pending.message.lower()

    assert billing.harness.pay_checkout(view.url).status_code == 303
    billing.harness.wait_for_webhooks()
    assert billing.plan(account_id) == "personal_free"  # no webhook delivered yet
    status = billing.service.confirm_checkout(person, account_id, view.id)
    assert status.state == "complete" and status.message.startswith("Payment received: Personal Pro")
    assert billing.plan(account_id) == "personal_pro"
    allowance = [g for g in billing.grants(account_id) if g.source == "plan_allowance"]
    assert [g.amount for g in allowance] == [1_500_000]
    assert billing.service.confirm_checkout(person, account_id, view.id) == status  # again: the same

    pack = billing.service.start_checkout(person, account_id, idempotency_key="ret-2", pack_id="credits_1000")
    assert billing.harness.pay_checkout(pack.url).status_code == 303
    billing.harness.wait_for_webhooks()
    credits = billing.service.confirm_checkout(person, account_id, pack.id)
    assert credits.state == "complete" and credits.credits == 1_000_000

    # Now the webhooks: stored, applied once, nothing granted twice.
    assert held
    for payload, headers in held:
        assert billing._deliver(payload, headers) == 200
    grants = billing.grants(account_id)
    assert sorted(g.amount for g in grants if g.source in ("plan_allowance", "purchase")) == [
        1_000_000,
        1_500_000,
    ]
    assert billing.plan(account_id) == "personal_pro"
    other_id, other = billing.person("personal")
    with pytest.raises(PermissionDenied):
        billing.service.confirm_checkout(other, account_id, view.id)


def test_a_plan_change_shows_its_charge_first_and_the_plan_in_force_at_once(billing: Billing) -> None:
    held: list[tuple[bytes, dict[str, str]]] = []
    account_id, manager = billing.person("server")
    clock_id = billing.on_test_clock(account_id)
    billing.buy_plan(account_id, manager, "server_basic")
    billing.advance(clock_id, 10 * DAY)
    billing.harness.send_webhooks_to(lambda payload, headers: held.append((payload, headers)) or 200)

    preview = billing.service.preview_plan_change(manager, account_id, plan_id="server_pro", interval="month")
    assert (preview.kind, preview.effective, preview.from_plan_name) == ("upgrade", "now", "Server Basic")
    assert 0 < preview.amount_due < 2_900
    change = billing.service.change_plan(
        manager, account_id, plan_id="server_pro", interval="month", idempotency_key="up-now"
    )
    # In force before any webhook, with its prorated credits; the estimate is what Stripe charged.
    assert billing.plan(account_id) == "server_pro"
    assert any("Upgrade" in g.description for g in billing.grants(account_id))
    invoice = billing.service.client.v1.invoices.retrieve(change.invoice)
    assert invoice.amount_paid == preview.amount_due
    for payload, headers in held:
        assert billing._deliver(payload, headers) == 200
    assert sum(1 for g in billing.grants(account_id) if "Upgrade" in g.description) == 1

    down = billing.service.preview_plan_change(manager, account_id, plan_id="server_basic", interval="month")
    assert down.kind == "downgrade" and down.amount_due == 0 and down.effective == "period_end"
    annual = billing.service.preview_plan_change(manager, account_id, plan_id="server_basic", interval="year")
    assert annual.kind == "unsupported" and "Server Pro billed monthly" in annual.message
