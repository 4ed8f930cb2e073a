"""Concurrent autocommit writes of one group share one transaction (decision 0028), and each
caller still gets its own result or its own error."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from chronote_billing.core.db import Database
from chronote_billing.core.write_combiner import ServerStatement

pytestmark = pytest.mark.postgres

# Holds its group's lead for a moment, so that the writes started behind it queue.
SLOW = ServerStatement("combiner_slow", "SELECT $1::text || (SELECT '' FROM pg_sleep(0.4))")
TXID = ServerStatement("combiner_txid", "SELECT txid_current()::text || ':' || $1::text")
INSERT = ServerStatement(
    "combiner_insert", "INSERT INTO combiner_probe (tag) VALUES ($1::text) RETURNING tag"
)
DIVIDE = ServerStatement("combiner_divide", "SELECT (1 / $1::int)::text")


def behind_a_slow_write(
    db: Database, group: str, writes: list[tuple[ServerStatement, list[str | None]]]
) -> list[Any]:
    """Start a slow write of ``group``, then ``writes`` on threads of their own while it runs;
    each thread's result, or the exception it raised."""
    outcomes: list[Any] = [None] * len(writes)
    lead = threading.Thread(target=db.run_autocommit, args=(SLOW, ["lead"]), kwargs={"group": group})
    lead.start()
    time.sleep(0.1)

    def run(i: int) -> None:
        statement, args = writes[i]
        try:
            outcomes[i] = db.run_autocommit(statement, args, group=group)
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(writes))]
    for t in threads:
        t.start()
    for t in [lead, *threads]:
        t.join(timeout=30)
    return outcomes


def test_writes_queued_behind_one_in_flight_share_one_transaction(scratch_db: Database) -> None:
    db = scratch_db
    before = db._combiner.combined_transactions
    outcomes = behind_a_slow_write(db, "g1", [(TXID, ["a"]), (TXID, ["b"]), (TXID, ["c"])])
    txids = {outcome.split(":")[0] for outcome in outcomes}
    assert sorted(outcome.split(":")[1] for outcome in outcomes) == ["a", "b", "c"]  # each its own
    assert len(txids) == 1  # one transaction
    assert db._combiner.combined_transactions == before + 1
    # Other groups, and calls without one, are not held up by it.
    assert db.run_autocommit(TXID, ["alone"]).endswith(":alone")  # type: ignore[union-attr]


def test_a_failing_write_fails_alone_and_the_others_apply_once(scratch_db: Database) -> None:
    db = scratch_db
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE combiner_probe (tag text NOT NULL)"))
    outcomes = behind_a_slow_write(db, "g2", [(INSERT, ["first"]), (DIVIDE, ["0"]), (INSERT, ["second"])])
    assert outcomes[0] == "first" and outcomes[2] == "second"
    assert isinstance(outcomes[1], DBAPIError)
    assert getattr(outcomes[1].orig, "sqlstate", None) == "22012"  # division_by_zero, its own error
    with db.engine.connect() as conn:
        tags = sorted(conn.execute(text("SELECT tag FROM combiner_probe")).scalars())
    assert tags == ["first", "second"]  # the rolled-back transaction left nothing; each ran once


def test_a_group_of_one_runs_like_an_ungrouped_write(scratch_db: Database) -> None:
    db = scratch_db
    before = db._combiner.combined_transactions
    first = db.run_autocommit(TXID, ["x"], group="g3")
    second = db.run_autocommit(TXID, ["y"], group="g3")
    assert first is not None and second is not None
    assert first.split(":")[0] != second.split(":")[0]  # one after the other: two transactions
    assert db._combiner.combined_transactions == before
    assert db.run_autocommit(DIVIDE, ["2"], group="g3") == "0"
    with pytest.raises(DBAPIError):
        db.run_autocommit(DIVIDE, ["0"], group="g3")


def test_ledger_writes_of_one_account_combine_with_their_own_outcomes(db, ledger, clock, make_account):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from chronote_billing.core.errors import InsufficientCredits

    account = make_account()
    db.write(
        lambda s: ledger.issue_grant(
            s, account_id=account, amount=10_000, source="promotional", idempotency_key="g", cause_type="test"
        )
    )
    expires = clock.now() + timedelta(hours=1)
    calls = {
        "hold": lambda: ledger.commit_place_hold(
            db, account_id=account, amount=4_000, expires_at=expires, idempotency_key="h"
        ),
        "hold again": lambda: ledger.commit_place_hold(
            db, account_id=account, amount=4_000, expires_at=expires, idempotency_key="h"
        ),
        "debit": lambda: ledger.commit_debit(db, account_id=account, amount=5_000, idempotency_key="d"),
        "too much": lambda: ledger.commit_debit(db, account_id=account, amount=5_000, idempotency_key="d2"),
    }
    outcomes: dict[str, Any] = {}
    lead = threading.Thread(target=db.run_autocommit, args=(SLOW, ["lead"]), kwargs={"group": account})
    lead.start()
    time.sleep(0.1)
    before = db._combiner.combined_writes

    def run(name: str) -> None:
        try:
            outcomes[name] = calls[name]()
        except Exception as exc:
            outcomes[name] = exc

    threads = []
    for name in calls:  # started in this order, so queued in this order
        threads.append(threading.Thread(target=run, args=(name,)))
        threads[-1].start()
        time.sleep(0.02)
    for t in [lead, *threads]:
        t.join(timeout=30)
    assert db._combiner.combined_writes > before
    assert outcomes["hold"] == outcomes["hold again"]  # one hold; the retry got the first result
    assert outcomes["debit"].amount == 5_000
    # 10,000 - 4,000 held - 5,000 debited leaves 1,000: the function declines, the Python path
    # answers alone with the usual error.
    assert isinstance(outcomes["too much"], InsufficientCredits)
    balance = db.read(lambda s: ledger.balance(s, account))
    assert (balance.available, balance.held) == (1_000, 4_000)


def test_one_transaction_applies_all_its_statements_or_none(scratch_db: Database) -> None:
    db = scratch_db
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE combiner_probe (tag text NOT NULL)"))
    with pytest.raises(Exception) as failed:
        db.run_in_one_transaction([(INSERT, ["lost"]), (DIVIDE, ["0"]), (INSERT, ["never"])])
    assert getattr(failed.value, "sqlstate", None) == "22012"
    done = db.run_in_one_transaction([(INSERT, ["kept"]), (TXID, ["a"]), (TXID, ["b"])])
    assert done[0] == "kept" and done[1].split(":")[0] == done[2].split(":")[0]  # type: ignore[union-attr]
    with db.engine.connect() as conn:
        assert list(conn.execute(text("SELECT tag FROM combiner_probe")).scalars()) == ["kept"]
    # A NOT NULL violation at the last statement rolls back the ones before it too.
    with pytest.raises(Exception) as violated:
        db.run_in_one_transaction([(INSERT, ["also lost"]), (INSERT, [None])])
    assert getattr(violated.value, "sqlstate", None) == "23502"
    with db.engine.connect() as conn:
        assert list(conn.execute(text("SELECT tag FROM combiner_probe")).scalars()) == ["kept"]
    assert db.run_autocommit(TXID, ["after"]).endswith(":after")  # type: ignore[union-attr]
