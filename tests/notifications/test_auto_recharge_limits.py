"""Bounded auto-recharge for every payer (decision 0045): monthly limits by count or amount,
one purchase per crossing, one `auto_recharge.stopped` when the limit or a declined card stops
it, and every bad limit refused with nothing written, over the service, API, portal and CLI."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from chronote_billing.catalog.service import load_catalog
from chronote_billing.cli import output
from chronote_billing.cli.main import app as cli
from chronote_billing.core.idempotency import IdempotencyRecord
from chronote_billing.notifications.auto_recharge import InvalidAutoRechargeLimit
from chronote_billing.notifications.delivery import DeliveryWorker
from chronote_billing.notifications.models import AutoRechargePurchase, NotificationSettings, OutboxEntry
from chronote_billing.notifications.service import JOB_AUTO_RECHARGE, NotificationService
from chronote_stripe_local.testing import CARD_DECLINES_RENEWALS
from tests.conftest import snowflake
from tests.factories import Billing, api_headers, api_key, billing_environment
from tests.portal.test_portal_pages import container_of, discord, person, text_of

__all__ = ["discord"]


@pytest.fixture
def notifications(clock, ledger) -> NotificationService:  # type: ignore[no-untyped-def]
    return NotificationService(clock, ledger, load_catalog())


def outbox(db, account_id: str, type_: str | None = None) -> list[OutboxEntry]:  # type: ignore[no-untyped-def]
    def work(s):  # type: ignore[no-untyped-def]
        query = select(OutboxEntry).where(OutboxEntry.account_id == account_id)
        if type_:
            query = query.where(OutboxEntry.type == type_)
        rows = list(s.execute(query.order_by(OutboxEntry.created_at, OutboxEntry.id)).scalars())
        for row in rows:
            s.expunge(row)
        return rows

    return db.read(work)


def cross(db, ledger, notifications, account_id: str, n: int) -> None:  # type: ignore[no-untyped-def]
    """Top the wallet up to 100 credits (re-arming), then spend down to 20: one crossing of 50."""

    def work(s):  # type: ignore[no-untyped-def]
        ledger.lock_wallet(s, account_id)  # as every balance write does first
        available = ledger.balance(s, account_id).available
        if available < 100_000:
            ledger.issue_grant(
                s,
                account_id=account_id,
                amount=100_000 - available,
                source="promotional",
                cause_type="admin",
                idempotency_key=f"top-{n}",
            )
            notifications.after_balance_change(s, account_id)
        ledger.debit(s, account_id=account_id, amount=80_000, idempotency_key=f"spend-{n}")
        notifications.after_balance_change(s, account_id)

    db.write(work)


def enable(db, notifications, account_id: str, key: str = "on", **limits):  # type: ignore[no-untyped-def]
    return db.write(
        lambda s: notifications.set_auto_recharge(
            s,
            account_id=account_id,
            enabled=True,
            threshold_credits=50,
            pack_id=limits.pop("pack", "credits_1000"),
            idempotency_key=key,
            **limits,
        )
    )


@pytest.mark.parametrize("kind", ["personal", "server", "organization"])
def test_a_count_limit_stops_once_a_month_and_starts_again_next_month(  # type: ignore[no-untyped-def]
    db, ledger, clock, notifications, make_account, kind
) -> None:
    account_id = make_account(kind)
    enable(db, notifications, account_id, monthly_limit_count=2)
    for n in range(4):
        cross(db, ledger, notifications, account_id, n)
    jobs = outbox(db, account_id, JOB_AUTO_RECHARGE)
    assert len(jobs) == 2  # one per crossing, never beyond the limit
    (stopped,) = outbox(db, account_id, "auto_recharge.stopped")  # one notification, not one per crossing
    assert stopped.data["reason"] == "monthly_limit" and stopped.data["purchases_this_month"] == 2
    view = db.read(lambda s: notifications.get_settings(s, account_id)).auto_recharge
    assert (view.purchases_this_month, view.amount_this_month, view.enabled) == (2, 3000, True)

    clock.set(datetime(2026, 12, 2, tzinfo=UTC))  # a new month
    cross(db, ledger, notifications, account_id, 9)
    assert len(outbox(db, account_id, JOB_AUTO_RECHARGE)) == 3


def test_an_amount_limit_counts_money_and_failed_purchases_do_not_count(  # type: ignore[no-untyped-def]
    db, ledger, notifications, make_account
) -> None:
    account_id = make_account("organization")
    enable(db, notifications, account_id, pack="credits_5000", monthly_limit_amount=13_000)
    cross(db, ledger, notifications, account_id, 0)
    cross(db, ledger, notifications, account_id, 1)
    first, second = outbox(db, account_id, JOB_AUTO_RECHARGE)
    # Stripe was unreachable for the first one: it bought nothing and leaves room for another.
    db.write(
        lambda s: notifications.settle_auto_recharge(s, first.id, account_id, False, "payment_provider_error")
    )
    cross(db, ledger, notifications, account_id, 2)
    assert len(outbox(db, account_id, JOB_AUTO_RECHARGE)) == 3
    cross(db, ledger, notifications, account_id, 3)  # 12,000 of 13,000 spent: another 6,000 would exceed
    assert len(outbox(db, account_id, JOB_AUTO_RECHARGE)) == 3
    assert [e.data["reason"] for e in outbox(db, account_id, "auto_recharge.stopped")] == ["monthly_limit"]
    statuses = db.read(
        lambda s: sorted(
            s.scalars(
                select(AutoRechargePurchase.status).where(AutoRechargePurchase.account_id == account_id)
            )
        )
    )
    assert statuses == ["failed", "started", "started"]


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({}, "Give a monthly limit"),
        ({"monthly_limit_count": 0}, "from 1 to"),
        ({"monthly_limit_count": -3}, "from 1 to"),
        ({"monthly_limit_amount": 0}, "at least one"),
        ({"monthly_limit_amount": 1_499}, "at least one"),
        ({"monthly_limit_count": True}, "whole number"),
    ],
)
def test_bad_limits_are_refused_and_nothing_is_written(  # type: ignore[no-untyped-def]
    db, notifications, make_account, limits, message
) -> None:
    account_id = make_account()
    with pytest.raises(InvalidAutoRechargeLimit, match=message) as refused:
        enable(db, notifications, account_id, key="bad", **limits)
    assert refused.value.code == "invalid_auto_recharge_limit"

    def written(s):  # type: ignore[no-untyped-def]
        return (
            s.get(NotificationSettings, account_id),
            s.scalar(
                select(func.count())
                .select_from(IdempotencyRecord)
                .where(IdempotencyRecord.scope == f"notifications.auto_recharge:{account_id}")
            ),
        )

    assert db.read(written) == (None, 0)


@pytest.fixture
def billing(stripe_local, db, clock, make_account) -> Iterator[Billing]:  # type: ignore[no-untyped-def]
    yield from billing_environment(stripe_local, db, clock, make_account)


def buy_pack_with(billing: Billing, kind: str, card: str) -> tuple[str, object]:
    account_id, principal = billing.person(kind)
    view = billing.service.start_checkout(
        principal, account_id, idempotency_key="first", pack_id="credits_1000"
    )
    assert billing.harness.pay_checkout(view.url, card=card).status_code == 303
    billing.harness.wait_for_webhooks()
    return account_id, principal


def run_jobs(billing: Billing, account_id: str) -> None:
    worker = DeliveryWorker(billing.container, account_ids=[account_id])
    try:
        worker.run_once()
    finally:
        worker.close()
    billing.harness.wait_for_webhooks()


def spend_below(billing: Billing, account_id: str, n: int) -> None:
    c = billing.container

    def work(s):  # type: ignore[no-untyped-def]
        available = c.ledger.balance(s, account_id).available
        amount = available - 10_000 if available > 20_000 else 1_000
        c.ledger.debit(s, account_id=account_id, amount=amount, idempotency_key=f"use-{n}")
        c.notifications.after_balance_change(s, account_id)

    billing.db.write(work)


def test_a_personal_auto_recharge_buys_within_its_limit_through_stripe(billing: Billing) -> None:
    account_id, _ = buy_pack_with(billing, "personal", "4242424242424242")
    enable(billing.db, billing.container.notifications, account_id, monthly_limit_count=1)
    spend_below(billing, account_id, 1)
    run_jobs(billing, account_id)
    packs = [g for g in billing.grants(account_id) if g.source == "purchase"]
    assert len(packs) == 2  # the checkout's and the auto-recharge's, once
    statuses = billing.db.read(
        lambda s: list(
            s.scalars(
                select(AutoRechargePurchase.status).where(AutoRechargePurchase.account_id == account_id)
            )
        )
    )
    assert statuses == ["succeeded"]
    spend_below(billing, account_id, 2)
    run_jobs(billing, account_id)
    assert len([g for g in billing.grants(account_id) if g.source == "purchase"]) == 2
    assert [e.data["reason"] for e in outbox(billing.db, account_id, "auto_recharge.stopped")] == [
        "monthly_limit"
    ]


def test_a_declined_card_stops_auto_recharge_once_until_it_is_saved_again(billing: Billing) -> None:
    account_id, _ = buy_pack_with(billing, "server", CARD_DECLINES_RENEWALS)
    notifications = billing.container.notifications
    enable(billing.db, notifications, account_id, monthly_limit_count=5)
    spend_below(billing, account_id, 1)
    run_jobs(billing, account_id)
    view = billing.db.read(lambda s: notifications.get_settings(s, account_id)).auto_recharge
    assert (view.enabled, view.stopped_reason, view.purchases_this_month) == (False, "card_declined", 0)
    (stopped,) = outbox(billing.db, account_id, "auto_recharge.stopped")
    assert stopped.data["reason"] == "card_declined"
    assert [e.data["reason"] for e in outbox(billing.db, account_id, "auto_recharge.failed")] == [
        "payment_failed"
    ]
    spend_below(billing, account_id, 2)  # off: nothing more is tried, nothing more is said
    run_jobs(billing, account_id)
    assert len(outbox(billing.db, account_id, JOB_AUTO_RECHARGE)) == 1
    assert len(outbox(billing.db, account_id, "auto_recharge.stopped")) == 1
    again = enable(billing.db, notifications, account_id, key="again", monthly_limit_count=5)
    assert again.enabled and again.stopped_reason is None


def test_bad_limits_read_clearly_over_http_in_the_portal_form_and_on_the_command_line(
    billing: Billing,
) -> None:
    account_id, person = billing.person("personal")
    url = f"/v1/accounts/{account_id}/auto-recharge"
    body = {"enabled": True, "threshold_credits": 100, "pack_id": "credits_1000", "monthly_limit_count": 0}
    response = billing.app.put(
        url,
        json=body,
        headers=api_headers(api_key(billing.container, "billing:write"), person.user_id, idem="z"),
    )
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "invalid_auto_recharge_limit"
    output.set_container(billing.container)
    try:
        refused = CliRunner().invoke(cli, ["auto-recharge", account_id, "--limit-amount", "100"])
        errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
        assert refused.exit_code == 1 and len(errors) == 1 and "at least one" in errors[0], refused.output
        done = CliRunner().invoke(cli, ["auto-recharge", account_id, "--limit-count", "2"])
        assert done.exit_code == 0 and "at most 2 purchase(s) a month" in done.output, done.output
    finally:
        output.set_container(None)


def test_every_billing_page_has_auto_recharge_for_its_own_account(db, clock, discord) -> None:  # type: ignore[no-untyped-def]
    guild = snowflake()
    owner = person(db, discord, clock, [{"id": guild, "name": "Den", "permissions": "32"}])
    c = container_of(owner)
    for base in ("/portal/personal/billing", f"/portal/server/{guild}/billing"):
        owner.get(base)
        action = f"{base}/auto-recharge"
        refused = owner.submit(
            action,
            {"enabled": "1", "threshold_credits": "100", "pack": "credits_1000", "monthly_limit_count": "0"},
        )
        # Said in the form's own words, before any card is looked for.
        assert refused.status_code == 422 and "Purchases a month must be from 1" in refused.text
        refused = owner.submit(
            action,
            {"enabled": "1", "threshold_credits": "100", "pack": "credits_1000", "monthly_limit_money": "5"},
        )
        assert refused.status_code == 422 and "at least one 1,000 credits pack" in refused.text
        # Good settings still need a card saved with Stripe, said by the box (decision 0041).
        no_card = owner.submit(
            action,
            {"enabled": "1", "threshold_credits": "100", "pack": "credits_1000", "monthly_limit_money": "45"},
        )
        assert no_card.status_code == 422 and no_card.headers["X-Error-Field"] == "enabled"
        assert "needs a card saved with Stripe" in no_card.text
        # With a card (as after a first purchase), the page says what it buys and its limit.
        kind, ref = ("personal", owner.user_id) if "personal" in base else ("server", guild)
        account = db.write(lambda s, k=kind, r=ref: c.accounts.get_or_create(s, k, r))
        db.write(
            lambda s, a=account.id, b=base: c.notifications.set_auto_recharge(
                s,
                account_id=a,
                enabled=True,
                threshold_credits=100,
                pack_id="credits_1000",
                idempotency_key="with-card-" + b,
                monthly_limit_amount=4500,
            )
        )
        page = text_of(owner.get(base))
        assert "Buys 1,000 credits when fewer than 100 credits are available, at most $45.00 a month" in page
    stranger = person(db, discord, clock)
    stranger.get("/portal/personal/billing")
    denied = stranger.submit(
        f"/portal/server/{guild}/billing/auto-recharge",
        {"enabled": "1", "threshold_credits": "1", "pack": "credits_1000", "monthly_limit_count": "1"},
        tokens=stranger.tokens("/portal/personal/billing/auto-recharge"),
    )
    assert denied.status_code == 403 and "Manage Server" in denied.text


@pytest.mark.postgres
def test_concurrent_top_ups_and_spends_never_buy_beyond_the_limit(
    db, ledger, notifications, make_account
) -> None:  # type: ignore[no-untyped-def]
    """Threads top up and spend at once, crossing the threshold again and again; crossings of one
    wallet queue on its lock, so the month's count is never exceeded."""
    account_id = make_account("organization")
    enable(db, notifications, account_id, monthly_limit_count=3)
    threads = 8
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(4):
                cross(db, ledger, notifications, account_id, n * 10 + i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    assert len(outbox(db, account_id, JOB_AUTO_RECHARGE)) == 3
    assert len(outbox(db, account_id, "auto_recharge.stopped")) == 1
