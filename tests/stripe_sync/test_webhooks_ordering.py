"""Property: any subset-preserving shuffle of a real event history, with any duplicates, reaches the
same final state (plan subscription, grants, balance) as one delivery in order.

The history is captured once from the local Stripe stand-in (a server subscribes to Basic,
upgrades to Pro, buys a credit pack, gets part of it refunded, and renews on a test clock). Each
example replays it, signed, straight into the webhook handler for a fresh account.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.config import Settings
from chronote_billing.container import Container
from chronote_billing.core.clock import ManualClock
from chronote_billing.plans.models import PlanSubscription
from chronote_billing.stripe_sync.catalog_sync import sync_catalog
from chronote_billing.stripe_sync.metadata import account_metadata
from chronote_stripe_local.server import TEST_SECRET_KEY
from chronote_stripe_local.testing import StripeLocalHarness
from tests import stripe_payloads as sp

DAY = 86400
SECRET = "whsec_test_ordering"
_ID = re.compile(r"\b((?:evt|sub|in|pi|ch|py|cs_test|cus|re|dp|inpay|si|il|ii)_[A-Za-z0-9]+)")


@pytest.fixture(scope="module")
def history(db, make_account_module, _stripe_local_server) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Run the scenario once against the stand-in and keep every event it emitted, in order."""
    harness = StripeLocalHarness(_stripe_local_server)
    try:
        start = harness.stand_in.engine.store.global_now()
        clock = ManualClock(datetime.fromtimestamp(start, tz=UTC))
        settings_ = Settings(
            stripe_api_base=harness.url,
            stripe_secret_key=TEST_SECRET_KEY,
            stripe_webhook_secret=harness.webhook_secret,
        )
        container = Container(db=db, clock=clock, settings=settings_)
        from fastapi.testclient import TestClient

        from chronote_billing.api.app import create_app

        app = TestClient(create_app(container))
        harness.send_webhooks_to(
            lambda payload, headers: (
                app.post("/webhooks/stripe", content=payload, headers=headers).status_code
            )
        )
        billing = container.billing
        sync_catalog(billing.client)
        account_id = make_account_module("server")
        account = db.read(lambda s: s.get(BillingAccount, account_id))
        test_clock = harness.client.v1.test_helpers.test_clocks.create({"frozen_time": start})
        customer = harness.client.v1.customers.create(
            {"name": "ordering", "metadata": account_metadata(account), "test_clock": test_clock.id}
        )

        def link(session):  # type: ignore[no-untyped-def]
            session.get(BillingAccount, account_id).stripe_customer_id = customer.id

        db.write(link)
        from chronote_billing.access.service import Principal

        operator = Principal(kind="service", scopes=frozenset({"operator"}))
        view = billing.start_checkout(operator, account_id, idempotency_key="basic", plan_id="server_basic")
        harness.pay_checkout(view.url)

        def advance(seconds: int) -> None:
            now = int(harness.client.v1.test_helpers.test_clocks.retrieve(test_clock.id).frozen_time)
            clock.set(datetime.fromtimestamp(now + seconds, tz=UTC))
            harness.advance_clock(test_clock.id, to=now + seconds)

        advance(5 * DAY)
        billing.change_plan(
            operator, account_id, plan_id="server_pro", interval="month", idempotency_key="up"
        )
        pack = billing.start_checkout(operator, account_id, idempotency_key="pack", pack_id="credits_1000")
        harness.pay_checkout(pack.url)
        cs = billing.client.v1.checkout.sessions.retrieve(pack.id)
        billing.client.v1.refunds.create({"payment_intent": cs.payment_intent, "amount": 500})
        advance(30 * DAY)
        harness.wait_for_webhooks()
        events = harness.events()
        return {"events": events, "account_id": account_id, "customer": customer.id, "start": start}
    finally:
        harness.send_webhooks_to(None)
        harness.close()


@pytest.fixture(scope="module")
def make_account_module(db):  # type: ignore[no-untyped-def]
    from chronote_billing.accounts.service import AccountService
    from tests.conftest import snowflake

    accounts = AccountService(ManualClock())

    def _make(kind: str) -> str:
        return db.write(lambda s: accounts.get_or_create(s, kind, snowflake()).id)

    return _make


class Replay:
    def __init__(self, db, history: dict[str, Any], make_account) -> None:  # type: ignore[no-untyped-def]
        self.db = db
        self.history = history
        self.make_account = make_account

    def run(self, order: list[int]) -> dict[str, Any]:
        """Deliver history events in `order` (indexes, repeats allowed) to a fresh account."""
        suffix = "x" + secrets.token_hex(4)
        account_id = self.make_account("server")
        clock = ManualClock(datetime.fromtimestamp(self.history["start"] + 6 * DAY, tz=UTC))
        container = Container(db=self.db, clock=clock, settings=Settings(stripe_webhook_secret=SECRET))
        handler = container.billing.webhooks
        handler.client_factory = None
        customer = self.history["customer"] + suffix

        def link(session):  # type: ignore[no-untyped-def]
            session.get(BillingAccount, account_id).stripe_customer_id = customer

        self.db.write(link)
        payloads = []
        for event in self.history["events"]:
            text = json.dumps(event)
            text = _ID.sub(lambda m: m.group(1) + suffix, text)
            text = text.replace(self.history["account_id"], account_id)
            payloads.append(text.encode())
        for i in order:
            result = handler.handle(payloads[i], sp.sign(payloads[i], SECRET))
            assert result.outcome != "unknown_account"
        return self.state(container, account_id, suffix)

    def state(self, container: Container, account_id: str, suffix: str) -> dict[str, Any]:
        def work(session):  # type: ignore[no-untyped-def]
            sub = session.get(PlanSubscription, account_id)
            sub_state = None
            if sub is not None:
                sub_state = {
                    c: getattr(sub, c)
                    for c in (
                        "plan_id",
                        "price_lookup_key",
                        "interval",
                        "status",
                        "current_period_start",
                        "current_period_end",
                        "cancel_at_period_end",
                        "payment_failed_at",
                        "pending_plan_id",
                        "last_event_created",
                    )
                }
                sub_state["stripe_subscription_id"] = sub.stripe_subscription_id.replace(suffix, "")
            grants = sorted(
                (
                    g.source,
                    g.amount,
                    g.remaining,
                    g.frozen,
                    g.expires_at,
                    g.cause_type,
                    (g.cause_id or "").replace(suffix, ""),
                )
                for g in container.ledger.list_grants(session, account_id)
            )
            balance = container.ledger.balance(session, account_id)
            return {
                "sub": sub_state,
                "grants": grants,
                "available": balance.available,
                "posted": balance.posted,
            }

        return self.db.read(work)


@pytest.fixture(scope="module")
def replay(db, history, make_account_module) -> Iterator[Replay]:  # type: ignore[no-untyped-def]
    yield Replay(db, history, make_account_module)


@pytest.fixture(scope="module")
def in_order(replay: Replay) -> dict[str, Any]:
    return replay.run(list(range(len(replay.history["events"]))))


def test_history_is_realistic(replay: Replay, in_order: dict[str, Any]) -> None:
    types = [e["type"] for e in replay.history["events"]]
    for needed in (
        "customer.subscription.created",
        "customer.subscription.updated",
        "invoice.paid",
        "charge.refunded",
        "checkout.session.completed",
    ):
        assert needed in types
    assert in_order["sub"]["plan_id"] == "server_pro"
    sources = [g[0] for g in in_order["grants"]]
    assert sources.count("plan_allowance") == 3  # first period, upgrade difference, renewal
    assert sources.count("purchase") == 1
    pack = next(g for g in in_order["grants"] if g[0] == "purchase")
    assert pack[2] == 1_000_000 - 1_000_000 * 500 // 1500


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_order_with_duplicates_reaches_the_in_order_state(
    replay: Replay, in_order: dict[str, Any], data: st.DataObject
) -> None:
    n = len(replay.history["events"])
    order = data.draw(st.permutations(list(range(n))), label="order")
    extra = data.draw(st.lists(st.integers(0, n - 1), max_size=n), label="duplicates")
    positions = data.draw(
        st.lists(st.integers(0, 2 * n), min_size=len(extra), max_size=len(extra)), label="at"
    )
    delivery = list(order)
    for index, at in zip(extra, positions, strict=True):
        delivery.insert(min(at, len(delivery)), index)
    assert replay.run(delivery) == in_order
