"""Prometheus metrics (decision 0036): requests, ledger operations, combined commits, pools, and
the outbox and Stripe webhooks as the database sees them.

Counters and histograms are prometheus-client's. With ``PROMETHEUS_MULTIPROC_DIR`` set before
this module is imported (several uvicorn workers), each process writes its samples to files in
that directory and a scrape of any worker sums them all; without it they live in memory. The
variable is read by prometheus-client when it is first imported, which is why ``serve`` sets it
before the workers start (:func:`prepare_multiprocess_directory`).

Per-process facts (the write combiner's counters, connection pools) are copied into metrics by
:class:`ProcessSampler`; facts of the whole system (outbox, Stripe events) are read from the
database at scrape time by :class:`DatabaseCollector`, in the scraping process only.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, or_, select

from chronote_billing.container import Container
from chronote_billing.core.db import Database
from chronote_billing.notifications.models import OutboxEntry
from chronote_billing.stripe_sync.models import StripeEvent

log = structlog.get_logger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A Stripe event stored this long ago and still not applied failed its application.
UNAPPLIED_AFTER = timedelta(minutes=5)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


# Registered here only for the in-memory (one process) case; in multiprocess mode the values
# go to files and the scrape collects them from there.
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "chronote_http_requests",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
    registry=PROCESS_REGISTRY,
)
HTTP_DURATION = Histogram(
    "chronote_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=PROCESS_REGISTRY,
)
HTTP_PROBLEMS = Counter(
    "chronote_http_problems",
    "Problem responses by route template and problem code.",
    ["route", "code"],
    registry=PROCESS_REGISTRY,
)
LEDGER_OPERATIONS = Counter(
    "chronote_ledger_operations",
    "Requests that move or reserve credits, by operation and result (ok, declined, rejected, error).",
    ["operation", "result"],
    registry=PROCESS_REGISTRY,
)
LEDGER_DECLINES = Counter(
    "chronote_ledger_declines",
    "Declined credit operations (402) by operation and code.",
    ["operation", "code"],
    registry=PROCESS_REGISTRY,
)
COMBINED_TRANSACTIONS = Counter(
    "chronote_db_combined_transactions",
    "Transactions that carried two or more ledger writes to one wallet (decision 0028).",
    registry=PROCESS_REGISTRY,
)
COMBINED_WRITES = Counter(
    "chronote_db_combined_writes",
    "Ledger writes committed as part of a combined transaction.",
    registry=PROCESS_REGISTRY,
)
POOL_CONNECTIONS = Gauge(
    "chronote_db_pool_connections",
    "Database connections by pool (engine, autocommit) and state (in_use, idle), summed over processes.",
    ["pool", "state"],
    multiprocess_mode="livesum",
    registry=PROCESS_REGISTRY,
)
POOL_WAITING = Gauge(
    "chronote_db_pool_waiting",
    "Requests waiting for a connection of the autocommit pool, summed over processes.",
    ["pool"],
    multiprocess_mode="livesum",
    registry=PROCESS_REGISTRY,
)

# The routes that move or reserve credits: (method, route template) -> operation.
CREDIT_OPERATIONS: dict[tuple[str, str], str] = {
    ("POST", "/v1/accounts/{account_id}/grants"): "grant.issue",
    ("POST", "/v1/accounts/{account_id}/holds"): "hold.place",
    ("POST", "/v1/holds/{hold_id}/extend"): "hold.extend",
    ("POST", "/v1/holds/{hold_id}/capture"): "hold.capture",
    ("POST", "/v1/holds/{hold_id}/release"): "hold.release",
    ("POST", "/v1/recordings"): "recording.start",
    ("POST", "/v1/recordings/{recording_id}/extend"): "recording.extend",
    ("POST", "/v1/recordings/{recording_id}/finish"): "recording.finish",
    ("POST", "/v1/recordings/{recording_id}/cancel"): "recording.cancel",
    ("POST", "/v1/recordings/{recording_id}/fail"): "recording.fail",
    ("POST", "/v1/usage/events"): "usage.event",
}


# Label children by key: `labels()` takes a lock and builds a tuple on every call; the request
# path asks for the same few children over and over.
_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(method: str, route: str, status: int, seconds: float, problem_code: str | None) -> None:
    """Count one answered request (called once per request by the request middleware)."""
    children = _request_children.get((method, route, status))
    if children is None:
        children = (HTTP_REQUESTS.labels(method, route, str(status)), HTTP_DURATION.labels(method, route))
        _request_children[(method, route, status)] = children
    children[0].inc()
    children[1].observe(seconds)
    if problem_code is not None:
        HTTP_PROBLEMS.labels(route, problem_code).inc()
    operation = CREDIT_OPERATIONS.get((method, route))
    if operation is not None:
        if status < 400:
            result = "ok"
        elif status == 402:
            result = "declined"
            LEDGER_DECLINES.labels(operation, problem_code or "unknown").inc()
        elif status < 500:
            result = "rejected"
        else:
            result = "error"
        LEDGER_OPERATIONS.labels(operation, result).inc()


# ---------------------------------------------------------------------------- per process


class ProcessSampler:
    """Copies one process's own counters and pool states into metrics: at every scrape of this
    process, and every ``interval`` seconds from a daemon thread when several processes share
    the metrics (so a scrape of another worker sees this one's values)."""

    def __init__(self, db: Database, interval: float = 2.0) -> None:
        self.db = db
        self.interval = interval
        self._lock = threading.Lock()
        self._seen_transactions = 0
        self._seen_writes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        with self._lock:
            combiner = self.db.__dict__.get("_combiner")  # made on first grouped write
            if combiner is not None:
                transactions, writes = combiner.combined_transactions, combiner.combined_writes
                if transactions > self._seen_transactions:
                    COMBINED_TRANSACTIONS.inc(transactions - self._seen_transactions)
                if writes > self._seen_writes:
                    COMBINED_WRITES.inc(writes - self._seen_writes)
                self._seen_transactions, self._seen_writes = transactions, writes
            pool = self.db.engine.pool
            checked_out = getattr(pool, "checkedout", None)
            checked_in = getattr(pool, "checkedin", None)
            if callable(checked_out) and callable(checked_in):
                POOL_CONNECTIONS.labels("engine", "in_use").set(checked_out())
                POOL_CONNECTIONS.labels("engine", "idle").set(checked_in())
            autocommit = self.db.__dict__.get("_autocommit_pool")  # PostgreSQL, made on first use
            if autocommit is not None:
                stats = autocommit.get_stats()
                size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
                POOL_CONNECTIONS.labels("autocommit", "in_use").set(size - available)
                POOL_CONNECTIONS.labels("autocommit", "idle").set(available)
                POOL_WAITING.labels("autocommit").set(stats.get("requests_waiting", 0))

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="chronote-metrics-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failed sample must not end the sampling
                log.warning("metrics_sample_failed", exc_info=True)


# ---------------------------------------------------------------------------- the database


class DatabaseCollector(Collector):
    """Outbox backlog and failures, Stripe webhook lag and unapplied events, read at scrape time
    (each a query on an index; migration 0009)."""

    def __init__(self, container: Container) -> None:
        self.container = container

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("chronote_database_up", "1 when the scrape's database queries succeeded.")
        try:
            values = self.container.db.read(self._read)
        except Exception as exc:  # noqa: BLE001 - the scrape reports the outage instead of failing
            log.warning("metrics_database_unavailable", error_type=type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for name, documentation, value in values:
            family = GaugeMetricFamily(name, documentation)
            family.add_metric([], value)
            yield family

    def _read(self, session: Any) -> list[tuple[str, str, float]]:
        now = self.container.clock.now()
        pending = OutboxEntry.next_attempt_at.is_not(None)  # pending rows are due at a time
        pending_count, failing, oldest = session.execute(
            select(
                func.count(),
                func.count().filter(OutboxEntry.attempts > 0),
                func.min(OutboxEntry.created_at),
            ).where(pending)
        ).one()
        dead = session.execute(select(func.count()).where(OutboxEntry.dead_at.is_not(None))).scalar_one()
        hour_ago = now - timedelta(hours=1)
        recent = session.execute(
            select(StripeEvent.created, StripeEvent.received_at)
            .where(StripeEvent.received_at >= hour_ago)
            .order_by(StripeEvent.received_at.desc())
            .limit(1000)
        ).all()
        lag = max((max(0.0, received.timestamp() - created) for created, received in recent), default=0.0)
        # No account known for them, or stored and still not applied five minutes on (decision 0056).
        unapplied = session.execute(
            select(func.count()).where(
                StripeEvent.received_at >= now - timedelta(hours=24),
                or_(
                    StripeEvent.outcome == "unknown_account",
                    and_(StripeEvent.outcome == "received", StripeEvent.received_at <= now - UNAPPLIED_AFTER),
                ),
            )
        ).scalar_one()
        oldest_age = 0.0
        if oldest is not None:
            oldest_age = max(0.0, (now - oldest).total_seconds())
        return [
            ("chronote_outbox_pending", "Outbox rows not yet delivered (and not dead).", pending_count),
            ("chronote_outbox_failing", "Pending outbox rows that failed at least one attempt.", failing),
            ("chronote_outbox_dead", "Outbox rows out of attempts, kept for operators.", dead),
            (
                "chronote_outbox_oldest_pending_age_seconds",
                "Age of the oldest pending outbox row (0 when none).",
                oldest_age,
            ),
            (
                "chronote_stripe_webhook_lag_seconds",
                "Largest delay between Stripe creating an event and our storing and applying it, over the last hour.",
                lag,
            ),
            (
                "chronote_stripe_events_unapplied",
                "Stripe events stored in the last 24 hours but not applied (no account known for them, or "
                "their application failed and Stripe has not delivered them again).",
                unapplied,
            ),
        ]


class _Forward(Collector):
    """Collects another registry (the in-memory process metrics) into a scrape's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


def render(container: Container, sampler: ProcessSampler) -> bytes:
    """The text of one scrape."""
    sampler.sample()
    registry = CollectorRegistry()
    if multiprocess_mode():
        _forget_exited_processes()
        prometheus_multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward(PROCESS_REGISTRY))
    registry.register(DatabaseCollector(container))
    return generate_latest(registry)


# ---------------------------------------------------------------------------- several processes

_LIVE_FILE = re.compile(r"_live[a-z]+_(\d+)\.db$")


def _forget_exited_processes() -> None:
    """Per-process gauges of processes that exited (a restarted worker) must not be summed."""
    directory = os.environ.get(MULTIPROC_ENV, "")
    pids = {
        int(m.group(1))
        for path in glob.glob(os.path.join(directory, "*.db"))
        if (m := _LIVE_FILE.search(path))
    }
    for pid in pids:
        if not _alive(pid):
            prometheus_multiprocess.mark_process_dead(pid, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_this_process_exited() -> None:
    if multiprocess_mode():
        prometheus_multiprocess.mark_process_dead(os.getpid(), os.environ[MULTIPROC_ENV])


def prepare_multiprocess_directory(workers: int) -> str | None:
    """Before uvicorn starts ``workers`` processes: make sure they share an empty metrics
    directory (one made in the temporary directory when several workers are asked for and none
    is configured). Returns the directory, or None for one process without one."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        if workers <= 1:
            return None
        directory = tempfile.mkdtemp(prefix="chronote-metrics-")
        os.environ[MULTIPROC_ENV] = directory
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)
    return directory


def remove_directory(directory: str | None) -> None:
    if directory and directory.startswith(tempfile.gettempdir()):
        shutil.rmtree(directory, ignore_errors=True)
