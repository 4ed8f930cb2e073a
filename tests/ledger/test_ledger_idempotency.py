"""Every ledger write: a retry returns the first result, even after the wallet changed; the
same key with other parameters is a conflict; nothing is written twice."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from chronote_billing.core.errors import IdempotencyConflict, ValidationFailed
from chronote_billing.ledger.models import Debit, Grant, Hold, Transfer
from chronote_billing.ledger.service import CapSpec
from chronote_billing.ledger.verify import verify
from tests.factories import grant


def transfers(db, ledger, account) -> int:
    wallet = db.read(lambda s: ledger._wallet(s, account).id)
    return db.read(
        lambda s: s.execute(select(func.count()).where(Transfer.wallet_account_id == wallet)).scalar_one()
    )


def rows(db, model, account) -> int:
    return db.read(
        lambda s: s.execute(
            select(func.count()).select_from(model).where(model.billing_account_id == account)
        ).scalar_one()
    )


def hold(db, ledger, clock, account, amount, key, **kw):
    kw.setdefault("expires_at", clock.now() + timedelta(hours=1))
    return db.write(
        lambda s: ledger.place_hold(s, account_id=account, amount=amount, idempotency_key=key, **kw)
    )


def test_issue_grant(db, ledger, clock, make_account):
    acct = make_account()
    expires = clock.now() + timedelta(days=1)
    first = grant(db, ledger, acct, 5_000, "grant-1", expires_at=expires)
    written = transfers(db, ledger, acct)
    db.write(lambda s: ledger.debit(s, account_id=acct, amount=1_000, idempotency_key="d"))
    clock.advance(timedelta(days=2))  # the grant has expired since; the retry still answers
    assert grant(db, ledger, acct, 5_000, "grant-1", expires_at=expires) == first
    with pytest.raises(IdempotencyConflict):
        grant(db, ledger, acct, 5_001, "grant-1", expires_at=expires)
    with pytest.raises(IdempotencyConflict):
        grant(db, ledger, acct, 5_000, "grant-1", expires_at=expires, priority=10)
    assert rows(db, Grant, acct) == 1
    assert transfers(db, ledger, acct) == written + 1  # the debit only
    # A grant without an explicit start is still answered after its expiry has passed.
    second = grant(db, ledger, acct, 100, "grant-2", expires_at=clock.now() + timedelta(minutes=5))
    clock.advance(timedelta(hours=1))
    assert grant(db, ledger, acct, 100, "grant-2", expires_at=second.expires_at) == second
    # The same key on another account is another key.
    other = make_account()
    assert grant(db, ledger, other, 5_000, "grant-1", expires_at=None).account_id == other


def test_place_hold_retry_after_capture_and_after_expiry(db, ledger, clock, make_account):
    acct = make_account()
    grant(db, ledger, acct, 10_000, "g")
    expires = clock.now() + timedelta(minutes=30)
    first = hold(db, ledger, clock, acct, 4_000, "place", expires_at=expires, reason="meeting")
    written = transfers(db, ledger, acct)
    db.write(lambda s: ledger.capture_hold(s, hold_id=first.id, amount=1_000, idempotency_key="cap"))
    again = hold(db, ledger, clock, acct, 4_000, "place", expires_at=expires, reason="meeting")
    assert again == first and again.status == "open"
    clock.advance(timedelta(hours=2))  # past the hold's expiry: the retry still gets the first answer
    assert hold(db, ledger, clock, acct, 4_000, "place", expires_at=expires, reason="meeting") == first
    with pytest.raises(IdempotencyConflict):
        hold(db, ledger, clock, acct, 4_000, "place", expires_at=expires, reason="other")
    with pytest.raises(IdempotencyConflict):
        hold(db, ledger, clock, acct, 3_000, "place", expires_at=expires, reason="meeting")
    # A new key with an expiry in the past is still refused.
    with pytest.raises(ValidationFailed):
        hold(db, ledger, clock, acct, 4_000, "place-2", expires_at=expires)
    assert rows(db, Hold, acct) == 1
    assert transfers(db, ledger, acct) == written + 1  # the capture's single post


def test_extend_hold(db, ledger, clock, make_account):
    acct = make_account()
    grant(db, ledger, acct, 10_000, "g")
    h = hold(db, ledger, clock, acct, 1_000, "place")
    later = clock.now() + timedelta(hours=3)
    first = db.write(
        lambda s: ledger.extend_hold(s, hold_id=h.id, amount=2_000, expires_at=later, idempotency_key="ext")
    )
    assert first.amount_held == 3_000
    written = transfers(db, ledger, acct)
    db.write(lambda s: ledger.capture_hold(s, hold_id=h.id, amount=3_000, idempotency_key="cap"))
    again = db.write(
        lambda s: ledger.extend_hold(s, hold_id=h.id, amount=2_000, expires_at=later, idempotency_key="ext")
    )
    assert again == first and again.status == "open"
    with pytest.raises(IdempotencyConflict):
        db.write(
            lambda s: ledger.extend_hold(
                s, hold_id=h.id, amount=2_500, expires_at=later, idempotency_key="ext"
            )
        )
    assert db.read(lambda s: ledger.get_hold(s, h.id)).amount_held == 3_000
    assert transfers(db, ledger, acct) == written + 2  # the capture's two posts


def test_capture_hold(db, ledger, clock, make_account):
    acct = make_account()
    grant(db, ledger, acct, 10_000, "g")
    h = hold(db, ledger, clock, acct, 5_000, "place")
    first = db.write(lambda s: ledger.capture_hold(s, hold_id=h.id, amount=2_000, idempotency_key="cap"))
    written = transfers(db, ledger, acct)
    clock.advance(timedelta(days=3))
    assert (
        db.write(lambda s: ledger.capture_hold(s, hold_id=h.id, amount=2_000, idempotency_key="cap")) == first
    )
    with pytest.raises(IdempotencyConflict):
        db.write(lambda s: ledger.capture_hold(s, hold_id=h.id, amount=1_999, idempotency_key="cap"))
    assert db.read(lambda s: ledger.balance(s, acct)).posted == 8_000
    assert transfers(db, ledger, acct) == written


def test_release_hold(db, ledger, clock, make_account):
    acct = make_account()
    grant(db, ledger, acct, 10_000, "g")
    h = hold(db, ledger, clock, acct, 5_000, "place")
    h2 = hold(db, ledger, clock, acct, 1_000, "place-2")
    first = db.write(lambda s: ledger.release_hold(s, hold_id=h.id, idempotency_key="rel"))
    assert first.status == "released"
    written = transfers(db, ledger, acct)
    assert db.write(lambda s: ledger.release_hold(s, hold_id=h.id, idempotency_key="rel")) == first
    # Releasing another hold with the same key is another request.
    with pytest.raises(IdempotencyConflict):
        db.write(lambda s: ledger.release_hold(s, hold_id=h2.id, idempotency_key="rel"))
    assert db.read(lambda s: ledger.get_hold(s, h2.id)).status == "open"
    assert transfers(db, ledger, acct) == written


def test_debit(db, ledger, clock, make_account):
    acct = make_account("organization")
    grant(db, ledger, acct, 10_000, "g")
    cap = CapSpec("cap_idem_" + acct, 8_000)
    first = db.write(
        lambda s: ledger.debit(
            s, account_id=acct, amount=3_000, idempotency_key="d", reason="event", metadata={"n": 1}, cap=cap
        )
    )
    written = transfers(db, ledger, acct)
    retry = db.write(
        lambda s: ledger.debit(
            s, account_id=acct, amount=3_000, idempotency_key="d", reason="event", metadata={"n": 1}, cap=cap
        )
    )
    assert retry == first
    for changed in ({"amount": 3_001}, {"metadata": {"n": 2}}, {"cap": CapSpec(cap.cap_id, 9_000)}):
        args = {"amount": 3_000, "reason": "event", "metadata": {"n": 1}, "cap": cap} | changed
        with pytest.raises(IdempotencyConflict):
            db.write(lambda s, a=args: ledger.debit(s, account_id=acct, idempotency_key="d", **a))
    assert rows(db, Debit, acct) == 1
    assert transfers(db, ledger, acct) == written
    assert db.read(lambda s: ledger.cap_usage(s, cap.cap_id, first.cap_period)).used == 3_000


def test_reverse_grant(db, ledger, clock, make_account):
    acct = make_account()
    g = grant(db, ledger, acct, 10_000, "g")
    first = db.write(
        lambda s: ledger.reverse_grant(s, grant_id=g.id, amount=4_000, idempotency_key="rev", reason="refund")
    )
    assert (first.reversed, first.remaining) == (4_000, 6_000)
    written = transfers(db, ledger, acct)
    db.write(lambda s: ledger.debit(s, account_id=acct, amount=6_000, idempotency_key="d"))
    again = db.write(
        lambda s: ledger.reverse_grant(s, grant_id=g.id, amount=4_000, idempotency_key="rev", reason="refund")
    )
    assert again == first
    with pytest.raises(IdempotencyConflict):
        db.write(
            lambda s: ledger.reverse_grant(
                s, grant_id=g.id, amount=5_000, idempotency_key="rev", reason="refund"
            )
        )
    assert transfers(db, ledger, acct) == written + 1  # the debit


def test_set_grant_frozen(db, ledger, clock, make_account):
    acct = make_account()
    g = grant(db, ledger, acct, 10_000, "g")
    first = db.write(lambda s: ledger.set_grant_frozen(s, grant_id=g.id, frozen=True, idempotency_key="fz"))
    assert first.frozen and first.available == 0
    db.write(lambda s: ledger.set_grant_frozen(s, grant_id=g.id, frozen=False, idempotency_key="unfz"))
    again = db.write(lambda s: ledger.set_grant_frozen(s, grant_id=g.id, frozen=True, idempotency_key="fz"))
    assert again == first
    assert db.read(lambda s: ledger.get_grant(s, g.id)).frozen is False  # the retry changed nothing
    with pytest.raises(IdempotencyConflict):
        db.write(lambda s: ledger.set_grant_frozen(s, grant_id=g.id, frozen=False, idempotency_key="fz"))


def test_reversal_of_nothing_keeps_counters_after_expiry(scratch_db, clock, ledger, accounts):
    """Regression: a reversal that takes nothing still saves what settling moved on the wallet."""
    db = scratch_db
    acct = db.write(lambda s: accounts.get_or_create(s, "personal", "123456789012345678").id)
    g = grant(db, ledger, acct, 1_000, "g")
    db.write(lambda s: ledger.debit(s, account_id=acct, amount=1_000, idempotency_key="d"))
    grant(db, ledger, acct, 500, "short", expires_at=clock.now() + timedelta(minutes=5))
    clock.advance(timedelta(minutes=10))
    result = db.write(
        lambda s: ledger.reverse_grant(s, grant_id=g.id, amount=10, idempotency_key="rev", reason="refund")
    )
    assert result.reversed == 0
    assert db.read(lambda s: verify(s)) == []
    assert db.read(lambda s: ledger.balance(s, acct)).posted == 0


def test_writes_of_their_own_retry_conflict_and_decline_like_the_rest(db, ledger, clock, make_account):
    """commit_place_hold, commit_capture_hold and commit_debit: their own transaction, the same rules."""
    from chronote_billing.core.errors import HoldAlreadySettled, InsufficientCredits

    acct = make_account("organization")
    grant(db, ledger, acct, 10_000, "g")
    expires = clock.now() + timedelta(hours=1)
    placed = ledger.commit_place_hold(
        db, account_id=acct, amount=4_000, expires_at=expires, idempotency_key="h"
    )
    assert (
        ledger.commit_place_hold(db, account_id=acct, amount=4_000, expires_at=expires, idempotency_key="h")
        == placed
    )
    with pytest.raises(IdempotencyConflict):
        ledger.commit_place_hold(db, account_id=acct, amount=4_001, expires_at=expires, idempotency_key="h")
    with pytest.raises(InsufficientCredits):
        ledger.commit_place_hold(db, account_id=acct, amount=7_000, expires_at=expires, idempotency_key="big")
    partial = ledger.commit_place_hold(
        db, account_id=acct, amount=7_000, expires_at=expires, idempotency_key="part", allow_partial=True
    )
    assert (partial.amount_held, partial.partial) == (6_000, True)

    captured = ledger.commit_capture_hold(db, hold_id=placed.id, amount=2_500, idempotency_key="c")
    assert (captured.status, captured.amount_captured) == ("captured", 2_500)
    assert ledger.commit_capture_hold(db, hold_id=placed.id, amount=2_500, idempotency_key="c") == captured
    with pytest.raises(HoldAlreadySettled):
        ledger.commit_capture_hold(db, hold_id=placed.id, amount=1, idempotency_key="c2")

    debited = ledger.commit_debit(db, account_id=acct, amount=1_000, idempotency_key="d")
    assert ledger.commit_debit(db, account_id=acct, amount=1_000, idempotency_key="d") == debited
    with pytest.raises(InsufficientCredits):
        ledger.commit_debit(db, account_id=acct, amount=1_000, idempotency_key="d2")  # 6,000 held, 500 left
    balance = db.read(lambda s: ledger.balance(s, acct))
    assert (balance.available, balance.held, balance.posted) == (500, 6_000, 6_500)
    assert rows(db, Hold, acct) == 2 and rows(db, Debit, acct) == 1
    assert db.read(lambda s: verify(s)) == []
