"""Stripe Tax and receipts (decision 0043): automatic tax and business details on checkouts and
auto-recharges, switched by configuration, and every account's invoices and receipts read from
Stripe, over the API and on the portal, for the account's own managers only."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.api.app import create_app
from chronote_billing.container import Container
from chronote_billing.stripe_sync.catalog_sync import sync_catalog
from chronote_stripe_local.server import TEST_SECRET_KEY
from tests.conftest import snowflake
from tests.factories import Billing, api_headers, api_key
from tests.portal.test_portal_auth import discord_sign_in
from tests.portal.test_portal_pages import Person, discord, oauth_settings

__all__ = ["discord"]


def with_settings(env: Billing, **changes: object) -> Billing:
    env.container = Container(
        db=env.db, clock=env.clock, settings=dataclasses.replace(env.container.settings, **changes)
    )
    env.service = env.container.billing
    env.app = TestClient(create_app(env.container))
    return env


@pytest.fixture
def taxed(stripe_local, db, clock, make_account) -> Iterator[Billing]:  # type: ignore[no-untyped-def]
    env = with_settings(
        Billing(stripe_local, db, clock, make_account), stripe_automatic_tax=True, business_tax_ids=True
    )
    sync_catalog(env.service.client)
    yield env
    stripe_local.send_webhooks_to(None)
    assert all(status == 200 for status in env.deliveries), env.deliveries


@pytest.fixture
def untaxed(stripe_local, db, clock, make_account) -> Iterator[Billing]:  # type: ignore[no-untyped-def]
    env = Billing(stripe_local, db, clock, make_account)
    sync_catalog(env.service.client)
    yield env
    stripe_local.send_webhooks_to(None)


def pay(env: Billing, url: str, **details: str) -> None:
    response = env.harness.pay_checkout(url, **details)
    assert response.status_code == 303, response.text
    env.harness.wait_for_webhooks()


def test_a_personal_plan_is_taxed_by_country_and_its_invoice_is_listed(taxed: Billing) -> None:
    account_id, person = taxed.person("personal")
    view = taxed.service.start_checkout(person, account_id, idempotency_key="pro", plan_id="personal_pro")
    session = taxed.service.client.v1.checkout.sessions.retrieve(view.id)
    assert session.automatic_tax.enabled is True
    assert session.tax_id_collection.enabled is False  # people never give a tax ID
    pay(taxed, view.url, country="DE", postal_code="10115")
    (grant,) = [g for g in taxed.grants(account_id) if g.source == "plan_allowance"]
    assert grant.amount == 1_500_000  # tax changes the price, never the credits
    listing = taxed.service.documents(person, account_id).data
    (invoice,) = listing
    assert (invoice.kind, invoice.amount, invoice.tax, invoice.status) == ("invoice", 1071, 171, "paid")
    assert invoice.url and invoice.pdf_url and invoice.number
    assert taxed.harness.http.get(invoice.pdf_url).content.startswith(b"%PDF")


def test_an_organization_buys_as_a_business_and_its_pack_has_one_grant_and_a_receipt(taxed: Billing) -> None:
    account_id, operator = taxed.person("organization")
    view = taxed.service.start_checkout(operator, account_id, idempotency_key="pack", pack_id="credits_1000")
    session = taxed.service.client.v1.checkout.sessions.retrieve(view.id)
    assert session.billing_address_collection == "required" and session.tax_id_collection.enabled is True
    pay(
        taxed,
        view.url,
        country="FR",
        business_name="Acme SAS",
        tax_id_type="eu_vat",
        tax_id_value="FR12345678901",
    )
    (grant,) = taxed.grants(account_id)  # the receipt invoice never grants a second time
    assert grant.amount == 1_000_000
    customer = taxed.db.read(lambda s: s.get(BillingAccount, account_id).stripe_customer_id)
    assert taxed.service.client.v1.customers.retrieve(customer).name == "Acme SAS"
    (receipt,) = taxed.service.documents(operator, account_id).data
    assert (receipt.kind, receipt.amount, receipt.tax) == ("invoice", 1500, 0)  # reverse charge

    # A taxed auto-recharge is an invoice too, granted once however often the purchase is retried.
    first = taxed.service.buy_pack_off_session(account_id, "credits_1000", "recharge-1")
    assert first.invoice and first.granted
    taxed.harness.wait_for_webhooks()
    assert taxed.service.buy_pack_off_session(account_id, "credits_1000", "recharge-1") == first
    assert taxed.balance(account_id).available == 2_000_000
    kinds = [(d.kind, d.amount) for d in taxed.service.documents(operator, account_id).data]
    assert kinds == [("invoice", 1500), ("invoice", 1500)]


def test_without_tax_checkouts_are_as_before_and_bare_payments_show_as_receipts(untaxed: Billing) -> None:
    account_id, operator = untaxed.person("organization")
    view = untaxed.service.start_checkout(
        operator, account_id, idempotency_key="pack", pack_id="credits_1000"
    )
    session = untaxed.service.client.v1.checkout.sessions.retrieve(view.id)
    assert session.automatic_tax.enabled is False and session.billing_address_collection is None
    pay(untaxed, view.url)
    untaxed.service.buy_pack_off_session(account_id, "credits_1000", "recharge-1")
    documents = untaxed.service.documents(operator, account_id).data
    assert sorted((d.kind, d.tax) for d in documents) == [("invoice", None), ("receipt", None)]
    receipt = next(d for d in documents if d.kind == "receipt")
    assert untaxed.harness.http.get(receipt.url).status_code == 200


def test_the_invoice_list_over_http_is_for_the_accounts_own_managers(untaxed: Billing) -> None:
    account_id, person = untaxed.person("personal")
    owner = person.user_id
    url = f"/v1/accounts/{account_id}/invoices"
    reader = api_key(untaxed.container, "accounts:read")
    assert untaxed.app.get(url, headers=api_headers(reader, owner)).json() == {
        "object": "list",
        "account_id": account_id,
        "data": [],
    }
    other = untaxed.app.get(url, headers=api_headers(reader, "100000000000000077"))
    assert other.status_code == 403 and other.json()["code"] == "permission_denied"
    no_scope = untaxed.app.get(url, headers=api_headers(api_key(untaxed.container, "holds:write"), owner))
    assert no_scope.status_code == 403
    nobody = untaxed.app.get(url)
    assert nobody.status_code == 401
    missing = untaxed.app.get(
        "/v1/accounts/acct_01m92q5egskz0frejap38z336j/invoices", headers=api_headers(reader, owner)
    )
    assert missing.status_code == 404


def test_every_billing_page_lists_its_own_invoices(untaxed: Billing, discord) -> None:  # type: ignore[no-untyped-def]
    settings = oauth_settings(
        discord,
        stripe_api_base=untaxed.harness.url,
        stripe_secret_key=TEST_SECRET_KEY,
        stripe_webhook_secret=untaxed.harness.webhook_secret,
    )
    container = Container(db=untaxed.db, clock=untaxed.clock, settings=settings)
    client = TestClient(create_app(container), follow_redirects=False)
    guild = snowflake()
    buyer = Person(client, snowflake(), "Buyer")
    discord_sign_in(
        client, discord, buyer.user_id, buyer.name, [{"id": guild, "name": "Den", "permissions": "32"}]
    )
    for page in ("/portal/personal/billing", f"/portal/server/{guild}/billing"):
        assert 'id="invoices"' in buyer.get(page) and f"{page}/invoices?fragment=1" in buyer.page
    checkout = buyer.submit(
        "/portal/personal/billing/packs",
        {"pack": "credits_1000"},
        tokens=buyer.tokens("/portal/personal/billing/packs", buyer.get("/portal/personal/billing")),
    )
    pay(untaxed, checkout.headers["HX-Redirect"])
    fragment = buyer.get("/portal/personal/billing/invoices?fragment=1")
    assert "<table>" in fragment and "$15.00" in fragment and "PDF" in fragment and "<html" not in fragment
    full = buyer.get("/portal/personal/billing/invoices")
    assert "Billed to: you" in full and "$15.00" in full
    assert "No invoices or receipts yet." in buyer.get(f"/portal/server/{guild}/billing/invoices")

    stranger = Person(TestClient(create_app(container), follow_redirects=False), snowflake(), "Stranger")
    discord_sign_in(stranger.client, discord, stranger.user_id, stranger.name, [])
    refused = stranger.client.get(f"/portal/server/{guild}/billing/invoices")
    assert refused.status_code == 403 and "Manage Server" in refused.text
    assert "$15.00" not in stranger.get("/portal/personal/billing/invoices")
    anonymous = TestClient(create_app(container), follow_redirects=False).get(
        "/portal/personal/billing/invoices"
    )
    assert anonymous.status_code == 303 and "/portal/login" in anonymous.headers["location"]
