"""The ledger's pure rules, without a database: burn order, drawing across lots, approval,
the capture split, closing holds and expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from chronote_billing.ledger.rules import (
    GrantStatus,
    HoldStatus,
    Lot,
    Phase,
    Refusal,
    TransferKind,
    approve,
    draw,
    hold_closing_status,
    hold_refusal,
    lot_has_expired,
    lot_order_key,
    shown_grant_status,
    split_capture,
    void_kind,
)

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def lot(
    id: str, remaining: int, held: int = 0, priority: int = 100, expires_in: int | None = None, age: int = 0
) -> Lot:
    return Lot(
        id=id,
        remaining=remaining,
        held=held,
        priority=priority,
        expires_at=None if expires_in is None else NOW + timedelta(days=expires_in),
        created_at=NOW - timedelta(days=age),
    )


def test_stored_values_are_the_columns_text() -> None:
    assert [k.value for k in TransferKind] == [
        "grant",
        "hold",
        "hold_extend",
        "capture",
        "release",
        "hold_expiry",
        "expiry",
        "debit",
        "reversal",
        "refund",
        "dispute_lost",
    ]
    assert {p.value for p in Phase} == {"posted", "pending", "post", "void"}
    assert {s.value for s in HoldStatus} == {"open", "captured", "released", "expired"}
    assert Phase.PENDING == "pending" and GrantStatus.ACTIVE == "active"


def test_burn_order_earliest_expiry_then_priority_then_oldest_and_no_expiry_last() -> None:
    lots = [
        lot("never_low", 1, priority=10),
        lot("never_old", 1, priority=100, age=9),
        lot("later", 1, expires_in=30),
        lot("soon_high", 1, priority=500, expires_in=2),
        lot("soon_low", 1, priority=10, expires_in=2),
        lot("never_new", 1, priority=100, age=1),
    ]
    ordered = [x.id for x in sorted(lots, key=lot_order_key)]
    assert ordered == ["soon_low", "soon_high", "later", "never_low", "never_old", "never_new"]


def test_draw_takes_free_credits_in_order_and_skips_fully_held_lots() -> None:
    lots = [lot("a", 100, held=100), lot("b", 50, held=20), lot("c", 500)]
    draws = draw(lots, 200)
    assert draws is not None
    assert [(x.id, take) for x, take in draws] == [("b", 30), ("c", 170)]


def test_draw_refuses_what_the_lots_cannot_cover() -> None:
    assert draw([lot("a", 10, held=5), lot("b", 3)], 9) is None


@given(
    st.lists(st.tuples(st.integers(0, 1_000), st.integers(0, 1_000)), max_size=8),
    st.integers(0, 5_000),
)
def test_draw_conserves_the_amount_and_respects_each_lots_free_credits(
    shapes: list[tuple[int, int]], amount: int
) -> None:
    lots = [lot(f"g{i}", remaining + held, held=held) for i, (remaining, held) in enumerate(shapes)]
    free = sum(x.free for x in lots)
    draws = draw(lots, amount)
    if amount > free:
        assert draws is None
        return
    assert draws is not None
    assert sum(take for _, take in draws) == amount
    assert all(0 < take <= x.free for x, take in draws)
    # Burn order: every lot before the last one drawn is used up.
    if draws:
        last = lots.index(draws[-1][0])
        taken = {x.id: take for x, take in draws}
        assert all(taken.get(x.id, 0) == x.free for x in lots[:last])


def test_approve_all_partial_and_refusals() -> None:
    assert approve(50, available=100, cap_room=None, allow_partial=False) == 50
    assert approve(150, available=100, cap_room=None, allow_partial=True) == 100
    assert approve(150, available=100, cap_room=None, allow_partial=False) is Refusal.INSUFFICIENT_CREDITS
    assert approve(80, available=100, cap_room=30, allow_partial=False) is Refusal.CAP_REACHED
    assert approve(80, available=100, cap_room=30, allow_partial=True) == 30
    # The cap is blamed only when it, not the credits, is what stops the request.
    assert approve(200, available=50, cap_room=60, allow_partial=False) is Refusal.INSUFFICIENT_CREDITS
    assert approve(10, available=0, cap_room=0, allow_partial=True) is Refusal.INSUFFICIENT_CREDITS


@given(st.integers(1, 10_000), st.integers(0, 10_000), st.none() | st.integers(0, 10_000), st.booleans())
def test_approve_never_exceeds_what_is_asked_available_or_allowed(
    amount: int, available: int, room: int | None, partial: bool
) -> None:
    decision = approve(amount, available, room, partial)
    if isinstance(decision, Refusal):
        assert amount > min(available, room if room is not None else available)
        return
    assert 0 < decision <= amount and decision <= available
    assert room is None or decision <= room
    assert decision == amount or partial


def test_capture_split_posts_in_order_and_voids_the_untouched_transfers() -> None:
    assert split_capture(70, [50, 30, 20]) == [50, 20, 0]
    assert split_capture(0, [50, 30]) == [0, 0]
    assert split_capture(80, [50, 30]) == [50, 30]


@given(st.lists(st.integers(1, 1_000), max_size=6), st.data())
def test_capture_split_sums_to_the_capture(pending: list[int], data: st.DataObject) -> None:
    capture = data.draw(st.integers(0, sum(pending)))
    takes = split_capture(capture, pending)
    assert sum(takes) == capture
    assert all(0 <= take <= amount for take, amount in zip(takes, pending, strict=True))


def test_closing_a_hold_and_the_kind_of_its_voids() -> None:
    assert hold_closing_status(NOW + timedelta(seconds=1), NOW) is HoldStatus.RELEASED
    assert hold_closing_status(NOW, NOW) is HoldStatus.EXPIRED
    assert void_kind(HoldStatus.RELEASED) is TransferKind.RELEASE
    assert void_kind(HoldStatus.EXPIRED) is TransferKind.HOLD_EXPIRY


def test_hold_refusals() -> None:
    later, earlier = NOW + timedelta(minutes=5), NOW - timedelta(minutes=5)
    assert hold_refusal("open", later, NOW) is None
    assert hold_refusal("open", earlier, NOW) is HoldStatus.EXPIRED
    assert hold_refusal("expired", later, NOW) is HoldStatus.EXPIRED
    assert hold_refusal("captured", later, NOW) is HoldStatus.CAPTURED
    assert hold_refusal("released", earlier, NOW) is HoldStatus.RELEASED


def test_expired_lots_and_grant_status_as_shown() -> None:
    assert lot_has_expired(lot("a", 10, expires_in=-1), NOW)
    assert not lot_has_expired(lot("a", 10, held=10, expires_in=-1), NOW)  # all held: the hold settles it
    assert not lot_has_expired(lot("a", 10, expires_in=1), NOW)
    assert not lot_has_expired(lot("a", 10), NOW)
    past = NOW - timedelta(days=1)
    assert shown_grant_status("active", past, NOW) is GrantStatus.EXPIRED
    assert shown_grant_status("closed", past, NOW) is GrantStatus.CLOSED
    assert shown_grant_status("active", None, NOW) is GrantStatus.ACTIVE
