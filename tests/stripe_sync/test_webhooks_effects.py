"""Stripe webhooks through the real signature path (FastAPI app, `stripe.Webhook.construct_event`):
stored once, applied once, never backwards, and their effects on plans and the ledger."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.api.app import create_app
from chronote_billing.config import Settings
from chronote_billing.container import Container
from chronote_billing.plans.models import PlanSubscription
from chronote_billing.plans.service import current_plan, ensure_free_allowance
from chronote_billing.stripe_sync.models import StripeEvent
from tests import stripe_payloads as sp

SECRET = "whsec_test_effects"
DAY = 86400


class Env:
    def __init__(self, db, clock, make_account) -> None:  # type: ignore[no-untyped-def]
        settings = Settings(stripe_webhook_secret=SECRET, stripe_api_base="http://127.0.0.1:9")
        self.container = Container(db=db, clock=clock, settings=settings)
        # No Stripe here: charges are linked by payment intent only.
        self.container.billing.webhooks.client_factory = None
        self.client = TestClient(create_app(self.container))
        self.db = db
        self.clock = clock
        self.make_account = make_account

    def account(self, kind: str = "personal") -> tuple[str, str]:
        account_id = self.make_account(kind)
        customer = sp.oid("cus")

        def link(session):  # type: ignore[no-untyped-def]
            session.get(BillingAccount, account_id).stripe_customer_id = customer

        self.db.write(link)
        return account_id, customer

    def deliver(
        self, ev: dict, secret: str = SECRET, timestamp: int | None = None, header: str | None = None
    ):  # type: ignore[no-untyped-def]
        body = json.dumps(ev).encode()
        sig = header if header is not None else sp.sign(body, secret, timestamp)
        return self.client.post(
            "/webhooks/stripe",
            content=body,
            headers={"Stripe-Signature": sig, "Content-Type": "application/json"},
        )

    def ok(self, ev: dict) -> dict:
        response = self.deliver(ev)
        assert response.status_code == 200, response.text
        return response.json()

    def now(self) -> int:
        return sp.ts(self.clock.now())

    def plan(self, account_id: str) -> str | None:
        def work(session):  # type: ignore[no-untyped-def]
            plan = current_plan(
                session, session.get(BillingAccount, account_id), self.clock.now(), self.container.catalog
            )
            return plan.id if plan else None

        return self.db.read(work)

    def grants(self, account_id: str) -> list:
        return self.db.read(lambda s: self.container.ledger.list_grants(s, account_id))

    def available(self, account_id: str) -> int:
        return self.db.read(lambda s: self.container.ledger.balance(s, account_id)).available

    def sub_row(self, account_id: str) -> PlanSubscription | None:
        return self.db.read(lambda s: s.get(PlanSubscription, account_id))


@pytest.fixture
def env(db, clock, make_account) -> Env:  # type: ignore[no-untyped-def]
    return Env(db, clock, make_account)


def _events_count(db, event_id: str) -> int:  # type: ignore[no-untyped-def]
    return db.read(lambda s: s.execute(select(func.count()).where(StripeEvent.id == event_id)).scalar())


def pro_subscription(env: Env, account_id: str, customer: str, **kw):  # type: ignore[no-untyped-def]
    start = env.now()
    sub_id = sp.oid("sub")
    meta = {"chronote_account_id": account_id, "chronote_plan_id": "personal_pro"}
    sub = sp.subscription(
        sub_id, customer, "chronote_personal_pro_monthly", start, start + 30 * DAY, metadata=meta, **kw
    )
    return sub_id, sub, start


# ---------------------------------------------------------------------- signature


def test_bad_stale_or_missing_signature_is_400_and_stores_nothing(env: Env) -> None:
    account_id, customer = env.account()
    _, sub, _ = pro_subscription(env, account_id, customer)
    ev = sp.event("customer.subscription.created", sub, env.now())

    bad = env.deliver(ev, secret="whsec_wrong")
    assert bad.status_code == 400
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert bad.json()["code"] == "invalid_signature"

    stale = env.deliver(ev, timestamp=int(__import__("time").time()) - 301)
    assert stale.status_code == 400 and stale.json()["code"] == "invalid_signature"

    missing = env.deliver(ev, header="")
    assert missing.status_code == 400

    assert _events_count(env.db, ev["id"]) == 0
    assert env.sub_row(account_id) is None
    # The same event, properly signed, is accepted.
    assert env.ok(ev)["outcome"] == "applied"
    assert _events_count(env.db, ev["id"]) == 1


def test_unknown_type_and_unknown_account_are_stored_and_acknowledged(env: Env) -> None:
    unknown = sp.event("customer.tax_id.created", {"id": "txi_1", "object": "tax_id"}, env.now())
    body = env.ok(unknown)
    assert body["outcome"] == "unhandled"
    stored = env.db.read(lambda s: s.get(StripeEvent, unknown["id"]))
    assert stored.payload["data"]["object"]["id"] == "txi_1"

    inv = sp.invoice(
        sp.oid("in"), "cus_nobody", sp.oid("sub"), "subscription_create", 900, env.now(), env.now() + 30 * DAY
    )
    ev = sp.event("invoice.paid", inv, env.now())
    body = env.ok(ev)
    assert body["outcome"] == "unknown_account" and body["account_id"] is None
    assert env.db.read(lambda s: s.get(StripeEvent, ev["id"])).outcome == "unknown_account"


# ---------------------------------------------------------------------- subscriptions and allowances


def test_subscription_and_first_invoice_grant_the_period_allowance_once(env: Env) -> None:
    account_id, customer = env.account()
    sub_id, sub, start = pro_subscription(env, account_id, customer)
    env.ok(sp.event("customer.subscription.created", sub, start))
    assert env.plan(account_id) == "personal_pro"

    inv = sp.invoice(
        sp.oid("in"),
        customer,
        sub_id,
        "subscription_create",
        900,
        start,
        start + 30 * DAY,
        sub_metadata=sub["metadata"],
    )
    ev = sp.event("invoice.paid", inv, start + 1)
    env.ok(ev)
    assert env.ok(ev)["outcome"] == "duplicate"  # a redelivery changes nothing
    # The same invoice under another event id (Stripe resends as a new event): still one grant.
    assert "already granted" in env.ok(sp.event("invoice.paid", inv, start + 2))["note"]

    grants = [g for g in env.grants(account_id) if g.source == "plan_allowance"]
    assert len(grants) == 1
    assert grants[0].amount == 1_500_000 and grants[0].cause_id == inv["id"]
    assert sp.ts(grants[0].expires_at) == start + 30 * DAY
    # A paid plan means no free allowance on top.
    assert (
        env.db.write(
            lambda s: ensure_free_allowance(
                s,
                env.container.ledger,
                s.get(BillingAccount, account_id),
                env.clock.now(),
                env.container.catalog,
            )
        )
        is False
    )


def test_older_update_is_stored_not_applied_and_deleted_is_final(env: Env) -> None:
    account_id, customer = env.account()
    sub_id, sub, start = pro_subscription(env, account_id, customer)
    newer = dict(sub, cancel_at_period_end=True)
    env.ok(sp.event("customer.subscription.updated", newer, start + 100))
    older = sp.event("customer.subscription.updated", dict(sub, status="past_due"), start + 50)
    assert env.ok(older)["outcome"] == "stale"
    row = env.sub_row(account_id)
    assert row.status == "active" and row.cancel_at_period_end is True
    assert env.db.read(lambda s: s.get(StripeEvent, older["id"])) is not None

    env.ok(sp.event("customer.subscription.deleted", dict(sub, status="canceled"), start + 200))
    late = sp.event("customer.subscription.updated", dict(sub, status="active"), start + 300)
    assert env.ok(late)["outcome"] == "stale"
    assert env.sub_row(account_id).status == "canceled"
    assert env.plan(account_id) == "personal_free"


def test_failed_renewal_keeps_the_plan_for_seven_days_then_free_allowance(env: Env) -> None:
    account_id, customer = env.account("server")
    start = env.now()
    sub_id = sp.oid("sub")
    sub = sp.subscription(sub_id, customer, "chronote_basic_monthly", start, start + 30 * DAY)
    env.ok(sp.event("customer.subscription.created", sub, start))
    env.clock.advance(timedelta(days=30, seconds=10))
    renewed = sp.subscription(
        sub_id, customer, "chronote_basic_monthly", start + 30 * DAY, start + 60 * DAY, status="past_due"
    )
    inv = sp.invoice(
        sp.oid("in"),
        customer,
        sub_id,
        "subscription_cycle",
        1200,
        start + 30 * DAY,
        start + 60 * DAY,
        status="open",
    )
    env.ok(sp.event("invoice.payment_failed", inv, env.now()))
    env.ok(sp.event("customer.subscription.updated", renewed, env.now()))
    assert env.plan(account_id) == "server_basic"
    row = env.sub_row(account_id)
    assert row.status == "past_due" and row.payment_failed_at is not None

    env.clock.advance(timedelta(days=6, hours=23))
    assert env.plan(account_id) == "server_basic"
    env.clock.advance(timedelta(hours=2))
    assert env.plan(account_id) == "server_free"
    granted = env.db.write(
        lambda s: ensure_free_allowance(
            s, env.container.ledger, s.get(BillingAccount, account_id), env.clock.now(), env.container.catalog
        )
    )
    assert granted is True
    assert [g.source for g in env.grants(account_id)] == ["free_allowance"]

    # A retry that finally succeeds restores the plan, whatever order its events arrive in.
    paid = dict(inv, status="paid", amount_paid=1200)
    env.ok(sp.event("invoice.paid", paid, env.now()))
    assert env.sub_row(account_id).payment_failed_at is None
    assert env.plan(account_id) == "server_basic"


def test_yearly_price_issues_monthly_allowances_on_first_need(env: Env) -> None:
    account_id, customer = env.account()
    start = env.now()
    sub_id = sp.oid("sub")
    end = start + 365 * DAY
    sub = sp.subscription(sub_id, customer, "chronote_personal_pro_annual", start, end, interval="year")
    env.ok(sp.event("customer.subscription.created", sub, start))
    env.ok(
        sp.event(
            "invoice.paid",
            sp.invoice(sp.oid("in"), customer, sub_id, "subscription_create", 9000, start, end),
            start,
        )
    )
    first = env.grants(account_id)
    assert len(first) == 1 and first[0].amount == 1_500_000
    assert first[0].expires_at < env.clock.now() + timedelta(days=32)
    env.clock.advance(timedelta(days=31))

    def ensure(s):  # type: ignore[no-untyped-def]
        return ensure_free_allowance(
            s, env.container.ledger, s.get(BillingAccount, account_id), env.clock.now(), env.container.catalog
        )

    assert env.db.write(ensure) is True
    assert env.db.write(ensure) is False
    assert len(env.grants(account_id)) == 2


# ---------------------------------------------------------------------- packs, refunds, disputes


def buy_pack(env: Env, account_id: str, customer: str, pack: str = "credits_1000"):  # type: ignore[no-untyped-def]
    pi = sp.oid("pi")
    cs = sp.checkout_session(
        sp.oid("cs_test"),
        customer,
        account_id,
        "payment",
        pi,
        {"chronote_account_id": account_id, "chronote_pack_id": pack},
    )
    env.ok(sp.event("checkout.session.completed", cs, env.now()))
    return pi, cs


def test_pack_grants_credits_for_twelve_months_and_refund_claws_back_never_overdrawing(env: Env) -> None:
    account_id, customer = env.account("organization")
    pi, _ = buy_pack(env, account_id, customer)
    (grant,) = env.grants(account_id)
    assert grant.source == "purchase" and grant.amount == 1_000_000
    assert grant.expires_at.date() == (env.clock.now().replace(year=env.clock.now().year + 1)).date()

    ch = sp.oid("ch")
    env.ok(sp.event("charge.refunded", sp.charge(ch, customer, pi, 1500, amount_refunded=750), env.now()))
    assert env.available(account_id) == 500_000

    # Spend 400 credits, then refund the rest of the charge: only the 100 left is taken back.
    env.db.write(
        lambda s: env.container.ledger.debit(
            s, account_id=account_id, amount=400_000, idempotency_key="spend-1", reason="meeting"
        )
    )
    ev = sp.event("charge.refunded", sp.charge(ch, customer, pi, 1500, amount_refunded=1500), env.now())
    body = env.ok(ev)
    assert "nothing is overdrawn" in body["note"]
    assert env.available(account_id) == 0
    assert env.ok(ev)["outcome"] == "duplicate"
    # An older delivery of the first refund changes nothing.
    older = sp.event("charge.refunded", sp.charge(ch, customer, pi, 1500, amount_refunded=750), env.now() - 5)
    assert env.ok(older)["outcome"] == "stale"
    assert env.available(account_id) == 0


def test_refund_and_dispute_before_the_purchase_apply_when_it_arrives(env: Env) -> None:
    account_id, customer = env.account()
    pi = sp.oid("pi")
    ch = sp.oid("ch")
    env.ok(sp.event("charge.refunded", sp.charge(ch, customer, pi, 6000, amount_refunded=1500), env.now()))
    cs = sp.checkout_session(
        sp.oid("cs_test"), customer, account_id, "payment", pi, {"chronote_pack_id": "credits_5000"}
    )
    env.ok(sp.event("checkout.session.completed", cs, env.now()))
    (grant,) = env.grants(account_id)
    assert grant.remaining == 3_750_000

    env.ok(
        sp.event(
            "charge.dispute.created", sp.dispute(sp.oid("dp"), ch, pi, 6000, "needs_response"), env.now()
        )
    )
    assert env.available(account_id) == 0
    assert env.grants(account_id)[0].frozen is True
    env.ok(sp.event("charge.dispute.closed", sp.dispute(sp.oid("dp"), ch, pi, 6000, "won"), env.now() + 1))
    assert env.available(account_id) == 3_750_000


def test_wrong_scope_plan_on_subscription_is_ignored(env: Env) -> None:
    account_id, customer = env.account("server")
    sub = sp.subscription(
        sp.oid("sub"), customer, "chronote_personal_pro_monthly", env.now(), env.now() + 30 * DAY
    )
    body = env.ok(sp.event("customer.subscription.created", sub, env.now()))
    assert body["outcome"] == "ignored"
    assert env.plan(account_id) == "server_free"


def test_upgrade_invoice_grants_the_prorated_difference_and_downgrade_waits_for_renewal(env: Env) -> None:
    account_id, customer = env.account("server")
    start = env.now()
    end = start + 30 * DAY
    sub_id = sp.oid("sub")
    env.ok(
        sp.event(
            "customer.subscription.created",
            sp.subscription(sub_id, customer, "chronote_basic_monthly", start, end),
            start,
        )
    )
    env.ok(
        sp.event(
            "invoice.paid",
            sp.invoice(sp.oid("in"), customer, sub_id, "subscription_create", 1200, start, end),
            start,
        )
    )

    changed = start + 15 * DAY
    env.clock.advance(timedelta(days=15))
    meta = {
        "chronote_plan_id": "server_pro",
        "chronote_previous_plan_id": "server_basic",
        "chronote_change_kind": "upgrade",
        "chronote_changed_at": str(changed),
        "chronote_period_start": str(start),
        "chronote_period_end": str(end),
    }
    upgraded = sp.subscription(sub_id, customer, "chronote_pro_monthly", start, end, metadata=meta)
    env.ok(sp.event("customer.subscription.updated", upgraded, changed))
    inv = sp.invoice(
        sp.oid("in"), customer, sub_id, "subscription_update", 850, changed, end, sub_metadata=meta, lines=[]
    )
    env.ok(sp.event("invoice.paid", inv, changed))
    assert env.plan(account_id) == "server_pro"
    upgrade = [g for g in env.grants(account_id) if g.cause_id == inv["id"]]
    assert len(upgrade) == 1 and upgrade[0].amount == (20_000_000 - 4_800_000) // 2

    # Downgrade back to basic: Stripe's price changes now, the plan paid for stays until the end.
    down_meta = dict(
        meta,
        chronote_plan_id="server_basic",
        chronote_downgrade_from="server_pro",
        chronote_downgrade_until=str(end),
    )
    down = sp.subscription(sub_id, customer, "chronote_basic_monthly", start, end, metadata=down_meta)
    env.ok(sp.event("customer.subscription.updated", down, changed + 60))
    assert env.plan(account_id) == "server_pro"
    assert env.sub_row(account_id).pending_plan_id == "server_basic"
    env.clock.advance(timedelta(days=15, seconds=1))
    assert env.plan(account_id) == "server_basic"  # even before the renewal's events arrive
    renewed = sp.subscription(
        sub_id, customer, "chronote_basic_monthly", end, end + 30 * DAY, metadata=down_meta
    )
    env.ok(sp.event("customer.subscription.updated", renewed, end + 1))
    row = env.sub_row(account_id)
    assert row.plan_id == "server_basic" and row.pending_plan_id is None


@pytest.mark.postgres
def test_a_purchase_recorded_twice_at_once_grants_once(db, clock, ledger, make_account) -> None:  # type: ignore[no-untyped-def]
    """Auto-recharge records its pack purchase while Stripe's payment_intent.succeeded does the
    same: whichever is second finds the first's purchase, with no conflict and no second grant."""
    import threading

    from chronote_billing.catalog.service import load_catalog
    from chronote_billing.stripe_sync.models import StripePurchase
    from chronote_billing.stripe_sync.purchases import grant_pack
    from chronote_billing.stripe_sync.timestamps import from_ts

    account_id = make_account("organization")
    pack = load_catalog().credit_packs["credits_1000"]
    pi = "pi_race_" + account_id[-8:]
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def record(i: int) -> None:
        barrier.wait()
        try:
            db.write(
                lambda s: grant_pack(
                    s,
                    ledger,
                    clock,
                    s.get(BillingAccount, account_id),
                    pack,
                    at=from_ts(int(clock.now().timestamp()) - i),  # each path saw its own moment
                    cause_type="payment_intent",
                    cause_id=pi,
                    payment_intent=pi,
                    invoice_id=None,
                    notes=[],
                )
            )
        except BaseException as exc:  # noqa: BLE001 - every failure is the test's failure
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    purchases = db.read(
        lambda s: s.execute(select(func.count()).where(StripePurchase.account_id == account_id)).scalar_one()
    )
    assert purchases == 1
    assert [g.amount for g in db.read(lambda s: ledger.list_grants(s, account_id))] == [1_000_000]
