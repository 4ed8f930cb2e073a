"""Pure rules of the ledger, shared by its Python path, its database functions' callers and the
payer decision (decision 0030). No database, no clock."""

from __future__ import annotations


def approvable(available: int, cap_room: int | None) -> int:
    """What a wallet can cover now: its spendable credits, within its cap's room (None: no cap)."""
    return available if cap_room is None else min(available, cap_room)
