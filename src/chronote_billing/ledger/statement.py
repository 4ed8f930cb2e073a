"""The economic statement: one line per event a person would name (decision 0038).

A pure function over facts the ledger already keeps: the wallet's posted and post transfers (the
movements), its open holds (reserved, not moved) and its freeze records. Pending and void
transfers are the two-phase protocol, not events: a capture is one line with the amount it
charged, and a release, an expiry of a hold or the part a capture gives back adds no line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from .rules import MOVING_PHASES, Phase, TransferKind

# Transfer kinds that move credits, and what each reads as.
LINE_TYPES: dict[str, str] = {
    TransferKind.GRANT: "credits_added",
    TransferKind.CAPTURE: "usage",
    TransferKind.DEBIT: "usage",
    TransferKind.EXPIRY: "expired",
    TransferKind.REFUND: "refund",
    TransferKind.DISPUTE_LOST: "dispute_lost",
    TransferKind.REVERSAL: "reversal",
}


@dataclass(frozen=True)
class TransferFact:
    """One transfer as the statement needs it; ``into_wallet`` says which way it moved."""

    id: int
    created_at: datetime
    kind: str
    phase: str
    amount: int
    into_wallet: bool
    balance_after: int
    grant_id: str
    hold_id: str | None
    debit_id: str | None
    reason: str


@dataclass(frozen=True)
class FreezeFact:
    id: int
    created_at: datetime
    grant_id: str
    frozen: bool
    amount: int
    reason: str
    # The posted balance at that moment (a freeze moves nothing).
    balance_after: int
    # The transfer ids around it, so it sorts among the movements.
    after_transfer_id: int


@dataclass(frozen=True)
class EconomicLine:
    # Order, newest last: the largest transfer id of the event (a freeze: the wallet's last
    # transfer before it), then 0 for a movement or the freeze record's id.
    position: int
    rank: int
    at: datetime
    type: str
    amount: int
    balance_after: int
    description: str
    grant_id: str | None
    hold_id: str | None
    debit_id: str | None
    frozen_amount: int = 0

    @property
    def id(self) -> str:
        """Stable and ordered: also the cursor of the page after this line."""
        return f"{self.position}.{self.rank}" if self.rank else str(self.position)


def group_transfers(transfers: Sequence[TransferFact]) -> list[list[TransferFact]]:
    """Moving transfers grouped into events, newest first (input: newest first).

    The transfers of one capture (one per grant drawn) share a hold id and those of one debit
    share a debit id; they are written together, so they are neighbours in the log of their
    wallet. Every other moving transfer is an event of its own.
    """
    groups: list[list[TransferFact]] = []
    for t in transfers:
        if t.phase not in MOVING_PHASES:
            continue
        key = _event_key(t)
        if groups and key is not None and _event_key(groups[-1][0]) == key:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


def _event_key(t: TransferFact) -> tuple[str, str] | None:
    if t.kind == TransferKind.CAPTURE and t.hold_id:
        return ("hold", t.hold_id)
    if t.kind == TransferKind.DEBIT and t.debit_id:
        return ("debit", t.debit_id)
    return None


def event_line(group: Sequence[TransferFact]) -> EconomicLine:
    """One event's line: the sum of its transfers, signed from the wallet's point of view."""
    newest = max(group, key=lambda t: t.id)
    amount = sum(t.amount if t.into_wallet else -t.amount for t in group)
    return EconomicLine(
        position=newest.id,
        rank=0,
        at=newest.created_at,
        type=LINE_TYPES.get(newest.kind, newest.kind),
        amount=amount,
        balance_after=newest.balance_after,
        description=newest.reason,
        grant_id=newest.grant_id if len({t.grant_id for t in group}) == 1 else None,
        hold_id=newest.hold_id,
        debit_id=newest.debit_id,
    )


def freeze_line(f: FreezeFact) -> EconomicLine:
    return EconomicLine(
        position=f.after_transfer_id,
        rank=f.id,
        at=f.created_at,
        type="frozen" if f.frozen else "unfrozen",
        amount=0,
        balance_after=f.balance_after,
        description=f.reason,
        grant_id=f.grant_id,
        hold_id=None,
        debit_id=None,
        frozen_amount=f.amount,
    )


def economic_lines(
    groups: Iterable[Sequence[TransferFact]], freezes: Iterable[FreezeFact] = ()
) -> list[EconomicLine]:
    """Every event's line, newest first; a freeze sorts after the movement it followed."""
    lines = [event_line(g) for g in groups] + [freeze_line(f) for f in freezes]
    return sorted(lines, key=lambda line: (line.position, line.rank), reverse=True)


def parse_cursor(cursor: str | None) -> tuple[int, int] | None:
    """A line id as a page cursor: the page after it holds the lines older than that line."""
    if cursor is None:
        return None
    position, _, rank = cursor.partition(".")
    if not position.isdigit() or (rank and not rank.isdigit()) or len(cursor) > 40:
        return None
    return int(position), int(rank or 0)


def signed_raw_amount(t: TransferFact) -> int:
    """The transfer log's amount, signed by what the phase does to the wallet: a pending transfer
    reserves (negative), a void returns the reservation (positive), a post or posted transfer
    moves credits in or out."""
    if t.phase == Phase.PENDING:
        return -t.amount
    if t.phase == Phase.VOID:
        return t.amount
    return t.amount if t.into_wallet else -t.amount
