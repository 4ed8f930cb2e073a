"""Runway reads and erasures against PostgreSQL, as ratios against a balance read in the same run.

    .venv/bin/python bench/extras.py --debits 5000 --reads 300

Uses the server named by CHRONOTE_DATABASE_URL and a database ``chronote_bench_extras`` beside
it (recreated). One wallet gets ``--debits`` debits spread over the last 14 days (the runway's
whole window), and ``--people`` people a personal account with ten debits each. Then:
- ``runway_p50_ms``/``runway_p99_ms``: `RunwayService.runway` on the busy wallet, with its ratio
  to `LedgerService.balance` on the same wallet (decision 0046 reads two queries more);
- ``erase_s``: one `erase-person` sweep over that database (decision 0047), in seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from chronote_billing.config import normalize_database_url
from chronote_billing.container import Container
from chronote_billing.core import migrate
from chronote_billing.core.clock import ManualClock
from chronote_billing.core.db import Database, recreate_postgres_database
from chronote_billing.people import service as people
from chronote_billing.people.erasure import erase


def timed(fn, reads: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(reads):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return sorted(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debits", type=int, default=5000)
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--reads", type=int, default=300)
    args = parser.parse_args()
    base = normalize_database_url(os.environ.get("CHRONOTE_DATABASE_URL", ""))
    if not base.startswith("postgresql"):
        sys.exit("set CHRONOTE_DATABASE_URL=postgresql://... (the database beside it is used)")
    db = Database(recreate_postgres_database(base, "chronote_bench_extras"))
    migrate.upgrade(db.engine)
    now = datetime(2026, 12, 5, 12, tzinfo=UTC)
    clock = ManualClock(now - timedelta(days=14))
    c = Container(db=db, clock=clock)
    busy = db.write(lambda s: c.accounts.get_or_create(s, "organization", "org_bench").id)
    db.write(
        lambda s: c.ledger.issue_grant(
            s,
            account_id=busy,
            amount=10**12,
            source="promotional",
            idempotency_key="seed",
            cause_type="bench",
        )
    )
    step = timedelta(days=14) / args.debits
    for i in range(args.debits):
        db.write(lambda s, i=i: c.ledger.debit(s, account_id=busy, amount=1000, idempotency_key=f"d{i}"))
        clock.advance(step)
    users = [str(10**17 + n) for n in range(args.people)]
    for user in users:

        def person(s, u=user):  # type: ignore[no-untyped-def]
            people.remember(s, u, f"Bench Person {u[-4:]}", clock.now())
            account = c.accounts.get_or_create(s, "personal", u, f"Bench Person {u[-4:]}")
            c.ledger.issue_grant(
                s,
                account_id=account.id,
                amount=100_000,
                source="promotional",
                idempotency_key="g",
                cause_type="b",
            )
            for n in range(10):
                c.ledger.debit(s, account_id=account.id, amount=1000, idempotency_key=f"u{n}")

        db.write(person)
    clock.set(now)
    account = db.read(lambda s: c.accounts.get(s, busy))
    balance = timed(lambda: db.read(lambda s: c.ledger.balance(s, busy)), args.reads)
    runway = timed(lambda: db.read(lambda s: c.runway.runway(s, account)), args.reads)
    p50 = statistics.median(runway)
    p99 = runway[int(len(runway) * 0.99) - 1]
    print(
        f"runway_p50_ms={p50:.2f} runway_p99_ms={p99:.2f} balance_p50_ms={statistics.median(balance):.2f} "
        f"ratio_p50_vs_balance={p50 / statistics.median(balance):.1f} window_debits={args.debits}"
    )
    start = time.perf_counter()
    erase(db, clock, users[len(users) // 2], forget_customer=lambda *a: None, reason="bench")
    elapsed = time.perf_counter() - start
    rows = db.read(lambda s: s.execute(text("select count(*) from ledger_transfers")).scalar())
    print(f"erase_s={elapsed:.2f} ledger_transfers={rows} people={args.people}")
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
