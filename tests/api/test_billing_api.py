"""The billing HTTP edge: scopes, permissions, idempotency keys and problem+json, with Stripe
played by the local stand-in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chronote_billing.accounts.models import BillingAccount
from tests.factories import Billing, api_headers, api_key, billing_environment


@pytest.fixture
def billing(stripe_local, db, clock, make_account) -> Iterator[Billing]:  # type: ignore[no-untyped-def]
    yield from billing_environment(stripe_local, db, clock, make_account)


def test_catalog_is_public_data(billing: Billing) -> None:
    body = billing.app.get("/v1/catalog").json()
    assert {p["id"] for p in body["plans"]} >= {"personal_pro", "server_basic", "server_pro"}
    assert [c["credits"] for c in body["credit_packs"]] == [1000, 5000, 20000]
    assert body["rate_card"]["meeting_audio_per_started_minute"] == 1000


def test_checkout_subscription_and_cancel_over_http(billing: Billing) -> None:
    account_id = billing.make_account("server")
    guild = billing.db.read(lambda s: s.get(BillingAccount, account_id).owner_ref)
    writer = api_key(billing.container, "billing:write", "accounts:read")
    manager = "100000000000000042"
    url = f"/v1/accounts/{account_id}/checkout"

    no_key = billing.app.post(url, json={"plan": "server_basic"}, headers=api_headers(writer, manager, guild))
    assert no_key.status_code == 422 and no_key.json()["code"] == "validation_error"
    not_manager = billing.app.post(
        url, json={"plan": "server_basic"}, headers=api_headers(writer, manager, idem="k1")
    )
    assert not_manager.status_code == 403
    assert not_manager.json()["missing_permission"] == "Manage Server on this Discord server"
    reader = api_key(billing.container, "accounts:read")
    no_scope = billing.app.post(
        url, json={"plan": "server_basic"}, headers=api_headers(reader, manager, guild, "k1")
    )
    assert no_scope.status_code == 403 and no_scope.json()["missing_permission"] == "scope:billing:write"
    wrong = billing.app.post(
        url, json={"plan": "personal_pro"}, headers=api_headers(writer, manager, guild, "k2")
    )
    assert wrong.status_code == 422 and wrong.json()["code"] == "plan_scope_mismatch"
    unknown = billing.app.post(url, json={"plan": "gold"}, headers=api_headers(writer, manager, guild, "k3"))
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_plan"
    assert billing.db.read(lambda s: s.get(BillingAccount, account_id).stripe_customer_id) is None

    created = billing.app.post(
        url, json={"plan": "server_basic"}, headers=api_headers(writer, manager, guild, "buy")
    )
    assert created.status_code == 201, created.text
    again = billing.app.post(
        url, json={"plan": "server_basic"}, headers=api_headers(writer, manager, guild, "buy")
    )
    assert again.json() == created.json()
    conflict = billing.app.post(
        url, json={"plan": "server_pro"}, headers=api_headers(writer, manager, guild, "buy")
    )
    assert conflict.status_code == 409 and conflict.json()["code"] == "idempotency_conflict"
    session = billing.service.client.v1.checkout.sessions.retrieve(created.json()["id"])
    assert session.client_reference_id == account_id and session.metadata["guild_id"] == guild
    billing.harness.pay_checkout(created.json()["url"])
    billing.harness.wait_for_webhooks()

    sub = billing.app.get(
        f"/v1/accounts/{account_id}/subscription", headers=api_headers(writer, manager, guild)
    )
    assert (
        sub.status_code == 200 and sub.json()["plan"] == "server_basic" and sub.json()["status"] == "active"
    )
    cancel = billing.app.delete(
        f"/v1/accounts/{account_id}/subscription", headers=api_headers(writer, manager, guild, "c1")
    )
    assert cancel.status_code == 200 and cancel.json()["cancel_at_period_end"] is True
    billing.harness.wait_for_webhooks()
    sub = billing.app.get(
        f"/v1/accounts/{account_id}/subscription", headers=api_headers(writer, manager, guild)
    ).json()
    assert sub["cancel_at_period_end"] is True and sub["plan"] == "server_basic"

    portal = billing.app.post(
        f"/v1/accounts/{account_id}/portal-session", headers=api_headers(writer, manager, guild, "p1")
    )
    assert portal.status_code == 201 and portal.json()["customer"] == session.customer
    # A retry gets the first session back; another return URL under the same key is our 409,
    # not the payment provider's error (decision 0033).
    retry = billing.app.post(
        f"/v1/accounts/{account_id}/portal-session", headers=api_headers(writer, manager, guild, "p1")
    )
    assert retry.status_code == 201 and retry.json() == portal.json()
    other = billing.app.post(
        f"/v1/accounts/{account_id}/portal-session",
        json={"return_url": "https://chronote.gg/elsewhere"},
        headers=api_headers(writer, manager, guild, "p1"),
    )
    assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"


def test_plan_change_without_subscription_is_a_clear_error(billing: Billing) -> None:
    account_id = billing.make_account("personal")
    user = billing.db.read(lambda s: s.get(BillingAccount, account_id).owner_ref)
    writer = api_key(billing.container, "billing:write")
    response = billing.app.post(
        f"/v1/accounts/{account_id}/subscription",
        json={"plan": "personal_pro"},
        headers=api_headers(writer, user, idem="x"),
    )
    assert response.status_code == 404 and response.json()["code"] == "no_subscription"
