"""The recording path over HTTP against PostgreSQL, compared with the same server's /healthz.

    .venv/bin/python bench/http.py --seconds 10          (needs wrk: apt-get install wrk)

Uses the server named by CHRONOTE_DATABASE_URL but never its database: it creates
``chronote_bench_http`` beside it (left for inspection), funds 200 people (Personal Pro, given
as a complimentary plan, so recordings may run four hours) and 50 servers, and starts
``chronote-billing serve --workers N`` on a free port. Then, in one run:

- ``healthz`` (the process, no database), ``readyz`` (one database read, for scale), ``start``,
  ``extend``, ``finish`` and ``event`` at ``--connections`` (16), each
  with wrk for ``--seconds``: one-minute desktop recordings started by the 200 people in turn,
  extensions of those recordings by a minute, their finishes (each once, at 50 seconds), and
  Ask questions (metered events); every request with its own Idempotency-Key and acting user;
- ``start_open_loop``: starts offered at a fixed ``--rate`` (200 per second) whatever the
  answers, each timed from when it was due (no coordinated omission), for the p50 and p99.

Each case prints ``case=<name> connections=<n> ops_per_s=<x> ratio_vs_healthz=<r> p99_ms=<y>``;
wrk's full latency distribution and any non-2xx answers go to stderr, and a case with non-2xx
answers says so on its line. The ratio divides a case's ops/s by /healthz's in the same run.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on the import path, and the file's name then
# hides the standard library's `http` package from everything imported below: drop the folder.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select

from chronote_billing.catalog.service import load_catalog
from chronote_billing.config import normalize_database_url
from chronote_billing.container import Container
from chronote_billing.core import migrate
from chronote_billing.core.db import Database, recreate_postgres_database
from chronote_billing.core.ids import new_id
from chronote_billing.plans.models import ComplimentaryPlan
from chronote_billing.plans.service import ensure_free_allowance
from chronote_billing.usage.models import UsageRecord

BENCH_DB = "chronote_bench_http"
PEOPLE = 200
SERVERS = 50
PLENTY = 10**11  # millicredits per payer: no case ever runs a wallet dry
CLI = Path(sys.executable).parent / "chronote-billing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(db: Database) -> tuple[str, list[str], list[str]]:
    """An API key, the people and the servers, funded, with this month's allowances issued."""
    c = Container(db=db)
    secret = db.write(
        lambda s: c.api_keys.create(s, "bench", ["holds:write", "usage:write", "accounts:read"]).secret
    )
    people = [str(10**17 + n) for n in range(PEOPLE)]
    servers = [str(2 * 10**17 + n) for n in range(SERVERS)]

    def fund(kind: str, ref: str) -> None:
        def work(s: Any) -> None:
            account = c.accounts.get_or_create(s, kind, ref)
            if kind == "personal":
                s.execute(
                    insert(ComplimentaryPlan).values(
                        id=new_id("comp"),
                        account_id=account.id,
                        plan_id="personal_pro",
                        starts_at=c.clock.now() - timedelta(days=1),
                        ends_at=None,
                        reason="benchmark",
                        created_at=c.clock.now(),
                    )
                )
            c.ledger.issue_grant(
                s,
                account_id=account.id,
                amount=PLENTY,
                source="promotional",
                idempotency_key="bench",
                cause_type="bench",
            )
            ensure_free_allowance(s, c.ledger, account, c.clock.now(), c.catalog)

        db.write(work)

    for ref in people:
        fund("personal", ref)
    for ref in servers:
        fund("server", ref)
    return secret, people, servers


class Server:
    def __init__(self, url: str, workers: int, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CHRONOTE_DATABASE_URL": url}
        self.log = log.open("wb")
        self.process = subprocess.Popen(
            [str(CLI), "serve", "--workers", str(workers), "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit(f"the server did not answer: see {log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def lua_list(values: list[str]) -> str:
    return "{" + ",".join(f'"{v}"' for v in values) + "}"


# One request per call, rotating over the payers or recordings of the case; every request has a
# key of its own (thread, counter and run), so nothing is a retry.
LUA = """
local run = "{run}"
local secret = "{secret}"
local users = {users}
local targets = {targets}
local counter = 0
local thread_id = 0
local threads_seen = 0
function setup(thread)
  threads_seen = threads_seen + 1
  thread:set("thread_id", threads_seen)
end
function request()
  counter = counter + 1
  -- Two wrk threads take turns over the list: each slot once before any repeats.
  local n = ((counter - 1) * 2 + (thread_id - 1)) % #users + 1
  local key = run .. "-" .. thread_id .. "-" .. counter
  local headers = {{}}
  headers["Authorization"] = "Bearer " .. secret
  headers["Content-Type"] = "application/json"
  headers["Chronote-Acting-User"] = users[n]
  headers["Idempotency-Key"] = key
  {body}
end
"""

BODIES = {
    "start": 'return wrk.format("POST", "/v1/recordings", headers, '
    '\'{"context":"personal","capture_source":"desktop","requested_minutes":1}\')',
    "extend": 'return wrk.format("POST", "/v1/recordings/" .. targets[n] .. "/extend", headers, '
    "'{\"additional_minutes\":1}')",
    "finish": 'return wrk.format("POST", "/v1/recordings/" .. targets[n] .. "/finish", headers, '
    '\'{"seconds_by_source":{"desktop":50}}\')',
    "event": 'return wrk.format("POST", "/v1/usage/events", headers, '
    '\'{"event_id":"\' .. key .. \'","event_type":"ask_question","context":"personal"}\')',
}


def wrk(
    base: str, seconds: float, connections: int, script: str | None, path: str = "/healthz"
) -> tuple[float, float, int, str]:
    """Requests per second, p99 in ms, non-2xx answers, and wrk's report."""
    args = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        if script:
            f.write(script)
    if script:
        args += ["-s", f.name]
    path = path if script is None else "/"
    out = subprocess.run([*args, base + path], capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    rate = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([0-9.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")
    bad = re.search(r"Non-2xx or 3xx responses:\s+([0-9]+)", out)
    return rate, latency, int(bad.group(1)) if bad else 0, out


def case_script(case: str, secret: str, pairs: list[tuple[str, str]]) -> str:
    """``pairs``: (acting user, target) per request slot; the target is a recording id or unused."""
    return LUA.format(
        run=secrets.token_hex(4),
        secret=secret,
        users=lua_list([u for u, _ in pairs]),
        targets=lua_list([t for _, t in pairs]),
        body=BODIES[case],
    )


def open_recordings(db: Database) -> list[tuple[str, str]]:
    rows = db.read(
        lambda s: s.execute(
            select(UsageRecord.user_id, UsageRecord.id).where(UsageRecord.status == "open")
        ).all()
    )
    return [(str(u), str(r)) for u, r in rows]


async def open_loop(base: str, secret: str, people: list[str], rate: float, seconds: float) -> list[float]:
    """Starts offered at ``rate`` per second for ``seconds``; latency of each from when it was due."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        run = secrets.token_hex(4)

        async def one(n: int, due: float) -> None:
            headers = {
                "Authorization": f"Bearer {secret}",
                "Chronote-Acting-User": people[n % len(people)],
                "Idempotency-Key": f"open-{run}-{n}",
            }
            body = {"context": "personal", "capture_source": "desktop", "requested_minutes": 1}
            response = await client.post("/v1/recordings", json=body, headers=headers)
            if response.status_code != 201:
                raise SystemExit(f"open loop: {response.status_code} {response.text[:200]}")
            latencies.append((time.perf_counter() - due) * 1000)

        start = time.perf_counter() + 0.5
        tasks = []
        for n in range(int(rate * seconds)):
            due = start + n / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(n, due)))
        await asyncio.gather(*tasks)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10, help="Length of each closed-loop case.")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="serve --workers")
    parser.add_argument("--rate", type=float, default=200, help="Offered starts per second, open loop.")
    parser.add_argument("--open-seconds", type=float, default=15, help="Length of the open-loop case.")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/http.py needs wrk: apt-get install wrk")
    base_url = normalize_database_url(os.environ.get("CHRONOTE_DATABASE_URL", ""))
    if not base_url.startswith("postgresql"):
        raise SystemExit("bench/http.py measures PostgreSQL: set CHRONOTE_DATABASE_URL=postgresql://...")
    url = recreate_postgres_database(base_url, BENCH_DB)
    db = Database(url)
    migrate.upgrade(db.engine)
    secret, people, _servers = seed(db)
    print(f"# seeded {len(people)} people and {len(_servers)} servers in {BENCH_DB}", file=sys.stderr)
    log = Path(tempfile.gettempdir()) / "chronote-bench-http.log"
    server = Server(url, args.workers, log)
    results: dict[str, tuple[float, float, int]] = {}
    try:
        everyone = [(p, "") for p in people]
        wrk(server.base, 2, args.connections, case_script("start", secret, everyone))  # warm up
        for case in ("healthz", "readyz", "start", "extend", "finish", "event"):
            if case in ("healthz", "readyz"):
                script = None
            elif case in ("extend", "finish"):
                recordings = open_recordings(db)
                script = case_script(case, secret, recordings)
            else:
                script = case_script(case, secret, everyone)
            rate, p99, bad, report = wrk(server.base, args.seconds, args.connections, script, f"/{case}")
            print(f"# {case}\n{report}", file=sys.stderr)
            results[case] = (rate, p99, bad)
            if case == "finish" and rate * args.seconds > len(recordings):
                print(
                    f"# finish: {len(recordings)} recordings for about {rate * args.seconds:.0f} finishes: "
                    "later finishes repeated earlier ones (the settled record)",
                    file=sys.stderr,
                )
        latencies = asyncio.run(open_loop(server.base, secret, people, args.rate, args.open_seconds))
    finally:
        server.stop()
    healthz = results["healthz"][0]
    for case, (rate, p99, bad) in results.items():
        suffix = f" non_2xx={bad}" if bad else ""
        print(
            f"case={case} connections={args.connections} ops_per_s={rate:.0f} "
            f"ratio_vs_healthz={rate / healthz:.2f} p99_ms={p99:.1f}{suffix}"
        )
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"case=start_open_loop offered_per_s={args.rate:.0f} requests={len(latencies)} p50_ms={p50:.1f} p99_ms={p99:.1f}"
    )
    print(f"# catalog {load_catalog().version}; server log: {log}", file=sys.stderr)
    db.dispose()


if __name__ == "__main__":
    main()
