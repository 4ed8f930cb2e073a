"""Races on the ledger: many threads, each with its own transaction, spending one wallet or many.

No wallet may be overdrawn, every millicredit must be accounted for, every failure must be a
decline (never a crash or an unhandled deadlock), duplicates of one idempotency key must take
effect once, and a spend cap must hold under any interleaving.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from chronote_billing.core.db import Database
from chronote_billing.core.errors import CapReached, InsufficientCredits
from chronote_billing.ledger.models import Debit, Hold
from chronote_billing.ledger.service import CapSpec, LedgerService
from chronote_billing.ledger.verify import verify

DECLINES = (InsufficientCredits, CapReached)


@dataclass
class Tally:
    """What one thread saw succeed and fail."""

    spent: dict[str, int] = field(default_factory=dict)  # account -> captured + debited
    declines: int = 0
    successes: int = 0

    def add(self, account: str, amount: int) -> None:
        self.spent[account] = self.spent.get(account, 0) + amount
        self.successes += 1


def race(threads: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` on ``threads`` threads released together; re-raise the first error."""
    barrier = threading.Barrier(threads)

    def start(i: int) -> Any:
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(start, range(threads)))


def grant(db: Database, ledger: LedgerService, account: str, amount: int) -> None:
    db.write(
        lambda s: ledger.issue_grant(
            s,
            account_id=account,
            amount=amount,
            idempotency_key=f"grant-{account}",
            source="promotional",
            cause_type="admin",
        )
    )


def spender(
    db: Database,
    ledger: LedgerService,
    clock: Any,
    accounts: list[str],
    seed: int,
    ops: int,
    own_transaction: bool = False,
) -> Tally:
    """Random holds (captured, extended or released) and debits; declines are counted, not raised.

    ``own_transaction``: debits, holds and captures as writes of their own (``commit_*``), as the
    HTTP API makes them; otherwise each inside a ``db.write`` transaction.
    """
    rng = random.Random(seed)
    tally = Tally()

    def write(operation: str, **request: Any) -> Any:
        if own_transaction and operation in ("debit", "place_hold", "capture_hold"):
            return getattr(ledger, f"commit_{operation}")(db, **request)
        return db.write(lambda s: getattr(ledger, operation)(s, **request))

    for n in range(ops):
        account = rng.choice(accounts)
        key = f"t{seed}-{n}"
        try:
            action = rng.random()
            if action < 0.35:
                amount = rng.randint(1, 900)
                write("debit", account_id=account, amount=amount, idempotency_key=key)
                tally.add(account, amount)
                continue
            hold = write(
                "place_hold",
                account_id=account,
                amount=rng.randint(1, 1_500),
                expires_at=clock.now() + timedelta(hours=1),
                idempotency_key=key,
                allow_partial=rng.random() < 0.3,
            )
            held = hold.amount_held
            if action < 0.55:
                try:
                    more = db.write(
                        lambda s, h=hold.id, k=key: ledger.extend_hold(
                            s, hold_id=h, amount=rng.randint(1, 500), idempotency_key=k + "-extend"
                        )
                    )
                    held = more.amount_held
                except DECLINES:
                    tally.declines += 1
            if action < 0.85:
                amount = rng.randint(0, held)
                # Odd threads name the account, so their captures share commits (decision 0028).
                hint = {"account_id": account} if own_transaction and seed % 2 else {}
                write(
                    "capture_hold", hold_id=hold.id, amount=amount, idempotency_key=key + "-capture", **hint
                )
                tally.add(account, amount)
            else:
                db.write(
                    lambda s, h=hold.id, k=key: ledger.release_hold(
                        s, hold_id=h, idempotency_key=k + "-release"
                    )
                )
        except DECLINES:
            tally.declines += 1
    return tally


def check_books(db: Database, ledger: LedgerService, granted: dict[str, int], tallies: list[Tally]) -> None:
    assert db.read(lambda s: verify(s, first_only=False)) == []
    for account, amount in granted.items():
        spent = sum(t.spent.get(account, 0) for t in tallies)
        bal = db.read(lambda s, a=account: ledger.balance(s, a))
        assert bal.posted >= 0 and bal.available >= 0, account
        assert bal.held == 0  # every hold was captured or released
        # Granted = consumed + what is still in the wallet (released holds returned to it).
        assert amount == spent + bal.posted, (account, amount, spent, bal.posted)
        lines, cursor = [], None
        while True:
            page = db.read(lambda s, a=account, c=cursor: ledger.statement(s, a, limit=500, starting_after=c))
            lines += page.data
            if not page.has_more:
                break
            cursor = page.next_cursor
        assert (
            -sum(line.amount for line in lines if line.phase in ("posted", "post") and line.amount < 0)
            == spent
        )


@pytest.mark.postgres
@pytest.mark.parametrize("own_transaction", [False, True], ids=["in_transaction", "own_transaction"])
def test_sixteen_threads_on_one_wallet(db, ledger, clock, make_account, own_transaction):
    account = make_account()
    grant(db, ledger, account, 60_000)
    tallies = race(
        16, lambda i: spender(db, ledger, clock, [account], seed=i, ops=12, own_transaction=own_transaction)
    )
    check_books(db, ledger, {account: 60_000}, tallies)
    assert sum(t.declines for t in tallies) > 0, "the wallet was meant to run dry"
    assert sum(t.successes for t in tallies) > 0


@pytest.mark.postgres
def test_sixteen_threads_over_fifty_wallets(db, ledger, clock, make_account):
    accounts = [make_account() for _ in range(50)]
    for account in accounts:
        grant(db, ledger, account, 3_000)
    rng = random.Random(7)
    triples = [rng.sample(accounts, 3) for _ in range(16)]
    tallies = race(
        16, lambda i: spender(db, ledger, clock, triples[i], seed=100 + i, ops=10, own_transaction=i % 2 == 1)
    )
    check_books(db, ledger, dict.fromkeys(accounts, 3_000), tallies)


@pytest.mark.postgres
def test_duplicate_keys_take_effect_once(db, ledger, clock, make_account):
    """Odd threads write on their own (``commit_*``), even ones inside a transaction."""
    account = make_account()
    grant(db, ledger, account, 100_000)
    expires = clock.now() + timedelta(hours=1)

    def write(i: int, operation: str, **request: Any) -> Any:
        if i % 2:
            return getattr(ledger, f"commit_{operation}")(db, **request)
        return db.write(lambda s: getattr(ledger, operation)(s, **request))

    holds = race(
        16,
        lambda i: write(
            i, "place_hold", account_id=account, amount=4_000, expires_at=expires, idempotency_key="same"
        ),
    )
    assert len({h.id for h in holds}) == 1 and all(h == holds[0] for h in holds)
    captures = race(
        16, lambda i: write(i, "capture_hold", hold_id=holds[0].id, amount=3_000, idempotency_key="cap")
    )
    assert all(c == captures[0] for c in captures) and captures[0].amount_captured == 3_000
    debits = race(16, lambda i: write(i, "debit", account_id=account, amount=1_000, idempotency_key="same"))
    assert len({d.id for d in debits}) == 1 and all(d == debits[0] for d in debits)
    count = db.read(
        lambda s: (
            s.execute(
                select(func.count()).select_from(Hold).where(Hold.billing_account_id == account)
            ).scalar(),
            s.execute(
                select(func.count()).select_from(Debit).where(Debit.billing_account_id == account)
            ).scalar(),
        )
    )
    assert count == (1, 1)
    assert db.read(lambda s: ledger.balance(s, account)).posted == 100_000 - 3_000 - 1_000
    assert db.read(lambda s: verify(s)) == []


@pytest.mark.postgres
def test_cap_is_never_exceeded(db, ledger, clock, make_account):
    account = make_account("organization")
    grant(db, ledger, account, 1_000_000)
    cap = CapSpec("cap_race_" + account, 10_000)
    expires = clock.now() + timedelta(hours=1)

    def work(i: int) -> tuple[int, int]:
        used = declined = 0
        for n in range(4):
            try:
                if (i + n) % 2:
                    db.write(
                        lambda s, k=f"{i}-{n}": ledger.debit(
                            s, account_id=account, amount=700, idempotency_key=k, cap=cap
                        )
                    )
                    used += 700
                else:
                    hold = db.write(
                        lambda s, k=f"{i}-{n}": ledger.place_hold(
                            s, account_id=account, amount=900, expires_at=expires, idempotency_key=k, cap=cap
                        )
                    )
                    db.write(
                        lambda s, h=hold.id, k=f"{i}-{n}-c": ledger.capture_hold(
                            s, hold_id=h, amount=600, idempotency_key=k
                        )
                    )
                    used += 600
            except CapReached:
                declined += 1
        return used, declined

    results = race(16, work)
    usage = db.read(lambda s: ledger.cap_usage(s, cap.cap_id, clock.now().strftime("%Y-%m")))
    assert usage.held == 0
    assert usage.used == sum(u for u, _ in results) <= cap.limit  # type: ignore[operator]
    assert usage.used > cap.limit - 900  # type: ignore[operator]
    assert sum(d for _, d in results) > 0
    assert db.read(lambda s: ledger.balance(s, account)).posted == 1_000_000 - usage.used
    assert db.read(lambda s: verify(s)) == []


def test_eight_threads_cannot_overdraw(db, ledger, clock, make_account):
    """On SQLite, BEGIN IMMEDIATE serializes spends; on PostgreSQL the wallet row lock does."""
    account = make_account()
    grant(db, ledger, account, 8_000)
    tallies = race(8, lambda i: spender(db, ledger, clock, [account], seed=1_000 + i, ops=6))
    check_books(db, ledger, {account: 8_000}, tallies)
