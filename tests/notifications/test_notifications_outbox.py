"""The transactional outbox, low-balance alerts and the auto-recharge trigger."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from chronote_billing.catalog.service import load_catalog
from chronote_billing.core.errors import IdempotencyConflict, NotFound
from chronote_billing.notifications.models import OutboxEntry
from chronote_billing.notifications.service import (
    JOB_AUTO_RECHARGE,
    InvalidThreshold,
    NotificationService,
    UnknownPack,
)


@pytest.fixture
def notifications(clock, ledger) -> NotificationService:
    return NotificationService(clock, ledger, load_catalog())


def entries(db, account_id, kind=None, type_=None):
    def work(s):
        q = select(OutboxEntry).where(OutboxEntry.account_id == account_id)
        if kind:
            q = q.where(OutboxEntry.kind == kind)
        if type_:
            q = q.where(OutboxEntry.type == type_)
        return list(s.execute(q.order_by(OutboxEntry.id)).scalars())

    return db.read(work)


def grant(db, ledger, notifications, acct, credits, key):
    def work(s):
        ledger.issue_grant(
            s,
            account_id=acct,
            amount=credits * 1000,
            source="promotional",
            cause_type="admin",
            idempotency_key=key,
        )
        notifications.after_balance_change(s, acct)

    db.write(work)


def spend(db, ledger, notifications, acct, credits, key):
    def work(s):
        ledger.debit(s, account_id=acct, amount=credits * 1000, idempotency_key=key, reason="test")
        notifications.after_balance_change(s, acct)

    db.write(work)


class Boom(Exception):
    pass


def test_emit_commits_and_rolls_back_with_the_caller(db, notifications, make_account):
    acct = make_account()

    def failing(s):
        notifications.emit(s, "hold.declined", acct, {"hold": "x"}, dedupe_key=f"t:{acct}:rolled-back")
        raise Boom

    with pytest.raises(Boom):
        db.write(failing)
    assert entries(db, acct) == []

    db.write(lambda s: notifications.emit(s, "hold.declined", acct, {"n": 1}, dedupe_key=f"t:{acct}:1"))
    [row] = entries(db, acct)
    assert row.id.startswith("evt_") and row.kind == "event" and row.type == "hold.declined"
    assert row.data == {"n": 1} and row.attempts == 0 and row.next_attempt_at is not None


def test_emit_dedupes_on_key_within_and_across_transactions(db, notifications, make_account):
    acct = make_account()
    key = f"t:{acct}:same"

    def twice(s):
        notifications.emit(s, "payment.failed", acct, {"first": True}, dedupe_key=key)
        notifications.emit(s, "payment.failed", acct, {"first": False}, dedupe_key=key)

    db.write(twice)
    db.write(lambda s: notifications.emit(s, "payment.failed", acct, {"first": False}, dedupe_key=key))
    [row] = entries(db, acct)
    assert row.data == {"first": True}
    db.write(lambda s: notifications.emit(s, "payment.failed", acct, {}, dedupe_key=key + ":other"))
    assert len(entries(db, acct)) == 2


def test_emit_rejects_bad_arguments(db, notifications, make_account):
    acct = make_account()
    with pytest.raises(ValueError):
        db.write(lambda s: notifications.emit(s, "NotAType", acct, {}, dedupe_key="k"))
    with pytest.raises(ValueError):
        db.write(lambda s: notifications.emit(s, "hold.declined", acct, {}, dedupe_key=" "))
    with pytest.raises(ValueError):
        db.write(lambda s: notifications.emit(s, "hold.declined", acct, {"x": object()}, dedupe_key="k2"))
    assert entries(db, acct) == []


def test_low_balance_alert_fires_once_per_crossing_and_rearms(db, ledger, notifications, make_account):
    acct = make_account()
    grant(db, ledger, notifications, acct, 150, "g1")
    db.write(
        lambda s: notifications.set_alert_settings(
            s, account_id=acct, low_balance_threshold_credits=100, idempotency_key="alert-1"
        )
    )
    spend(db, ledger, notifications, acct, 40, "d1")  # 110 left: above
    assert entries(db, acct) == []
    spend(db, ledger, notifications, acct, 20, "d2")  # 90: crosses
    spend(db, ledger, notifications, acct, 10, "d3")  # 80: still below, no second alert
    [first] = entries(db, acct, type_="wallet.balance_low")
    assert first.data["available_millicredits"] == 90_000
    assert first.data["threshold_credits"] == 100 and first.data["crossing"] == 1

    grant(db, ledger, notifications, acct, 10, "g2")  # 90: still below, not re-armed
    spend(db, ledger, notifications, acct, 5, "d4")
    assert len(entries(db, acct, type_="wallet.balance_low")) == 1

    grant(db, ledger, notifications, acct, 50, "g3")  # 135: back above, re-armed
    view = db.read(lambda s: notifications.get_settings(s, acct)).alerts
    assert view.armed and view.alerts_sent == 1
    spend(db, ledger, notifications, acct, 40, "d5")  # 95: second crossing
    alerts = entries(db, acct, type_="wallet.balance_low")
    assert [a.data["crossing"] for a in alerts] == [1, 2]
    assert len({a.id for a in alerts}) == 2


def test_alert_at_exactly_the_threshold_does_not_fire(db, ledger, notifications, make_account):
    acct = make_account()
    grant(db, ledger, notifications, acct, 20, "g")
    db.write(
        lambda s: notifications.set_alert_settings(
            s, account_id=acct, low_balance_threshold_credits=10, idempotency_key="a"
        )
    )
    spend(db, ledger, notifications, acct, 10, "d1")
    assert entries(db, acct) == []
    spend(db, ledger, notifications, acct, 1, "d2")
    assert len(entries(db, acct)) == 1


def test_no_settings_means_no_events(db, ledger, notifications, make_account):
    acct = make_account()
    grant(db, ledger, notifications, acct, 5, "g")
    spend(db, ledger, notifications, acct, 5, "d")
    assert entries(db, acct) == []


def test_turning_the_alert_off(db, ledger, notifications, make_account):
    acct = make_account()
    grant(db, ledger, notifications, acct, 50, "g")
    for key, value in (("on", 40), ("off", None)):
        db.write(
            lambda s, k=key, v=value: notifications.set_alert_settings(
                s, account_id=acct, low_balance_threshold_credits=v, idempotency_key=k
            )
        )
    spend(db, ledger, notifications, acct, 30, "d")
    assert entries(db, acct) == []
    assert db.read(lambda s: notifications.get_settings(s, acct)).alerts.low_balance_threshold_credits is None


def test_alert_settings_are_idempotent_and_validated(db, notifications, make_account):
    acct = make_account()
    first = db.write(
        lambda s: notifications.set_alert_settings(
            s, account_id=acct, low_balance_threshold_credits=25, idempotency_key="k"
        )
    )
    again = db.write(
        lambda s: notifications.set_alert_settings(
            s, account_id=acct, low_balance_threshold_credits=25, idempotency_key="k"
        )
    )
    assert again == first and first.low_balance_threshold_credits == 25
    with pytest.raises(IdempotencyConflict):
        db.write(
            lambda s: notifications.set_alert_settings(
                s, account_id=acct, low_balance_threshold_credits=26, idempotency_key="k"
            )
        )
    for bad in (0, -1, 10**13, 2.5, True, "10"):
        with pytest.raises(InvalidThreshold):
            db.write(
                lambda s, b=bad: notifications.set_alert_settings(
                    s, account_id=acct, low_balance_threshold_credits=b, idempotency_key=f"bad-{b}"
                )
            )
    with pytest.raises(NotFound):
        db.write(
            lambda s: notifications.set_alert_settings(
                s, account_id="acct_missing", low_balance_threshold_credits=1, idempotency_key="m"
            )
        )
    assert db.read(lambda s: notifications.get_settings(s, acct)).alerts.low_balance_threshold_credits == 25


def enable_auto_recharge(db, notifications, acct, threshold=50, pack="credits_1000", key="ar-1", limit=5):
    return db.write(
        lambda s: notifications.set_auto_recharge(
            s,
            account_id=acct,
            enabled=True,
            threshold_credits=threshold,
            pack_id=pack,
            idempotency_key=key,
            monthly_limit_count=limit,
        )
    )


def test_auto_recharge_enqueued_once_per_crossing(db, ledger, notifications, make_account):
    org = make_account("organization")
    grant(db, ledger, notifications, org, 100, "g1")
    view = enable_auto_recharge(db, notifications, org)
    assert view.enabled and view.threshold_credits == 50 and view.pack_id == "credits_1000" and view.armed

    spend(db, ledger, notifications, org, 40, "d1")  # 60
    assert entries(db, org) == []
    spend(db, ledger, notifications, org, 20, "d2")  # 40: crosses
    spend(db, ledger, notifications, org, 20, "d3")  # 20: no second purchase
    [job] = entries(db, org, kind="job")
    assert job.id.startswith("job_") and job.type == JOB_AUTO_RECHARGE
    assert job.data == {"account_id": org, "pack_id": "credits_1000", "crossing": 1}
    [started] = entries(db, org, type_="auto_recharge.started")
    assert started.data["recharge_id"] == job.id
    assert started.data["pack_credits"] == 1000 and started.data["available_millicredits"] == 40_000

    grant(db, ledger, notifications, org, 1000, "g2")  # the purchase arrives: re-armed
    assert db.read(lambda s: notifications.get_settings(s, org)).auto_recharge.armed
    spend(db, ledger, notifications, org, 1000, "d4")  # 20 again: a second crossing
    jobs = entries(db, org, kind="job")
    assert [j.data["crossing"] for j in jobs] == [1, 2]


def test_auto_recharge_and_alert_together(db, ledger, notifications, make_account):
    org = make_account("organization")
    grant(db, ledger, notifications, org, 100, "g")
    enable_auto_recharge(db, notifications, org, threshold=30, pack="credits_5000")
    db.write(
        lambda s: notifications.set_alert_settings(
            s, account_id=org, low_balance_threshold_credits=60, idempotency_key="al"
        )
    )
    spend(db, ledger, notifications, org, 50, "d1")  # 50: alert only
    assert [e.type for e in entries(db, org)] == ["wallet.balance_low"]
    spend(db, ledger, notifications, org, 30, "d2")  # 20: auto-recharge too
    assert sorted(e.type for e in entries(db, org)) == [
        JOB_AUTO_RECHARGE,
        "auto_recharge.started",
        "wallet.balance_low",
    ]


def test_disabled_auto_recharge_does_nothing(db, ledger, notifications, make_account):
    org = make_account("organization")
    grant(db, ledger, notifications, org, 100, "g")
    db.write(
        lambda s: notifications.set_auto_recharge(
            s,
            account_id=org,
            enabled=False,
            threshold_credits=50,
            pack_id="credits_1000",
            idempotency_key="off",
        )
    )
    spend(db, ledger, notifications, org, 90, "d")
    assert entries(db, org) == []


def test_auto_recharge_rolled_back_with_the_spend(db, ledger, notifications, make_account):
    org = make_account("organization")
    grant(db, ledger, notifications, org, 100, "g")
    enable_auto_recharge(db, notifications, org)

    def failing(s):
        ledger.debit(s, account_id=org, amount=90_000, idempotency_key="d")
        notifications.after_balance_change(s, org)
        raise Boom

    with pytest.raises(Boom):
        db.write(failing)
    assert entries(db, org) == []
    assert db.read(lambda s: notifications.get_settings(s, org)).auto_recharge.armed
    spend(db, ledger, notifications, org, 90, "d")
    assert len(entries(db, org, kind="job")) == 1


def test_auto_recharge_settings_rules(db, notifications, make_account):
    personal, server, org = make_account(), make_account("server"), make_account("organization")
    for acct in (personal, server):  # every payer may use auto-recharge (decision 0045)
        assert enable_auto_recharge(db, notifications, acct, key=f"on-{acct}").enabled
    with pytest.raises(UnknownPack) as unknown:
        enable_auto_recharge(db, notifications, org, pack="credits_7")
    assert unknown.value.code == "unknown_pack"
    with pytest.raises(InvalidThreshold):
        enable_auto_recharge(db, notifications, org, threshold=0)
    first = enable_auto_recharge(db, notifications, org, key="same")
    assert enable_auto_recharge(db, notifications, org, key="same") == first
    with pytest.raises(IdempotencyConflict):
        enable_auto_recharge(db, notifications, org, threshold=51, key="same")
    settings = db.read(lambda s: notifications.get_settings(s, org))
    assert settings.auto_recharge.threshold_credits == 50
    assert db.read(lambda s: notifications.get_settings(s, make_account())).auto_recharge.enabled is False


@pytest.mark.postgres
def test_auto_recharge_once_under_concurrent_spends(db, ledger, notifications, make_account):
    org = make_account("organization")
    grant(db, ledger, notifications, org, 200, "g")
    enable_auto_recharge(db, notifications, org, threshold=100)
    threads = 12
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(3):
                spend(db, ledger, notifications, org, 5, f"d-{n}-{i}")  # 180 credits in all
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    assert db.read(lambda s: ledger.balance(s, org)).available == 20_000
    assert len(entries(db, org, kind="job")) == 1
    assert len(entries(db, org, type_="auto_recharge.started")) == 1


@pytest.mark.postgres
def test_concurrent_checks_fire_once_without_a_wallet_lock(db, ledger, notifications, make_account):
    """Even callers that did not lock the wallet cannot both fire: the disarm is conditional."""
    org = make_account("organization")
    grant(db, ledger, notifications, org, 10, "g")
    enable_auto_recharge(db, notifications, org, threshold=100)  # armed, balance already below
    threads = 12
    barrier = threading.Barrier(threads)

    def check() -> None:
        barrier.wait()
        db.write(lambda s: notifications.after_balance_change(s, org))

    pool = [threading.Thread(target=check) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert len(entries(db, org, kind="job")) == 1
