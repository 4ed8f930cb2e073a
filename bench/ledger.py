"""Ledger throughput and balance-read latency against PostgreSQL, compared with pgbench's TPC-B.

    .venv/bin/python bench/ledger.py --seconds 10

Uses the server named by CHRONOTE_DATABASE_URL but never its database: it creates
``chronote_bench`` (the ledger) and ``chronote_bench_pgbench`` (TPC-B) beside it and drops
neither, so the figures can be inspected afterwards.

What one op is (the same in every case and every ratio):
- ``place_capture``: one hold placed and then captured, i.e. two ledger transactions, counts as
  ONE op (it is one metered recording);
- ``debit``: one direct debit, one transaction, is one op.
For place+capture cases a ``#`` line on stderr also gives ledger transactions per second (two
per op) and their ratio, which compares one ledger transaction with one TPC-B transaction.
The ratio divides ops/s by pgbench's TPC-B-like transactions/s at the same number of clients
(one TPC-B transaction: three UPDATEs, a SELECT and an INSERT), measured in the same round just
before; each printed figure is the median over ``--rounds`` rounds (every round is on stderr).

Cases run on many wallets (a random one of ``--wallets`` per op) and on one hot wallet. Workers
are threads of this process sharing one Database, the way the HTTP API's request threads share
one (decision 0027); ``--processes`` runs each worker as a process of its own instead.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from chronote_billing.accounts.service import AccountService
from chronote_billing.config import normalize_database_url
from chronote_billing.core import migrate
from chronote_billing.core.db import Database, recreate_postgres_database
from chronote_billing.ledger.service import LedgerService
from chronote_billing.ledger.verify import verify

BENCH_DB = "chronote_bench"
CASES = ("place_capture", "debit")
PGBENCH_DB = "chronote_bench_pgbench"
PLENTY = 10**12  # millicredits per seeded wallet: no case ever runs a wallet dry


def open_funded(db: Database, owner: str, amount: int, key: str) -> tuple[str, str, str]:
    """An organization account with one promotional grant: (account, wallet, grant) ids."""
    ledger = LedgerService()
    accounts = AccountService(ledger=ledger)

    def work(session: Any) -> tuple[str, str, str]:
        account = accounts.get_or_create(session, "organization", owner)
        grant = ledger.issue_grant(
            session,
            account_id=account.id,
            amount=amount,
            source="promotional",
            idempotency_key=key,
            cause_type="bench",
        )
        return account.id, account.wallet_account_id, grant.id

    return db.write(work)


def seed(db: Database, wallets: int) -> tuple[list[str], str]:
    many = [open_funded(db, f"org_bench_{n}", PLENTY, "seed")[0] for n in range(wallets)]
    hot = open_funded(db, "org_bench_hot", PLENTY, "seed")[0]
    return many, hot


# ----------------------------------------------------------------------------- workers


def _work(
    db: Database, ledger: LedgerService, case: str, targets: list[str], seconds: float, seed: int
) -> int:
    """One worker's loop: ops completed in ``seconds``."""
    rng = random.Random(seed)
    deadline = time.perf_counter() + seconds
    ops = 0
    tag = f"{case}-{seed}-{time.time_ns()}"
    while time.perf_counter() < deadline:
        account = rng.choice(targets)
        key = f"{tag}-{ops}"
        # As the HTTP API calls them: each write is its own unit of work.
        if case == "debit":
            ledger.commit_debit(db, account_id=account, amount=1_000, idempotency_key=key)
        else:
            expires = datetime.now(UTC) + timedelta(hours=1)
            hold = ledger.commit_place_hold(
                db, account_id=account, amount=5_000, expires_at=expires, idempotency_key=key
            )
            # The caller that placed the hold knows its account and names it (decision 0028).
            ledger.commit_capture_hold(
                db, hold_id=hold.id, amount=3_000, idempotency_key=key, account_id=account
            )
        ops += 1
    return ops


def _connect(url: str, db_functions: bool, connections: int) -> tuple[Database, LedgerService]:
    """A Database with ``connections`` connections already open, so none opens in the timed
    interval, and the ledger service the workers share."""
    db = Database(url)
    if db.dialect == "postgresql":
        db.open_autocommit_connections(connections)
    else:
        db.read(lambda s: s.execute(text("select 1")).scalar())
    return db, LedgerService(db_functions=db_functions)


def run_threads(
    url: str, case: str, targets: list[str], workers: int, seconds: float, db_functions: bool
) -> float:
    """Workers as threads sharing one Database and one LedgerService, as the API's request
    threads do (decision 0027)."""
    db, ledger = _connect(url, db_functions, workers)
    go = threading.Barrier(workers + 1)
    counts = [0] * workers

    def worker(n: int) -> None:
        go.wait()
        counts[n] = _work(db, ledger, case, targets, seconds, n * 7919 + os.getpid())

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    go.wait()
    for t in threads:
        t.join()
    db.dispose()
    return sum(counts) / seconds


def _process_worker(
    url: str,
    case: str,
    targets: list[str],
    seconds: float,
    go: Any,
    results: Any,
    worker: int,
    db_functions: bool,
) -> None:
    db, ledger = _connect(url, db_functions, 1)
    go.wait()
    results.put(_work(db, ledger, case, targets, seconds, worker * 7919 + os.getpid()))
    db.dispose()


def run_processes(
    url: str, case: str, targets: list[str], workers: int, seconds: float, db_functions: bool
) -> float:
    """Workers as processes, each with its own Database (``--processes``)."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(url, case, targets, seconds, go, results, n, db_functions))
        for n in range(workers)
    ]
    for p in procs:
        p.start()
    time.sleep(1.5)  # let every worker import and connect
    go.set()
    total = sum(results.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


# ----------------------------------------------------------------------------- pgbench


class PgBench:
    """pgbench's TPC-B-like on a scale-1 database of its own on the same server."""

    def __init__(self, base_url: str) -> None:
        if shutil.which("pgbench") is None:
            sys.exit("pgbench is not installed (apt-get install postgresql-client)")
        url = make_url(recreate_postgres_database(base_url, PGBENCH_DB))
        self.conn = [
            "-h",
            url.host or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "postgres",
        ]
        self.env = dict(os.environ)
        if url.password:
            self.env["PGPASSWORD"] = url.password
        subprocess.run(
            ["pgbench", "-i", "-s", "1", "-q", *self.conn, PGBENCH_DB],
            check=True,
            env=self.env,
            capture_output=True,
        )

    def tps(
        self, clients: int, seconds: float, database: str = PGBENCH_DB, script: str | None = None
    ) -> float:
        """Transactions/s of TPC-B-like, or of ``script`` (a pgbench custom script) on ``database``."""
        custom: list[str] = []
        if script is not None:
            # Simple query protocol, as for TPC-B: each statement is parsed and planned per call.
            with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
                f.write(script)
            custom = ["-f", f.name, "-M", "simple"]
        try:
            out = subprocess.run(
                [
                    "pgbench",
                    "-c",
                    str(clients),
                    "-j",
                    str(clients),
                    "-T",
                    str(int(seconds)),
                    "-n",
                    *custom,
                    *self.conn,
                    database,
                ],
                check=True,
                env=self.env,
                capture_output=True,
                text=True,
            ).stdout
        finally:
            if custom:
                os.remove(custom[1])
        match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
        if match is None:
            sys.exit("could not read pgbench's tps:\n" + out)
        return float(match.group(1))


def sql_place_capture_script(owner: str, wallets: int) -> str:
    """A pgbench script for one place+capture pair through the ledger's database functions, with
    arguments made in SQL instead of by the Python service (``--sql-clients``).

    ``owner`` is an SQL expression for the wallet owner's reference, in which ``:w`` is a random
    number below ``wallets``. The pair is one pgbench "transaction" (two ledger transactions), so
    its tps counts pairs, like the place_capture cases.
    """
    hold = "'hold_sql_' || :client_id || '_' || :k"
    key = "'sql-' || :client_id || '-' || :k"
    return f"""\\set k random(1, 1000000000000000)
\\set w random(0, {wallets - 1})
SELECT ledger_try_place_hold(a.id, 5000, false, now() + interval '1 hour', now(), NULL, NULL, NULL,
    'ledger.hold:' || a.id, {key}, md5({key}),
    jsonb_build_object('object', 'hold', 'id', {hold}, 'account_id', a.id, 'status', 'open',
        'amount_requested', 5000, 'amount_held', 5000, 'amount_captured', 0, 'partial', false,
        'expires_at', now() + interval '1 hour', 'reason', '', 'metadata', '{{}}'::jsonb, 'cap_id', NULL,
        'cap_period', NULL, 'created_at', now(), 'settled_at', NULL),
    {hold}, '', '{{}}'::jsonb, 'hold')
  FROM billing_accounts a WHERE a.kind = 'organization' AND a.owner_ref = {owner};
SELECT ledger_try_capture_hold({hold}, 3000, now(), 'ledger.hold_capture:', {key}, md5({key} || 'c'), NULL);
"""


# ----------------------------------------------------------------------------- history


def build_history(db: Database, entries: int) -> str:
    """A wallet with ``entries`` transfers: one grant, then ``entries - 1`` posted debits of 1.

    Written set-based in SQL; every counter, running balance and debit row matches what the
    service would have written, so ``verify`` holds over it.
    """
    debits = entries - 1
    amount = 10 * entries
    account_id, wallet_id, grant_id = open_funded(db, "org_bench_history", amount, "history")
    start = datetime.now(UTC) - timedelta(days=365)
    params = {
        "acct": account_id,
        "wallet": wallet_id,
        "grant": grant_id,
        "n": debits,
        "amount": amount,
        "t0": start,
    }
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ledger_debits (id, wallet_account_id, billing_account_id, amount, reason, metadata,"
                " cap_id, cap_period, created_at)"
                " SELECT 'deb_hist' || lpad(g::text, 9, '0'), :wallet, :acct, 1, 'history', '{}'::jsonb,"
                " NULL, NULL, :t0 + g * interval '30 seconds'"
                " FROM generate_series(1, :n) AS g"
            ),
            params,
        )
        conn.execute(
            text(
                "INSERT INTO ledger_transfers (debit_account_id, credit_account_id, wallet_account_id, amount,"
                " phase, pending_id, kind, grant_id, hold_id, debit_id, balance_after, reason, created_at)"
                " SELECT :wallet, 'la_system_consumption', :wallet, 1, 'posted', NULL, 'debit', :grant, NULL,"
                " 'deb_hist' || lpad(g::text, 9, '0'), :amount - g, 'history', :t0 + g * interval '30 seconds'"
                " FROM generate_series(1, :n) AS g ORDER BY g"
            ),
            params,
        )
        conn.execute(
            text("UPDATE ledger_accounts SET debits_posted = debits_posted + :n WHERE id = :wallet"), params
        )
        conn.execute(text("UPDATE ledger_grants SET remaining = remaining - :n WHERE id = :grant"), params)
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # Vacuumed and analyzed as a table in service would be, so autovacuum does not start on
        # the million new rows in the middle of the measurement.
        conn.execute(text("VACUUM ANALYZE"))
    return account_id


def balance_p99(db: Database, account_id: str, reads: int) -> float:
    ledger = LedgerService()
    for _ in range(50):  # warm the pool, caches and compiled statements
        db.read(lambda s: ledger.balance(s, account_id))
    timings = []
    for _ in range(reads):
        t = time.perf_counter()
        db.read(lambda s: ledger.balance(s, account_id))
        timings.append((time.perf_counter() - t) * 1000)
    return statistics.quantiles(timings, n=100)[98]


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10, help="Length of each case and pgbench run.")
    parser.add_argument("--workers", default="1,4,8", help="Comma-separated worker counts.")
    parser.add_argument(
        "--rounds", type=int, default=3, help="Rounds of every case and TPC-B; medians are reported."
    )
    parser.add_argument("--wallets", type=int, default=1_000)
    parser.add_argument("--history", type=int, default=1_000_000, help="Transfers on the history wallet.")
    parser.add_argument("--reads", type=int, default=2_000, help="Balance reads for the p99.")
    parser.add_argument(
        "--python-path",
        action="store_true",
        help="Run writes through the Python path only, without PostgreSQL's one-round-trip functions.",
    )
    parser.add_argument(
        "--processes",
        action="store_true",
        help="Run each worker as a process of its own instead of a thread of this one (decision 0027).",
    )
    parser.add_argument(
        "--sql-clients",
        action="store_true",
        help="Also drive place+capture pairs from pgbench through the ledger's SQL functions, with "
        "no Python client: the database side alone (a diagnostic, printed on stderr).",
    )
    parser.add_argument("--allow-sqlite", action="store_true", help="Run on SQLite, without pgbench ratios.")
    args = parser.parse_args()

    base = normalize_database_url(os.environ.get("CHRONOTE_DATABASE_URL", ""))
    is_pg = base.startswith("postgresql")
    if not is_pg and not args.allow_sqlite:
        sys.exit(
            "bench/ledger.py measures PostgreSQL: set CHRONOTE_DATABASE_URL=postgresql://... "
            "(or pass --allow-sqlite for SQLite figures without TPC-B ratios)"
        )
    workers = [int(w) for w in args.workers.split(",")]
    if is_pg:
        url = recreate_postgres_database(base, BENCH_DB)
    else:
        url = "sqlite:///var/bench/ledger.db"
        if os.path.exists("var/bench/ledger.db"):
            os.remove("var/bench/ledger.db")
    db = Database(url)
    migrate.upgrade(db.engine)
    run_case = run_processes if args.processes else run_threads
    print(f"# seeding {args.wallets} wallets ...", file=sys.stderr, flush=True)
    many, hot = seed(db, args.wallets)

    pgbench = PgBench(base) if is_pg else None
    cases = [
        (case, where, targets)
        for case in CASES
        for where, targets in (("many_wallets", many), ("hot_wallet", [hot]))
    ]
    sql_scripts = {
        "many_wallets": sql_place_capture_script("'org_bench_' || :w", args.wallets),
        "hot_wallet": sql_place_capture_script("'org_bench_hot'", 1),
    }
    ops: dict[tuple[str, int], list[float]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    tpcb: dict[int, list[float]] = {}
    # Each round measures TPC-B right before the cases it is compared with, and the figures
    # reported are medians over rounds: this machine's speed drifts by more than 10% between
    # runs a minute apart, and a ratio of two runs far apart would carry that drift.
    for round_ in range(1, args.rounds + 1):
        for n in workers:
            baseline = pgbench.tps(n, args.seconds) if pgbench else None
            if baseline is not None:
                tpcb.setdefault(n, []).append(baseline)
            for case, where, targets in cases:
                rate = run_case(url, case, targets, n, args.seconds, not args.python_path)
                name = f"{case}_{where}"
                ops.setdefault((name, n), []).append(rate)
                if baseline is not None:
                    ratios.setdefault((name, n), []).append(rate / baseline)
                print(
                    f"# round {round_} {name} workers={n} ops_per_s={rate:.1f}"
                    + (f" tpcb={baseline:.1f} ratio={rate / baseline:.2f}" if baseline else ""),
                    file=sys.stderr,
                    flush=True,
                )
            if args.sql_clients and pgbench is not None and baseline is not None:
                for where, script in sql_scripts.items():
                    name = f"sql_place_capture_{where}"
                    rate = pgbench.tps(n, args.seconds, database=BENCH_DB, script=script)
                    ops.setdefault((name, n), []).append(rate)
                    ratios.setdefault((name, n), []).append(rate / baseline)
                    print(
                        f"# round {round_} {name} workers={n} ops_per_s={rate:.1f}"
                        f" tpcb={baseline:.1f} ratio={rate / baseline:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    for where in sql_scripts if args.sql_clients else ():
        name = f"sql_place_capture_{where}"
        for n in workers:
            if (name, n) in ratios:  # a diagnostic, not a result: on stderr only
                print(
                    f"# case={name} workers={n} ops_per_s={statistics.median(ops[(name, n)]):.1f}"
                    f" ratio_vs_tpcb={statistics.median(ratios[(name, n)]):.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    for case, where, _targets in cases:
        name = f"{case}_{where}"
        for n in workers:
            rate = statistics.median(ops[(name, n)])
            ratio = f"{statistics.median(ratios[(name, n)]):.2f}" if (name, n) in ratios else "n/a"
            print(f"case={name} workers={n} ops_per_s={rate:.1f} ratio_vs_tpcb={ratio}", flush=True)
            if case == "place_capture" and (name, n) in ratios:  # two ledger transactions per op
                per_tx = 2 * statistics.median(ratios[(name, n)])
                print(
                    f"# {name} workers={n} ledger_transactions_per_s={2 * rate:.1f}"
                    f" transactions_ratio_vs_tpcb={per_tx:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    for n, runs in tpcb.items():
        spread = ", ".join(f"{t:.0f}" for t in runs)
        print(
            f"# pgbench tpcb clients={n} tps={statistics.median(runs):.1f} (rounds: {spread})",
            file=sys.stderr,
            flush=True,
        )

    if is_pg:
        print(f"# building a wallet with {args.history} transfers ...", file=sys.stderr, flush=True)
        history_account = build_history(db, args.history)
        count = db.read(
            lambda s: s.execute(
                text(
                    "SELECT count(*) FROM ledger_transfers t JOIN billing_accounts a"
                    " ON a.wallet_account_id = t.wallet_account_id WHERE a.id = :a"
                ),
                {"a": history_account},
            ).scalar_one()
        )
        p99 = balance_p99(db, history_account, args.reads)
        print(f"balance_read_p99_ms={p99:.2f} history_entries={count}", flush=True)
    violations = db.read(lambda s: verify(s, first_only=False))
    print(f"# verify: {'ok' if not violations else violations[:3]}", file=sys.stderr, flush=True)
    db.dispose()


if __name__ == "__main__":
    main()
