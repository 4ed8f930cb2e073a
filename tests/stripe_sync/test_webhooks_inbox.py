"""A Stripe event is stored before anything is applied (decision 0056): an event stored but not
applied (the process stopped in between, or Stripe could not be asked what a charge paid for)
is applied by Stripe's next delivery of it, once; the one after is a duplicate."""

from __future__ import annotations

import json

import pytest

from chronote_billing.stripe_sync.models import StripeEvent
from tests import stripe_payloads as sp
from tests.stripe_sync.test_webhooks_effects import SECRET, Env

__all__ = ["env"]


@pytest.fixture
def env(db, clock, make_account) -> Env:  # type: ignore[no-untyped-def]
    return Env(db, clock, make_account)


def test_an_event_stored_but_not_applied_is_applied_by_its_next_delivery(env: Env) -> None:
    account_id, customer = env.account("organization")
    cs = sp.checkout_session(
        sp.oid("cs_test"), customer, account_id, "payment", sp.oid("pi"), {"chronote_pack_id": "credits_1000"}
    )
    ev = sp.event("checkout.session.completed", cs, env.now())
    body = json.dumps(ev).encode()

    env.container.billing.webhooks.receive(body, sp.sign(body, SECRET))  # stored; the process stops
    stored = env.db.read(lambda s: s.get(StripeEvent, ev["id"]))
    assert (stored.outcome, stored.account_id, env.grants(account_id)) == ("received", None, [])

    assert env.ok(ev)["outcome"] == "applied"  # Stripe delivers it again: applied now
    assert env.ok(ev)["outcome"] == "duplicate"
    (grant,) = env.grants(account_id)
    assert grant.source == "purchase" and grant.amount == 1_000_000
    assert env.db.read(lambda s: s.get(StripeEvent, ev["id"])).outcome == "applied"


def test_a_failure_before_applying_answers_an_error_and_the_retry_applies(env: Env) -> None:
    """The refund names a charge we know nothing of, so Stripe is asked what it paid for; Stripe
    is unreachable (a closed port): 502, the event stays stored and unapplied."""
    account_id, customer = env.account()
    charge = sp.charge(sp.oid("ch"), customer, sp.oid("pi"), 900, amount_refunded=450)
    ev = sp.event("charge.refunded", charge, env.now())
    billing = env.container.billing
    billing.webhooks.client_factory = lambda: billing.client  # the real SDK, at 127.0.0.1:9
    refused = env.deliver(ev)
    assert refused.status_code == 502 and refused.json()["code"] == "payment_provider_error"
    assert env.db.read(lambda s: s.get(StripeEvent, ev["id"])).outcome == "received"

    billing.webhooks.client_factory = None  # then nothing is asked of Stripe: links come later
    assert env.ok(ev)["outcome"] == "applied"
    assert env.ok(ev)["outcome"] == "duplicate"
