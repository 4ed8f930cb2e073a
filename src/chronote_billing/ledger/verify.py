"""Ledger invariants, recomputed from the append-only transfer log.

Each check is one aggregate query, so verify scales with the log, not with the number of
wallets times the log. The first violation found is reported with the ids involved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased

from .models import CapUsage, Debit, Grant, Hold, LedgerAccount, Transfer


@dataclass(frozen=True)
class Violation:
    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


_MOVES = ("posted", "post")
T = TypeVar("T")

# Aggregates shared by several checks are computed once per ``verify`` call.
_shared: ContextVar[dict[Any, Any] | None] = ContextVar("ledger_verify_shared", default=None)


def _once(key: Any, compute: Callable[[], T]) -> T:
    memo = _shared.get()
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    result: T = memo[key]
    return result


def _posted_by_account(session: Session) -> tuple[dict[str, int], dict[str, int]]:
    return _once("posted", lambda: _compute_posted_by_account(session))


def _compute_posted_by_account(session: Session) -> tuple[dict[str, int], dict[str, int]]:
    credits: dict[str, int] = defaultdict(int)
    debits: dict[str, int] = defaultdict(int)
    for credit, debit, total in session.execute(
        select(Transfer.credit_account_id, Transfer.debit_account_id, func.sum(Transfer.amount))
        .where(Transfer.phase.in_(_MOVES))
        .group_by(Transfer.credit_account_id, Transfer.debit_account_id)
    ):
        credits[credit] += int(total)
        debits[debit] += int(total)
    return credits, debits


def _open_pending_by(session: Session, column: str) -> dict[str, int]:
    """Sum of pending transfers that no post/void resolved yet, grouped by a transfer column."""
    index = _PENDING_KEYS.index(column)
    totals: dict[str, int] = defaultdict(int)
    for *keys, total in _once("open_pending", lambda: _open_pending(session)):
        if keys[index] is not None:
            totals[str(keys[index])] += total
    return dict(totals)


_PENDING_KEYS = ("debit_account_id", "grant_id", "hold_id")


def _open_pending(session: Session) -> list[tuple[Any, ...]]:
    resolution = aliased(Transfer)
    keys = [getattr(Transfer, k) for k in _PENDING_KEYS]
    rows = session.execute(
        select(*keys, func.sum(Transfer.amount))
        .outerjoin(resolution, resolution.pending_id == Transfer.id)
        .where(Transfer.phase == "pending", resolution.id.is_(None))
        .group_by(*keys)
    )
    return [(*row[:3], int(row[3])) for row in rows]


def check_transfers(session: Session) -> Iterator[Violation]:
    bad = session.execute(
        select(Transfer.id)
        .where((Transfer.amount < 0) | (Transfer.debit_account_id == Transfer.credit_account_id))
        .limit(1)
    ).scalar()
    if bad is not None:
        yield Violation(
            "transfer_shape", f"transfer {bad} has a negative amount or the same account on both sides"
        )
    resolution = aliased(Transfer)
    row = session.execute(
        select(resolution.id, Transfer.id)
        .join(Transfer, resolution.pending_id == Transfer.id)
        .where(
            (Transfer.phase != "pending")
            | (resolution.phase.not_in(("post", "void")))
            | (resolution.debit_account_id != Transfer.debit_account_id)
            | (resolution.credit_account_id != Transfer.credit_account_id)
            | (resolution.grant_id != Transfer.grant_id)
            | ((resolution.phase == "post") & (resolution.amount > Transfer.amount))
            | ((resolution.phase == "void") & (resolution.amount != Transfer.amount))
        )
        .limit(1)
    ).first()
    if row is not None:
        yield Violation(
            "two_phase",
            f"transfer {row[0]} resolves transfer {row[1]} inconsistently (not pending, other accounts, or more than pending)",
        )
    orphan = session.execute(
        select(Transfer.id)
        .where(Transfer.phase.in_(("post", "void")), Transfer.pending_id.is_(None))
        .limit(1)
    ).scalar()
    if orphan is not None:
        yield Violation("two_phase", f"transfer {orphan} posts or voids nothing")


def check_references(session: Session) -> Iterator[Violation]:
    """Every account a transfer, hold or debit names exists (the tables keep no foreign keys to
    ledger accounts, decision 0026). One scan per table; the first row naming a missing account
    is reported for each column it gets wrong."""
    known = select(LedgerAccount.id)
    for label, table, names in (
        ("transfer", Transfer, ("debit_account_id", "credit_account_id", "wallet_account_id")),
        ("hold", Hold, ("wallet_account_id",)),
        ("debit", Debit, ("wallet_account_id",)),
    ):
        columns = [getattr(table, name) for name in names]
        row = session.execute(
            select(table.id, *columns).where(or_(*(column.not_in(known) for column in columns))).limit(1)
        ).first()
        if row is None:
            continue
        accounts = set(session.execute(known.where(LedgerAccount.id.in_(row[1:]))).scalars())
        for name, value in zip(names, row[1:], strict=True):
            if value not in accounts:
                yield Violation(
                    "reference", f"{label} {row[0]} names {name} '{value}', which is no ledger account"
                )


def check_zero_sum(session: Session) -> Iterator[Violation]:
    credits, debits = _posted_by_account(session)
    total = sum(credits.values()) - sum(debits.values())
    if total != 0:
        yield Violation("zero_sum", f"posted balances of all accounts sum to {total}, not 0")
    grant_total = session.execute(select(func.coalesce(func.sum(Grant.amount), 0))).scalar() or 0
    issued = debits.get("la_system_issuance", 0)
    if issued != grant_total:
        yield Violation("issuance", f"issuance account issued {issued} but grants total {grant_total}")


def check_wallets(session: Session) -> Iterator[Violation]:
    credits, debits = _posted_by_account(session)
    pending = _open_pending_by(session, "debit_account_id")
    grant_sums = {
        wallet: (int(rem), int(held))
        for wallet, rem, held in session.execute(
            select(Grant.wallet_account_id, func.sum(Grant.remaining), func.sum(Grant.held)).group_by(
                Grant.wallet_account_id
            )
        )
    }
    for w in session.execute(
        select(
            LedgerAccount.id,
            LedgerAccount.billing_account_id,
            LedgerAccount.credits_posted,
            LedgerAccount.debits_posted,
            LedgerAccount.debits_pending,
        ).where(LedgerAccount.kind == "wallet")
    ):
        if w.credits_posted != credits.get(w.id, 0) or w.debits_posted != debits.get(w.id, 0):
            yield Violation(
                "wallet_balance",
                f"wallet {w.id} (account {w.billing_account_id}) keeps credits {w.credits_posted} / debits "
                f"{w.debits_posted} but its transfers sum to {credits.get(w.id, 0)} / {debits.get(w.id, 0)}",
            )
        if w.debits_pending != pending.get(w.id, 0):
            yield Violation(
                "wallet_pending",
                f"wallet {w.id} keeps {w.debits_pending} pending but its open pending transfers sum to "
                f"{pending.get(w.id, 0)}",
            )
        rem, held = grant_sums.get(w.id, (0, 0))
        if w.credits_posted - w.debits_posted != rem:
            yield Violation(
                "wallet_grants",
                f"wallet {w.id} posted balance {w.credits_posted - w.debits_posted} differs from its grants' "
                f"remaining total {rem}",
            )
        if w.debits_pending != held:
            yield Violation(
                "wallet_grants",
                f"wallet {w.id} pending {w.debits_pending} differs from its grants' held total {held}",
            )
        if w.credits_posted - w.debits_posted < 0:
            yield Violation("overdraft", f"wallet {w.id} is overdrawn")


def check_grants(session: Session) -> Iterator[Violation]:
    credit_by_grant: dict[str, int] = defaultdict(int)
    debit_by_grant: dict[str, int] = defaultdict(int)
    into_wallet = Transfer.credit_account_id == Transfer.wallet_account_id
    for grant_id, credited, total in session.execute(
        select(Transfer.grant_id, into_wallet, func.sum(Transfer.amount))
        .where(Transfer.phase.in_(_MOVES))
        .group_by(Transfer.grant_id, into_wallet)
    ):
        (credit_by_grant if credited else debit_by_grant)[grant_id] += int(total)
    pending = _open_pending_by(session, "grant_id")
    for g in session.execute(select(Grant.id, Grant.amount, Grant.remaining, Grant.held, Grant.status)):
        if not 0 <= g.held <= g.remaining <= g.amount:
            yield Violation(
                "grant_bounds", f"grant {g.id} has amount {g.amount}, remaining {g.remaining}, held {g.held}"
            )
        derived = credit_by_grant.get(g.id, 0) - debit_by_grant.get(g.id, 0)
        if g.remaining != derived:
            yield Violation(
                "grant_balance",
                f"grant {g.id} keeps remaining {g.remaining} but its transfers give {derived}",
            )
        if credit_by_grant.get(g.id, 0) != g.amount:
            yield Violation(
                "grant_issue", f"grant {g.id} of {g.amount} was issued {credit_by_grant.get(g.id, 0)}"
            )
        if g.held != pending.get(g.id, 0):
            yield Violation(
                "grant_held",
                f"grant {g.id} keeps held {g.held} but open holds on it sum to {pending.get(g.id, 0)}",
            )
        if g.status == "closed" and g.remaining != 0:
            yield Violation("grant_status", f"grant {g.id} is closed with {g.remaining} remaining")


def check_holds(session: Session) -> Iterator[Violation]:
    pending_all: dict[str, int] = {}
    captured: dict[str, int] = {}
    for hold_id, phase, total in session.execute(
        select(Transfer.hold_id, Transfer.phase, func.sum(Transfer.amount))
        .where(Transfer.phase.in_(("pending", "post")), Transfer.hold_id.is_not(None))
        .group_by(Transfer.hold_id, Transfer.phase)
    ):
        (pending_all if phase == "pending" else captured)[str(hold_id)] = int(total)
    open_pending = _open_pending_by(session, "hold_id")
    for h in session.execute(
        select(Hold.id, Hold.status, Hold.amount_held, Hold.amount_captured, Hold.amount_requested)
    ):
        if pending_all.get(h.id, 0) != h.amount_held:
            yield Violation(
                "hold_backing",
                f"hold {h.id} holds {h.amount_held} but its pending transfers total {pending_all.get(h.id, 0)}",
            )
        if h.status == "open" and open_pending.get(h.id, 0) != h.amount_held:
            yield Violation(
                "hold_backing", f"open hold {h.id} has unresolved pending {open_pending.get(h.id, 0)}"
            )
        if h.status != "open" and open_pending.get(h.id, 0):
            yield Violation("hold_settled", f"{h.status} hold {h.id} still has unresolved pending transfers")
        if h.amount_captured != captured.get(h.id, 0) or h.amount_captured > h.amount_held:
            yield Violation(
                "hold_capture",
                f"hold {h.id} records capture {h.amount_captured} of {h.amount_held}; posts total {captured.get(h.id, 0)}",
            )
        if h.amount_held > h.amount_requested:
            yield Violation("hold_capture", f"hold {h.id} holds more than was requested")


def check_caps(session: Session) -> Iterator[Violation]:
    held: dict[tuple[str | None, str | None], int] = defaultdict(int)
    used: dict[tuple[str | None, str | None], int] = defaultdict(int)
    for cap_id, period, status, amount_held, amount_captured in session.execute(
        select(Hold.cap_id, Hold.cap_period, Hold.status, Hold.amount_held, Hold.amount_captured).where(
            Hold.cap_id.is_not(None)
        )
    ):
        if status == "open":
            held[(cap_id, period)] += amount_held
        used[(cap_id, period)] += amount_captured
    for cap_id, period, amount in session.execute(
        select(Debit.cap_id, Debit.cap_period, Debit.amount).where(Debit.cap_id.is_not(None))
    ):
        used[(cap_id, period)] += amount
    seen: set[tuple[str | None, str | None]] = set()
    for row in session.execute(select(CapUsage.cap_id, CapUsage.period, CapUsage.held, CapUsage.used)):
        seen.add((row.cap_id, row.period))
        k = (row.cap_id, row.period)
        if row.held != held.get(k, 0) or row.used != used.get(k, 0):
            yield Violation(
                "cap_usage",
                f"cap {row.cap_id} {row.period} keeps held {row.held} / used {row.used} but holds and debits give "
                f"{held.get(k, 0)} / {used.get(k, 0)}",
            )
    for missing in set(held) | set(used):
        if missing not in seen and (held.get(missing) or used.get(missing)):
            yield Violation("cap_usage", f"cap {missing[0]} {missing[1]} has usage but no counter row")


def check_debits(session: Session) -> Iterator[Violation]:
    sums = {
        d: int(v)
        for d, v in session.execute(
            select(Transfer.debit_id, func.sum(Transfer.amount))
            .where(Transfer.debit_id.is_not(None), Transfer.phase == "posted")
            .group_by(Transfer.debit_id)
        )
    }
    for d in session.execute(select(Debit.id, Debit.amount)):
        if sums.get(d.id, 0) != d.amount:
            yield Violation("debit", f"debit {d.id} of {d.amount} moved {sums.get(d.id, 0)}")


CHECKS: list[tuple[str, Callable[[Session], Iterator[Violation]]]] = [
    ("transfers", check_transfers),
    ("references", check_references),
    ("zero-sum", check_zero_sum),
    ("wallets", check_wallets),
    ("grants", check_grants),
    ("holds", check_holds),
    ("debits", check_debits),
    ("caps", check_caps),
]


def verify(
    session: Session, first_only: bool = True, on_check: Callable[[str], None] | None = None
) -> list[Violation]:
    """Every check in order; ``on_check(name)`` is told as each one starts (a progress bar)."""
    found: list[Violation] = []
    token = _shared.set({})
    try:
        for name, check in CHECKS:
            if on_check is not None:
                on_check(name)
            for violation in check(session):
                found.append(violation)
                if first_only:
                    return found
        return found
    finally:
        _shared.reset(token)


__all__ = ["Violation", "verify", "CHECKS"]
