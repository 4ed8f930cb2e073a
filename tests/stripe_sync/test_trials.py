"""Trials (decision 0044): once per person or server, ever; trial credits that expire with the
trial; a trial without a card ends on the free plan; refusals with their codes, nothing written."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from chronote_billing.access.service import Principal
from chronote_billing.accounts.models import BillingAccount
from chronote_billing.api.app import create_app
from chronote_billing.container import Container
from chronote_billing.plans.models import PlanTrial
from chronote_billing.plans.trials import NoTrial, TrialAlreadyUsed
from chronote_billing.stripe_sync.models import StripeCheckoutSession
from chronote_stripe_local.server import TEST_SECRET_KEY
from tests.conftest import snowflake
from tests.factories import DAY, Billing, api_headers, api_key, billing_environment
from tests.portal.test_portal_auth import discord_sign_in
from tests.portal.test_portal_pages import Person, discord, oauth_settings, text_of

__all__ = ["discord"]


@pytest.fixture
def billing(stripe_local, db, clock, make_account) -> Iterator[Billing]:  # type: ignore[no-untyped-def]
    yield from billing_environment(stripe_local, db, clock, make_account, webhooks_must_succeed=True)


def start_trial(
    billing: Billing, account_id: str, principal: Principal, plan: str, card: str | None, key: str
) -> str:
    view = billing.service.start_checkout(
        principal, account_id, idempotency_key=key, plan_id=plan, trial=True
    )
    assert view.trial_days == 7
    response = billing.harness.pay_checkout(view.url, card=card)
    assert response.status_code == 303, response.text
    billing.harness.wait_for_webhooks()
    return view.id


def trial_row(billing: Billing, account_id: str) -> PlanTrial | None:
    def read(session):  # type: ignore[no-untyped-def]
        account = session.get(BillingAccount, account_id)
        row = session.get(PlanTrial, (account.kind, account.owner_ref))
        if row is not None:
            session.expunge(row)
        return row

    return billing.db.read(read)


def test_a_trial_without_a_card_brings_its_own_credits_and_ends_on_the_free_plan(billing: Billing) -> None:
    account_id, person = billing.person("personal")
    clock_id = billing.on_test_clock(account_id)
    start_trial(billing, account_id, person, "personal_pro", None, "trial")
    assert billing.plan(account_id) == "personal_pro"
    (credits,) = [g for g in billing.grants(account_id) if g.source == "trial"]
    assert credits.amount == 300_000  # the trial's allowance, not the plan's 1,500
    assert not [g for g in billing.grants(account_id) if g.source == "plan_allowance"]
    view = billing.service.get_subscription(person, account_id)
    assert view.status == "trialing" and view.trial is not None
    assert view.trial.ends_at == credits.expires_at
    assert (view.trial.card_on_file, view.trial.then) == (False, "Personal Free")
    assert trial_row(billing, account_id).status == "active"

    billing.advance(clock_id, 8 * DAY)
    assert billing.plan(account_id) == "personal_free"
    assert billing.service.get_subscription(person, account_id).trial is None
    assert all(g.available == 0 for g in billing.grants(account_id) if g.source == "trial")
    assert trial_row(billing, account_id).status == "ended"


def test_a_trial_with_a_card_converts_and_the_full_allowance_follows(billing: Billing) -> None:
    account_id, manager = billing.person("server")
    clock_id = billing.on_test_clock(account_id)
    start_trial(billing, account_id, manager, "server_pro", "4242424242424242", "trial")
    assert billing.service.get_subscription(manager, account_id).trial.card_on_file is True
    billing.advance(clock_id, 8 * DAY)
    assert billing.plan(account_id) == "server_pro"
    (allowance,) = [g for g in billing.grants(account_id) if g.source == "plan_allowance"]
    assert allowance.amount == 20_000_000
    assert trial_row(billing, account_id).status == "converted"


def test_one_trial_ever_across_cancellations_and_new_customers(billing: Billing) -> None:
    account_id, person = billing.person("personal")
    start_trial(billing, account_id, person, "personal_pro", None, "trial")
    subscription = billing.service.get_subscription(person, account_id).subscription_id
    billing.service.client.v1.subscriptions.cancel(subscription)
    billing.harness.wait_for_webhooks()
    assert billing.plan(account_id) == "personal_free"

    def new_customer(session):  # type: ignore[no-untyped-def]
        session.get(BillingAccount, account_id).stripe_customer_id = None  # as if billing moved

    billing.db.write(new_customer)
    with pytest.raises(TrialAlreadyUsed, match="once per person, ever"):
        billing.service.start_checkout(
            person, account_id, idempotency_key="again", plan_id="personal_pro", trial=True
        )
    # Paying is still possible, without a trial.
    paid = billing.service.start_checkout(person, account_id, idempotency_key="paid", plan_id="personal_pro")
    assert paid.trial_days is None


def test_refusals_over_http_write_nothing(billing: Billing) -> None:
    used_id, used = billing.person("personal")
    start_trial(billing, used_id, used, "personal_pro", None, "trial")
    billing.service.client.v1.subscriptions.cancel(
        billing.service.get_subscription(used, used_id).subscription_id
    )
    billing.harness.wait_for_webhooks()
    writer = api_key(billing.container, "billing:write", "accounts:read")
    fresh = billing.make_account("server")
    guild = billing.db.read(lambda s: s.get(BillingAccount, fresh).owner_ref)
    cases = [
        (used_id, used.user_id, None, {"plan": "personal_pro", "trial": True}, 409, "trial_already_used"),
        (fresh, "100000000000000042", guild, {"plan": "server_basic", "trial": True}, 422, "no_trial"),
        (fresh, "100000000000000042", guild, {"pack": "credits_1000", "trial": True}, 422, "no_trial"),
    ]
    for account_id, user, guilds, body, status, code in cases:
        before = len(billing.service.client.v1.checkout.sessions.list({"limit": 100}).data)
        response = billing.app.post(
            f"/v1/accounts/{account_id}/checkout",
            json=body,
            headers=api_headers(writer, user, guilds, idem=f"t-{code}"),
        )
        assert (response.status_code, response.json()["code"]) == (status, code), response.text
        assert len(billing.service.client.v1.checkout.sessions.list({"limit": 100}).data) == before
        count = billing.db.read(
            lambda s, a=account_id: s.scalar(
                select(func.count())
                .select_from(StripeCheckoutSession)
                .where(StripeCheckoutSession.account_id == a)
            )
        )
        assert count == (1 if account_id == used_id else 0)
    assert trial_row(billing, fresh) is None
    # Someone else's account: refused before anything about trials is said.
    other = billing.app.post(
        f"/v1/accounts/{used_id}/checkout",
        json={"plan": "personal_pro", "trial": True},
        headers=api_headers(writer, "100000000000000099", idem="t-other"),
    )
    assert other.status_code == 403
    with pytest.raises(NoTrial):
        billing.service.start_checkout(used, used_id, idempotency_key="p", pack_id="credits_1000", trial=True)


def test_an_abandoned_trial_checkout_is_closed_by_the_next_and_an_expired_one_is_given_back(
    billing: Billing,
) -> None:
    account_id, person = billing.person("personal")
    first = billing.service.start_checkout(
        person, account_id, idempotency_key="one", plan_id="personal_pro", trial=True
    )
    second = billing.service.start_checkout(
        person, account_id, idempotency_key="two", plan_id="personal_pro", trial=True
    )
    client = billing.service.client
    billing.harness.wait_for_webhooks()
    assert client.v1.checkout.sessions.retrieve(first.id).status == "expired"
    assert trial_row(billing, account_id).checkout_session_id == second.id  # the old expiry freed nothing
    client.v1.checkout.sessions.expire(second.id)
    billing.harness.wait_for_webhooks()
    assert trial_row(billing, account_id) is None
    start_trial(billing, account_id, person, "personal_pro", None, "three")
    assert trial_row(billing, account_id).status == "active"


def test_the_portal_offers_the_trial_once_and_says_when_it_ends(billing: Billing, discord) -> None:  # type: ignore[no-untyped-def]
    settings = oauth_settings(
        discord,
        stripe_api_base=billing.harness.url,
        stripe_secret_key=TEST_SECRET_KEY,
        stripe_webhook_secret=billing.harness.webhook_secret,
    )
    container = Container(db=billing.db, clock=billing.clock, settings=settings)
    client = TestClient(create_app(container), follow_redirects=False)
    billing.harness.send_webhooks_to(
        lambda body, h: client.post("/webhooks/stripe", content=body, headers=h).status_code
    )
    buyer = Person(client, snowflake(), "Buyer")
    discord_sign_in(client, discord, buyer.user_id, buyer.name, [])
    page = buyer.get("/portal/personal/billing")
    assert "Start the 7-day Personal Pro trial" in page
    started = buyer.submit(
        "/portal/personal/billing/plan", {"plan": "personal_pro", "interval": "month", "trial": "1"}
    )
    assert started.status_code == 204, started.text
    assert billing.harness.pay_checkout(started.headers["HX-Redirect"], card=None).status_code == 303
    billing.harness.wait_for_webhooks()
    page = text_of(buyer.get("/portal/personal/billing"))
    assert "Trial, ends on" in page and "goes back to Personal Free" in page
    assert "Start the 7-day" not in page
    # A second trial asked for by hand gets a readable refusal, not a checkout.
    billing.harness.send_webhooks_to(
        lambda body, h: client.post("/webhooks/stripe", content=body, headers=h).status_code
    )
    subscription = container.billing.get_subscription(
        Principal(kind="person", user_id=buyer.user_id),
        db_account(billing, buyer.user_id),
    ).subscription_id
    billing.service.client.v1.subscriptions.cancel(subscription)
    billing.harness.wait_for_webhooks()
    again = buyer.submit(
        "/portal/personal/billing/plan",
        {"plan": "personal_pro", "interval": "month", "trial": "1"},
        tokens=buyer.tokens("/portal/personal/billing/plan", buyer.get("/portal/personal/billing")),
    )
    assert (
        again.status_code == 409
        and "already had a free trial" in again.text
        and "Traceback" not in again.text
    )


def db_account(billing: Billing, user_id: str) -> str:
    return billing.db.read(lambda s: billing.container.accounts.find(s, "personal", user_id).id)
