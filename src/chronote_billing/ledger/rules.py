"""Pure rules of the ledger, shared by its Python path, its database functions' callers and the
payer decision (decision 0030). No database, no clock: each function takes facts and returns a
decision. docs/ledger.md describes the semantics these names make up.

The enumerations name the values the ledger stores (their values are the stored strings, so a
member compares equal to the column's text).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


class TransferKind(enum.StrEnum):
    """What a transfer records (``ledger_transfers.kind``)."""

    GRANT = "grant"  # credits issued to a wallet (posted)
    HOLD = "hold"  # credits reserved by a hold (pending)
    HOLD_EXTEND = "hold_extend"  # more credits reserved by an open hold (pending)
    CAPTURE = "capture"  # the used part of a hold (post of a pending transfer)
    RELEASE = "release"  # a hold's pending transfer returned whole (void)
    HOLD_EXPIRY = "hold_expiry"  # a hold's pending transfer voided because the hold expired
    EXPIRY = "expiry"  # a grant's unused remainder moved to breakage (posted)
    DEBIT = "debit"  # a direct debit (posted)
    REVERSAL = "reversal"  # a grant taken back (posted); refunds and lost disputes name their own
    REFUND = "refund"
    DISPUTE_LOST = "dispute_lost"


class Phase(enum.StrEnum):
    """How a transfer moves credits (``ledger_transfers.phase``)."""

    POSTED = "posted"  # moves credits now
    PENDING = "pending"  # reserves credits (one per grant a hold draws from)
    POST = "post"  # settles a pending transfer for at most its amount; the rest returns
    VOID = "void"  # returns a pending transfer whole


MOVING_PHASES = (Phase.POSTED, Phase.POST)


class HoldStatus(enum.StrEnum):
    OPEN = "open"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


class GrantStatus(enum.StrEnum):
    """A grant's stored status; ``EXPIRED`` is only ever shown (an active grant past its expiry
    whose remainder has not yet been swept)."""

    ACTIVE = "active"
    CLOSED = "closed"
    EXPIRED = "expired"


class SystemAccount(enum.StrEnum):
    """The ledger's own accounts, the other side of every wallet transfer."""

    ISSUANCE = "issuance"  # grants come from here
    CONSUMPTION = "consumption"  # holds, captures and debits go here
    BREAKAGE = "breakage"  # expired remainders go here
    REVERSAL = "reversal"  # grants taken back go here


class Refusal(enum.StrEnum):
    """Why an amount cannot be approved; the values are the errors' codes (core/errors.py)."""

    INSUFFICIENT_CREDITS = "insufficient_credits"
    CAP_REACHED = "cap_reached"


_NO_EXPIRY = datetime.min.replace(tzinfo=UTC)


@dataclass
class Lot:
    """A grant as the spend path sees it: ``remaining`` credits, ``held`` of them by open holds."""

    id: str
    remaining: int
    held: int
    priority: int
    expires_at: datetime | None
    created_at: datetime
    dirty: bool = False

    @property
    def free(self) -> int:
        return self.remaining - self.held


def burn_order_key(
    expires_at: datetime | None, priority: int, created_at: datetime, grant_id: str
) -> tuple[Any, ...]:
    """Earliest expiry first (no expiry last), then priority (lower first), then oldest.

    Grants without expiry tie on the first two elements, so priority decides among them. The
    fast-path functions (migration 0005) sort by the same key in SQL.
    """
    return (expires_at is None, expires_at or _NO_EXPIRY, priority, created_at, grant_id)


def lot_order_key(lot: Lot) -> tuple[Any, ...]:
    return burn_order_key(lot.expires_at, lot.priority, lot.created_at, lot.id)


def approvable(available: int, cap_room: int | None) -> int:
    """What a wallet can cover now: its spendable credits, within its cap's room (None: no cap)."""
    return available if cap_room is None else min(available, cap_room)


def approve(amount: int, available: int, cap_room: int | None, allow_partial: bool) -> int | Refusal:
    """The amount a hold or debit may take, or why none: all of ``amount`` if covered; with
    ``allow_partial`` whatever is coverable if that is more than zero; otherwise the cap is
    blamed when its room is below what the credits alone could have covered."""
    can = approvable(available, cap_room)
    if amount <= can:
        return amount
    if allow_partial and can > 0:
        return can
    if cap_room is not None and cap_room < min(amount, available):
        return Refusal.CAP_REACHED
    return Refusal.INSUFFICIENT_CREDITS


def draw(lots: Sequence[Lot], amount: int) -> list[tuple[Lot, int]] | None:
    """Split ``amount`` over lots already in burn order: (lot, take) pairs, or None when the
    lots' free credits do not cover it."""
    draws = []
    left = amount
    for lot in lots:
        if left == 0:
            break
        take = min(left, lot.free)
        if take > 0:
            draws.append((lot, take))
            left -= take
    return None if left else draws


def split_capture(capture: int, pending: Sequence[int]) -> list[int]:
    """How much of each pending transfer (in burn order) a capture posts; a zero means the
    transfer is voided whole, and whatever a pending transfer does not post returns."""
    takes = []
    left = capture
    for amount in pending:
        take = min(left, amount)
        takes.append(take)
        left -= take
    return takes


def hold_closing_status(hold_expires_at: datetime, now: datetime) -> HoldStatus:
    """The status a release gives an open hold: past its expiry it is closed as expired."""
    return HoldStatus.EXPIRED if hold_expires_at <= now else HoldStatus.RELEASED


def void_kind(closing: HoldStatus) -> TransferKind:
    """The kind of the void transfers that close a hold without use."""
    return TransferKind.HOLD_EXPIRY if closing == HoldStatus.EXPIRED else TransferKind.RELEASE


def hold_refusal(status: str, expires_at: datetime, now: datetime) -> HoldStatus | None:
    """Why a hold cannot be captured or extended now: ``HoldStatus.EXPIRED`` when it expired
    (stored so or open past its expiry), its settled status otherwise, None when it is open."""
    if status == HoldStatus.EXPIRED or (status == HoldStatus.OPEN and expires_at <= now):
        return HoldStatus.EXPIRED
    if status != HoldStatus.OPEN:
        return HoldStatus(status)
    return None


def lot_has_expired(lot: Lot, now: datetime) -> bool:
    """A lot whose free remainder is due to move to breakage."""
    return lot.expires_at is not None and lot.expires_at <= now and lot.free > 0


def shown_grant_status(status: str, expires_at: datetime | None, now: datetime) -> GrantStatus:
    """A grant's status as shown: an active grant past its expiry reads as expired."""
    if status == GrantStatus.CLOSED or expires_at is None or expires_at > now:
        return GrantStatus(status)
    return GrantStatus.EXPIRED


def earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
