from datetime import timedelta

import pytest

from chronote_billing.core.errors import (
    CapReached,
    HoldAlreadySettled,
    HoldExpired,
    IdempotencyConflict,
    InsufficientCredits,
    NotFound,
    ValidationFailed,
)
from chronote_billing.ledger.service import CapSpec, CaptureExceedsHold
from chronote_billing.ledger.verify import verify
from tests.factories import grant


def test_grant_hold_capture_release_flow(db, ledger, clock, make_account):
    acct = make_account()
    grant(db, ledger, acct, 10_000, "g1")
    hold = db.write(
        lambda s: ledger.place_hold(
            s,
            account_id=acct,
            amount=4_000,
            expires_at=clock.now() + timedelta(hours=1),
            idempotency_key="h1",
        )
    )
    bal = db.read(lambda s: ledger.balance(s, acct))
    assert (bal.available, bal.held, bal.posted) == (6_000, 4_000, 10_000)
    captured = db.write(lambda s: ledger.capture_hold(s, hold_id=hold.id, amount=2_500, idempotency_key="c1"))
    assert captured.status == "captured" and captured.amount_captured == 2_500
    bal = db.read(lambda s: ledger.balance(s, acct))
    assert (bal.available, bal.held, bal.posted) == (7_500, 0, 7_500)
    with pytest.raises(HoldAlreadySettled):
        db.write(lambda s: ledger.capture_hold(s, hold_id=hold.id, amount=1, idempotency_key="c2"))
    # retry of the first capture returns the first result
    again = db.write(lambda s: ledger.capture_hold(s, hold_id=hold.id, amount=2_500, idempotency_key="c1"))
    assert again == captured
    with pytest.raises(IdempotencyConflict):
        db.write(lambda s: ledger.capture_hold(s, hold_id=hold.id, amount=2_000, idempotency_key="c1"))
    assert db.read(lambda s: verify(s)) == []


def test_burn_order_earliest_expiry_then_priority_then_oldest(db, ledger, clock, make_account):
    acct = make_account()
    now = clock.now()
    never = grant(db, ledger, acct, 1_000, "a")
    late = grant(db, ledger, acct, 1_000, "b", expires_at=now + timedelta(days=30))
    soon_low = grant(db, ledger, acct, 1_000, "c", expires_at=now + timedelta(days=5), priority=80)
    soon_high = grant(db, ledger, acct, 1_000, "d", expires_at=now + timedelta(days=5), priority=10)
    db.write(lambda s: ledger.debit(s, account_id=acct, amount=2_500, idempotency_key="x"))
    left = {g.id: g.remaining for g in db.read(lambda s: ledger.list_grants(s, acct))}
    assert left[soon_high.id] == 0 and left[soon_low.id] == 0
    assert left[late.id] == 500 and left[never.id] == 1_000


def test_grants_without_expiry_burn_by_priority_before_age(db, ledger, clock, make_account):
    acct = make_account()
    older_low = grant(db, ledger, acct, 1_000, "a", priority=80)
    clock.advance(timedelta(minutes=1))
    newer_high = grant(db, ledger, acct, 1_000, "b", priority=10)
    clock.advance(timedelta(minutes=1))
    newest_high = grant(db, ledger, acct, 1_000, "c", priority=10)
    db.write(lambda s: ledger.debit(s, account_id=acct, amount=1_500, idempotency_key="x"))
    left = {g.id: g.remaining for g in db.read(lambda s: ledger.list_grants(s, acct))}
    assert (left[newer_high.id], left[newest_high.id], left[older_low.id]) == (0, 500, 1_000)


def test_expiry_moves_remainder_to_breakage_but_not_held_part(db, ledger, clock, make_account):
    acct = make_account()
    g = grant(db, ledger, acct, 5_000, "g", expires_at=clock.now() + timedelta(hours=1))
    hold = db.write(
        lambda s: ledger.place_hold(
            s, account_id=acct, amount=2_000, expires_at=clock.now() + timedelta(hours=3), idempotency_key="h"
        )
    )
    clock.advance(timedelta(hours=2))
    bal = db.read(lambda s: ledger.balance(s, acct))
    assert bal.available == 0 and bal.held == 2_000
    assert db.write(lambda s: ledger.sweep(s, acct)) >= 1
    assert db.read(lambda s: ledger.get_grant(s, g.id)).remaining == 2_000
    db.write(lambda s: ledger.capture_hold(s, hold_id=hold.id, amount=1_200, idempotency_key="c"))
    got = db.read(lambda s: ledger.get_grant(s, g.id))
    assert got.remaining == 0 and got.status == "closed"
    kinds = [line.kind for line in db.read(lambda s: ledger.statement(s, acct)).data]
    assert kinds.count("expiry") == 2 and "capture" in kinds


def test_hold_expires_on_its_own(db, ledger, clock, make_account):
    acct = make_account()
    grant(db, ledger, acct, 3_000, "g")
    hold = db.write(
        lambda s: ledger.place_hold(
            s,
            account_id=acct,
            amount=3_000,
            expires_at=clock.now() + timedelta(minutes=5),
            idempotency_key="h",
        )
    )
    clock.advance(timedelta(minutes=6))
    assert db.read(lambda s: ledger.balance(s, acct)).available == 3_000
    with pytest.raises(HoldExpired):
        db.write(lambda s: ledger.capture_hold(s, hold_id=hold.id, amount=10, idempotency_key="c"))
    with pytest.raises(HoldExpired):
        db.write(lambda s: ledger.extend_hold(s, hold_id=hold.id, amount=10, idempotency_key="e"))
    db.write(lambda s: ledger.debit(s, account_id=acct, amount=3_000, idempotency_key="d"))
    assert db.read(lambda s: ledger.get_hold(s, hold.id)).status == "expired"


def test_partial_and_declined_holds(db, ledger, clock, make_account):
    acct = make_account()
    grant(db, ledger, acct, 1_000, "g")
    exp = clock.now() + timedelta(hours=1)
    with pytest.raises(InsufficientCredits):
        db.write(
            lambda s: ledger.place_hold(s, account_id=acct, amount=2_000, expires_at=exp, idempotency_key="h")
        )
    part = db.write(
        lambda s: ledger.place_hold(
            s, account_id=acct, amount=2_000, expires_at=exp, idempotency_key="h2", allow_partial=True
        )
    )
    assert part.partial and part.amount_held == 1_000
    with pytest.raises(CaptureExceedsHold):
        db.write(lambda s: ledger.capture_hold(s, hold_id=part.id, amount=1_001, idempotency_key="c"))
    ext = db.write(
        lambda s: ledger.extend_hold(
            s, hold_id=part.id, expires_at=exp + timedelta(hours=1), idempotency_key="e"
        )
    )
    assert ext.expires_at == exp + timedelta(hours=1)


def test_caps_limit_holds_and_debits(db, ledger, clock, make_account):
    acct = make_account("organization")
    grant(db, ledger, acct, 100_000, "g")
    cap = CapSpec("auth_test_cap", 5_000)
    exp = clock.now() + timedelta(hours=1)
    h = db.write(
        lambda s: ledger.place_hold(
            s, account_id=acct, amount=4_000, expires_at=exp, idempotency_key="h", cap=cap
        )
    )
    with pytest.raises(CapReached):
        db.write(lambda s: ledger.debit(s, account_id=acct, amount=1_500, idempotency_key="d", cap=cap))
    db.write(lambda s: ledger.capture_hold(s, hold_id=h.id, amount=3_000, idempotency_key="c"))
    db.write(lambda s: ledger.debit(s, account_id=acct, amount=1_500, idempotency_key="d2", cap=cap))
    usage = db.read(lambda s: ledger.cap_usage(s, "auth_test_cap", h.cap_period))
    assert (usage.held, usage.used) == (0, 4_500)


def test_bad_input_writes_nothing(db, ledger, clock, make_account):
    acct = make_account()
    for amount in (0, -5, 1.5, True):
        with pytest.raises(ValidationFailed):
            grant(db, ledger, acct, amount, f"bad{amount}")
    with pytest.raises(ValidationFailed):
        grant(
            db,
            ledger,
            acct,
            10,
            "exp",
            effective_at=clock.now() + timedelta(days=2),
            expires_at=clock.now() + timedelta(days=1),
        )
    with pytest.raises(NotFound):
        grant(db, ledger, "acct_missing", 10, "nf")
    assert db.read(lambda s: ledger.balance(s, acct)).posted == 0
    assert db.read(lambda s: ledger.statement(s, acct)).data == []
