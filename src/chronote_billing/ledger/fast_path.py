"""The ledger's PostgreSQL fast path (decision 0023): the one-round-trip functions of migration
0005 (and their successors), their arguments, and one validated write ready to run either as
the function or as the Python path, which must answer alike (tests/ledger/test_ledger_fast_path.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from chronote_billing.core.write_combiner import ServerStatement, json_argument, text_argument

from .schemas import (
    DebitView,
    HoldView,
)

# Argument names and SQL types of the fast-path functions (migration 0005), in order.
_FUNCTION_ARGS: dict[str, tuple[tuple[str, str], ...]] = {
    "ledger_try_debit": (
        ("account", "text"),
        ("amount", "bigint"),
        ("now", "timestamptz"),
        ("cap_id", "text"),
        ("cap_limit", "bigint"),
        ("cap_period", "text"),
        ("scope", "text"),
        ("key", "text"),
        ("hash", "text"),
        ("result", "jsonb"),
        ("debit_id", "text"),
        ("reason", "text"),
        ("metadata", "jsonb"),
        ("transfer_reason", "text"),
    ),
    "ledger_try_place_hold": (
        ("account", "text"),
        ("amount", "bigint"),
        ("allow_partial", "boolean"),
        ("expires_at", "timestamptz"),
        ("now", "timestamptz"),
        ("cap_id", "text"),
        ("cap_limit", "bigint"),
        ("cap_period", "text"),
        ("scope", "text"),
        ("key", "text"),
        ("hash", "text"),
        ("result", "jsonb"),
        ("hold_id", "text"),
        ("reason", "text"),
        ("metadata", "jsonb"),
        ("transfer_reason", "text"),
    ),
    "ledger_try_extend_hold": (
        ("hold_id", "text"),
        ("amount", "bigint"),
        ("expires_at", "timestamptz"),
        ("allow_partial", "boolean"),
        ("cap_limit", "bigint"),
        ("now", "timestamptz"),
        ("scope_prefix", "text"),
        ("key", "text"),
        ("hash", "text"),
    ),
    "ledger_try_capture_hold": (
        ("hold_id", "text"),
        ("amount", "bigint"),
        ("now", "timestamptz"),
        ("scope_prefix", "text"),
        ("key", "text"),
        ("hash", "text"),
        ("reason", "text"),
    ),
}
_FUNCTION_SQL = {
    name: f"SELECT {name}({', '.join(f'%({arg})s::{sql_type}' for arg, sql_type in args)})"
    for name, args in _FUNCTION_ARGS.items()
}

# The same calls for Database.run_autocommit: prepared once per connection, arguments as text.
_FUNCTION_STATEMENTS = {
    name: ServerStatement(
        f"chronote_{name}",
        f"SELECT {name}({', '.join(f'${n}::{sql_type}' for n, (_, sql_type) in enumerate(args, 1))})",
    )
    for name, args in _FUNCTION_ARGS.items()
}


@dataclass
class _LedgerWrite:
    """One validated ledger write, ready to run either way: the database function's arguments,
    and the Python path (a closure over the same ids, timestamps and fingerprint)."""

    function: str
    args: dict[str, Any]
    result_type: type[HoldView] | type[DebitView]
    python: Callable[[Session], Any]

    def driver_args(self) -> dict[str, Any]:
        return {
            name: json_argument(self.args[name]) if sql_type == "jsonb" else self.args[name]
            for name, sql_type in _FUNCTION_ARGS[self.function]
        }

    def text_args(self) -> list[str | None]:
        """The arguments in order, as PostgreSQL's text input for their types."""
        return [text_argument(self.args[name], sql_type) for name, sql_type in _FUNCTION_ARGS[self.function]]
