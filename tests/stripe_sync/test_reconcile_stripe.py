"""`reconcile`: drift between our mirror and Stripe is reported, and repaired with --fix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from chronote_billing.cli import output
from chronote_billing.cli.main import app
from chronote_billing.stripe_sync.reconcile import Reconciler
from tests.factories import Billing, billing_environment


@pytest.fixture
def billing(stripe_local, db, clock, make_account) -> Iterator[Billing]:  # type: ignore[no-untyped-def]
    yield from billing_environment(stripe_local, db, clock, make_account)


def test_missed_webhooks_are_found_and_fixed(billing: Billing) -> None:
    account_id, person = billing.person("personal")
    billing.buy_plan(account_id, person, "personal_pro")
    sub_id = billing.service.get_subscription(person, account_id).subscription_id
    # Stripe changes while our endpoint is down: the events never arrive.
    billing.harness.send_webhooks_to(None)
    billing.service.client.v1.subscriptions.update(sub_id, {"cancel_at_period_end": True})
    customer = billing.service.ensure_customer(account_id)
    billing.service.client.v1.customers.update(customer, {"metadata": {"chronote_account_id": ""}})

    reconciler = Reconciler(billing.db, billing.clock, billing.service.client, billing.service.webhooks)
    report = reconciler.run(accounts=[account_id])
    kinds = sorted(d.kind for d in report.drift)
    assert kinds == ["customer_metadata", "subscription_differs"], report.drift
    assert not billing.service.get_subscription(person, account_id).cancel_at_period_end

    output.set_container(billing.container)
    try:
        result = CliRunner().invoke(app, ["reconcile", "--fix"])
        assert result.exit_code == 0, result.output
        assert "fixed" in result.output
    finally:
        output.set_container(None)
    assert (
        billing.service.client.v1.customers.retrieve(customer).metadata["chronote_account_id"] == account_id
    )
    assert billing.service.get_subscription(person, account_id).cancel_at_period_end
    assert not [d for d in reconciler.run(accounts=[account_id]).drift if d.kind == "customer_metadata"]


def test_a_subscription_unknown_locally_is_mirrored_by_fix(billing: Billing) -> None:
    account_id, person = billing.person("server")
    billing.harness.send_webhooks_to(None)
    billing.buy_plan(account_id, person, "server_basic")
    assert billing.plan(account_id) == "server_free"  # no webhook reached us
    reconciler = Reconciler(billing.db, billing.clock, billing.service.client, billing.service.webhooks)
    report = reconciler.run(accounts=[account_id], fix=True)
    assert [d.kind for d in report.drift] == ["subscription_missing_locally"] and report.fixed == 1
    assert billing.plan(account_id) == "server_basic"
    assert reconciler.run(accounts=[account_id]).drift == []
