"""Promotion codes and coupons (decision 0042): codes passed by Chronote and typed on Stripe's page,
plan and pack limits, what a discount does to credits (nothing), and every refusal with its code,
through the API, the portal and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.api.app import create_app
from chronote_billing.catalog.service import Coupon, PromotionCode, load_catalog
from chronote_billing.cli import output
from chronote_billing.cli.main import app as cli
from chronote_billing.container import Container
from chronote_billing.core.idempotency import IdempotencyRecord
from chronote_billing.stripe_sync.models import StripeCheckoutSession
from chronote_billing.stripe_sync.promotions import (
    PromotionCodeNotRedeemable,
    create_coupon,
    create_promotion_code,
    products_by_group,
)
from chronote_stripe_local.server import TEST_SECRET_KEY
from tests.conftest import snowflake
from tests.factories import Billing, api_headers, api_key, billing_environment
from tests.portal.test_portal_auth import discord_sign_in
from tests.portal.test_portal_pages import Person, discord, oauth_settings

__all__ = ["discord"]


@pytest.fixture
def billing(stripe_local, db, clock, make_account) -> Iterator[Billing]:  # type: ignore[no-untyped-def]
    yield from billing_environment(stripe_local, db, clock, make_account, webhooks_must_succeed=True)


def coupon(billing: Billing, coupon_id: str, code: str, applies_to: tuple[str, ...] = (), **terms) -> str:  # type: ignore[no-untyped-def]
    catalog = load_catalog()
    client = billing.service.client
    spec = Coupon(
        id=coupon_id,
        name=coupon_id,
        percent_off=terms.pop("percent_off", 100),
        amount_off=None,
        currency="usd",
        duration=terms.pop("duration", "once"),
        duration_in_months=None,
        applies_to=applies_to,
        max_redemptions=None,
        redeem_by=None,
    )
    create_coupon(client, catalog, spec, products_by_group(client, catalog), "operator")
    promo = PromotionCode(
        code, coupon_id, terms.pop("max_redemptions", None), terms.pop("expires_at", None), False, True
    )
    return str(create_promotion_code(client, promo, "operator", code)["id"])


def pay(billing: Billing, url: str, **details: str | None) -> None:
    response = billing.harness.pay_checkout(url, **details)  # type: ignore[arg-type]
    assert response.status_code == 303, response.text
    billing.harness.wait_for_webhooks()


def test_a_code_passed_by_chronote_lowers_the_price_but_not_the_credits(billing: Billing) -> None:
    account_id, person = billing.person("personal")
    view = billing.service.start_checkout(
        person, account_id, idempotency_key="welcome", plan_id="personal_pro", promotion_code="welcome50"
    )
    assert view.promotion_code == "WELCOME50"
    session = billing.service.client.v1.checkout.sessions.retrieve(view.id)
    assert session.allow_promotion_codes is not True and session.discounts[0].promotion_code
    pay(billing, view.url)
    invoice = billing.service.client.v1.invoices.list({"customer": view.customer}).data[0]
    assert (invoice.subtotal, invoice.total) == (900, 450)
    (grant,) = [g for g in billing.grants(account_id) if g.source == "plan_allowance"]
    assert grant.amount == 1_500_000  # the whole allowance, whatever was paid


def test_a_fully_discounted_pack_grants_the_whole_pack(billing: Billing) -> None:
    coupon(billing, "free_pack", "FREEPACK", ("credits_1000",))
    account_id, person = billing.person("server")
    view = billing.service.start_checkout(
        person, account_id, idempotency_key="free", pack_id="credits_1000", promotion_code="FREEPACK"
    )
    pay(billing, view.url, card=None)
    (grant,) = [g for g in billing.grants(account_id) if g.source == "purchase"]
    assert grant.amount == 1_000_000


def test_a_code_typed_on_stripes_page_works_where_stripe_can_check_it(billing: Billing) -> None:
    account_id, person = billing.person("organization")
    view = billing.service.start_checkout(person, account_id, idempotency_key="page", pack_id="credits_5000")
    session = billing.service.client.v1.checkout.sessions.retrieve(view.id)
    assert session.allow_promotion_codes is True
    pay(billing, view.url, promotion_code="packs10")
    session = billing.service.client.v1.checkout.sessions.retrieve(view.id)
    assert session.amount_total == 5400
    (grant,) = [g for g in billing.grants(account_id) if g.source == "purchase"]
    assert grant.amount == 5_000_000


def test_a_coupon_for_some_plans_of_a_product_turns_stripes_field_off_for_that_product(
    billing: Billing,
) -> None:
    coupon(billing, "pro_only", "PROONLY", ("server_pro",), percent_off=20)
    server_id, manager = billing.person("server")
    basic = billing.service.start_checkout(
        manager, server_id, idempotency_key="basic", plan_id="server_basic"
    )
    assert billing.service.client.v1.checkout.sessions.retrieve(basic.id).allow_promotion_codes is not True
    person_id, person = billing.person("personal")
    personal = billing.service.start_checkout(person, person_id, idempotency_key="p", plan_id="personal_pro")
    assert billing.service.client.v1.checkout.sessions.retrieve(personal.id).allow_promotion_codes is True
    # Through Chronote the code works for the plan it names, and only there.
    other_id, other = billing.person("server")
    pro = billing.service.start_checkout(
        other, other_id, idempotency_key="pro", plan_id="server_pro", promotion_code="PROONLY"
    )
    assert pro.promotion_code == "PROONLY"
    billing.service.client.v1.coupons.delete("pro_only")


def refusals(billing: Billing) -> list[tuple[str, str, str]]:
    """(code, plan or pack, expected error code) for every kind of refusal."""
    coupon(billing, "soon_over", "SOONOVER", expires_at=billing.clock.now() + timedelta(days=40))
    used = coupon(billing, "used_up", "USEDUP", max_redemptions=1)
    c = billing.service.client
    spent = c.v1.checkout.sessions.create(
        {
            "mode": "payment",
            "line_items": [
                {
                    "price": c.v1.prices.list({"lookup_keys": ["chronote_credits_1000"]}).data[0].id,
                    "quantity": 1,
                }
            ],
            "success_url": "https://example.com",
            "discounts": [{"promotion_code": used}],
        }
    )
    assert billing.harness.pay_checkout(spent, card=None).status_code == 303
    coupon(billing, "stopped", "STOPPED")
    runner = CliRunner()
    output.set_container(billing.container)
    try:
        done = runner.invoke(cli, ["promo", "deactivate", "STOPPED"])
        assert done.exit_code == 0, done.output
    finally:
        output.set_container(None)
    billing.clock.advance(timedelta(days=45))
    return [
        ("NOSUCHCODE", "credits_1000", "unknown_promotion_code"),
        ("not a code!", "credits_1000", "unknown_promotion_code"),
        ("SOONOVER", "credits_1000", "promotion_code_expired"),
        ("USEDUP", "credits_1000", "promotion_code_exhausted"),
        ("STOPPED", "credits_1000", "promotion_code_inactive"),
        ("WELCOME50", "credits_1000", "promotion_code_not_applicable"),
        ("PACKS10", "server_basic", "promotion_code_not_applicable"),
    ]


def test_every_refused_code_gets_its_own_error_and_nothing_is_written(billing: Billing) -> None:
    cases = refusals(billing)
    writer = api_key(billing.container, "billing:write", "accounts:read")
    for code, item, expected in cases:
        account_id = billing.make_account("server")
        guild = billing.db.read(lambda s, a=account_id: s.get(BillingAccount, a).owner_ref)
        body = {"pack": item} if item.startswith("credits") else {"plan": item}
        before = len(billing.service.client.v1.checkout.sessions.list({"limit": 100}).data)
        response = billing.app.post(
            f"/v1/accounts/{account_id}/checkout",
            json={**body, "promotion_code": code},
            headers=api_headers(writer, "100000000000000042", guild, idem=f"refused-{code}"),
        )
        assert response.status_code == 422, (code, response.text)
        problem = response.json()
        assert response.headers["content-type"] == "application/problem+json"
        assert problem["code"] == expected and problem["detail"], (code, problem)

        def written(s, a=account_id):  # type: ignore[no-untyped-def]
            return (
                s.get(BillingAccount, a).stripe_customer_id,
                s.scalar(
                    select(func.count())
                    .select_from(StripeCheckoutSession)
                    .where(StripeCheckoutSession.account_id == a)
                ),
                s.scalar(
                    select(func.count())
                    .select_from(IdempotencyRecord)
                    .where(IdempotencyRecord.scope == f"billing.checkout:{a}")
                ),
            )

        assert billing.db.read(written) == (None, 0, 0), code
        assert len(billing.service.client.v1.checkout.sessions.list({"limit": 100}).data) == before


def test_a_code_stripe_still_refuses_is_not_redeemable(billing: Billing) -> None:
    account_id, person = billing.person("personal")
    billing.service.start_checkout(person, account_id, idempotency_key="pack", pack_id="credits_1000")
    pack = billing.service.start_checkout(person, account_id, idempotency_key="pack2", pack_id="credits_1000")
    pay(billing, pack.url)
    # WELCOME50 is for a first purchase only; Stripe refuses it now, and we say so plainly.
    with pytest.raises(PromotionCodeNotRedeemable, match="cannot be used"):
        billing.service.start_checkout(
            person, account_id, idempotency_key="w", plan_id="personal_pro", promotion_code="WELCOME50"
        )


def test_the_portal_shows_a_refused_code_in_words(billing: Billing, discord) -> None:  # type: ignore[no-untyped-def]
    settings = oauth_settings(
        discord,
        stripe_api_base=billing.harness.url,
        stripe_secret_key=TEST_SECRET_KEY,
        stripe_webhook_secret=billing.harness.webhook_secret,
    )
    client = TestClient(
        create_app(Container(db=billing.db, clock=billing.clock, settings=settings)), follow_redirects=False
    )
    buyer = Person(client, snowflake(), "Buyer")
    discord_sign_in(client, discord, buyer.user_id, buyer.name, [])
    page = buyer.get("/portal/personal/billing")
    assert 'name="promotion_code"' in page
    for htmx in (True, False):
        refused = buyer.submit(
            "/portal/personal/billing/packs",
            {"pack": "credits_1000", "promotion_code": "NOSUCHCODE"},
            htmx=htmx,
            tokens=buyer.tokens("/portal/personal/billing/packs", page),
        )
        assert refused.status_code == 422
        assert "There is no promotion code" in refused.text and "Traceback" not in refused.text
    account = billing.db.read(
        lambda s: s.get(BillingAccount, billing.container.accounts.find(s, "personal", buyer.user_id).id)
    )
    assert account.stripe_customer_id is None


def test_operators_manage_coupons_and_codes_from_the_cli(billing: Billing) -> None:
    runner = CliRunner()
    output.set_container(billing.container)
    try:
        made = runner.invoke(
            cli,
            [
                "coupon",
                "create",
                "spring_pro",
                "--percent-off",
                "25",
                "--duration",
                "repeating",
                "--months",
                "2",
                "--applies-to",
                "server_pro",
            ],
        )
        assert made.exit_code == 0, made.output
        code = runner.invoke(
            cli, ["promo", "create", "SPRING25", "--coupon", "spring_pro", "--max-redemptions", "10"]
        )
        assert code.exit_code == 0 and "SPRING25" in code.output, code.output
        listed = runner.invoke(cli, ["promo", "list", "--coupon", "spring_pro"])
        assert "SPRING25" in listed.output and "0 of 10" in listed.output
        coupons = runner.invoke(cli, ["coupon", "list"])
        assert "spring_pro" in coupons.output and "server_pro" in coupons.output
        for args, message in [
            (
                ["coupon", "create", "x1", "--percent-off", "0", "--duration", "once"],
                "whole percentage from 1 to 100",
            ),
            (
                ["coupon", "create", "x2", "--percent-off", "5", "--duration", "repeating"],
                "--months goes with",
            ),
            (
                [
                    "coupon",
                    "create",
                    "x3",
                    "--percent-off",
                    "5",
                    "--duration",
                    "once",
                    "--applies-to",
                    "nope",
                ],
                "Unknown plan or pack",
            ),
            (
                [
                    "coupon",
                    "create",
                    "x4",
                    "--percent-off",
                    "5",
                    "--duration",
                    "once",
                    "--redeem-by",
                    "2020-01-01",
                ],
                "in the future",
            ),
            (["promo", "create", "BAD CODE", "--coupon", "spring_pro"], "1-64 letters"),
            (["promo", "create", "NOCOUPON", "--coupon", "nope"], "There is no coupon 'nope'"),
            (["promo", "deactivate", "NEVERMADE"], "no promotion code"),
        ]:
            refused = runner.invoke(cli, args)
            assert refused.exit_code == 1, (args, refused.output)
            assert message in refused.output and "Traceback" not in refused.output, (args, refused.output)
            errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and message in errors[0], refused.output  # one line
        gone = runner.invoke(cli, ["coupon", "delete", "spring_pro"])
        assert gone.exit_code == 0
    finally:
        output.set_container(None)
