"""The ledger: grants, two-phase holds, debits, reversals, expiry and balances (docs/ledger.md).

``LedgerService`` is the one entry point its callers use; it only composes the operation
families, each in a module of its own:

- ``grants``: issue, reverse, freeze;
- ``holds``: place, extend, capture, release;
- ``debits``: one-step debits;
- ``expiry``: settling what fell due (holds past expiry, expired grant remainders), the sweep;
- ``reads``: balances, grants, holds, caps, the transfer log and the economic statement;
- ``spending``: approval and drawing shared by holds and debits, and the choice between the
  PostgreSQL fast path (``fast_path``) and the Python path;
- ``repository``: the SQL they share; ``checks``: request validation; ``rules``: the pure rules.

Every money write follows the same order, which is what keeps it race-free:

1. lock the wallet row (``SELECT ... FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` already holds
   the database write lock);
2. look the idempotency key up (a duplicate now finds the first request's record);
3. settle what fell due on this wallet (expired holds, expired grant remainders);
4. validate against the maintained counters, then write transfers and counters together.

A validation failure raises before anything is written.
"""

from __future__ import annotations

from chronote_billing.core.clock import Clock, system_clock

from .checks import GRANT_SOURCES, MAX_AMOUNT, CapSpec, CaptureExceedsHold
from .debits import Debits
from .grants import Grants
from .holds import Holds
from .reads import Reads
from .repository import SYSTEM_ACCOUNTS
from .rules import burn_order_key

__all__ = [
    "GRANT_SOURCES",
    "MAX_AMOUNT",
    "SYSTEM_ACCOUNTS",
    "CapSpec",
    "CaptureExceedsHold",
    "LedgerService",
    "burn_order_key",
]


class LedgerService(Grants, Holds, Debits, Reads):
    """The ledger's operations, one family per module: ``grants``, ``holds``, ``debits``,
    ``expiry`` (settling), ``reads``, on the SQL of ``repository``; callers use this class."""

    def __init__(self, clock: Clock = system_clock, db_functions: bool = True) -> None:
        self.clock = clock
        # On PostgreSQL, debits, holds and captures first try the database's one-round-trip
        # functions (docs/decisions/0023); they decline anything but the common case.
        self.db_functions = db_functions
