"""Statements that are their own transaction on PostgreSQL, in one round trip, and the write
combiner that lets overlapping ones of one wallet share a commit (decisions 0023, 0028, 0051).

:class:`AutocommitWrites` is the part of :class:`~chronote_billing.core.db.Database` that
works below SQLAlchemy, straight through libpq: a pool of autocommit connections, statements
prepared once per connection and run by name with text arguments (:class:`ServerStatement`,
:func:`text_argument`), a pipelined transaction of several such calls, and the replacement of
the pool after its server was lost. The ledger's and the usage path's database functions run
through it; everything else uses ``Database.write``.
"""

from __future__ import annotations

import json
import random
import select
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import structlog
from psycopg import Connection as PgConnection
from psycopg import errors, pq
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from .clock import as_utc
from .db_failures import is_retryable, server_lost

log = structlog.get_logger(__name__)

_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_PIPELINE_ABORTED = pq.ExecStatus.PIPELINE_ABORTED


@dataclass(frozen=True)
class ServerStatement:
    """A statement the server prepares once per connection and then runs by name.

    ``sql`` uses ``$1``, ``$2`` ... placeholders; arguments travel as text and the statement
    casts them to its types.
    """

    name: str
    sql: str

    @cached_property
    def name_bytes(self) -> bytes:
        return self.name.encode()


class AutocommitWrites:
    """One-round-trip statements beside the engine's transactions (PostgreSQL only).

    Mixed into ``Database``, which provides ``engine`` and calls :meth:`_init_autocommit`.
    """

    engine: Engine

    def _init_autocommit(self) -> None:
        # Statements prepared on each autocommit connection, by name.
        self._prepared: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
        # The autocommit pool is replaced after its database was lost (decision 0051); no new one
        # is tried before this monotonic time.
        self._autocommit_pool_lock = threading.Lock()
        self._autocommit_attempt_after = 0.0

    @cached_property
    def _autocommit_pool(self) -> ConnectionPool:
        # Connections of their own, kept in autocommit: nothing to switch on checkout and nothing
        # to roll back on return. psycopg's own pool: taking and returning a connection costs a
        # fraction of what the engine's pool does, on the path where it is paid twice per hold.
        conninfo = self._autocommit_conninfo()
        self._attempt_autocommit_connection(conninfo)
        return ConnectionPool(
            conninfo,
            min_size=1,
            max_size=40,
            timeout=10,
            kwargs={"autocommit": True},
            name="chronote-autocommit",
            open=True,
        )

    @cached_property
    def _combiner(self) -> _WriteCombiner:
        return _WriteCombiner(self)

    def open_autocommit_connections(self, count: int) -> None:
        """Have at least ``count`` autocommit connections open, so that ``count`` concurrent
        callers find one ready instead of waiting for a connection to be made. PostgreSQL only."""
        pool = self._autocommit_pool
        taken = [pool.getconn() for _ in range(count)]
        for conn in taken:
            pool.putconn(conn)

    def run_autocommit(
        self,
        statement: ServerStatement,
        args: Sequence[str | None],
        attempts: int = 8,
        group: str | None = None,
    ) -> str | None:
        """One statement that is its own transaction, committed by the server as it finishes (one
        round trip); returns the first column of its first row as text. PostgreSQL only.

        With a ``group``, calls of this process that overlap in time share one transaction
        (decision 0028): callers that arrive while a call of their group is in flight queue, and
        the next of them runs the queue as one pipelined transaction. Each caller still gets its
        own result or its own error. Grouped statements must be idempotent (the ledger's carry
        their keys): when a combined transaction fails, or its connection is lost after the
        commit was sent, each of its statements runs again alone.

        The statement is prepared once per pooled connection and then run by name with text
        arguments straight through libpq: on the ledger's hottest writes the driver's per-call
        query handling cost as much client time as the rest of the request (docs/performance.md).
        Driver errors surface as SQLAlchemy's ``DBAPIError`` family, as from ``write``, and lock
        conflicts are retried the same way.
        """
        if group is not None:
            return self._combiner.run(group, statement, args)
        return self._run_alone(statement, args, attempts)

    def _run_alone(
        self, statement: ServerStatement, args: Sequence[str | None], attempts: int = 8
    ) -> str | None:
        pool = self._autocommit_pool
        values = _as_bytes(args)
        for attempt in range(1, attempts + 1):
            conn = pool.getconn()
            try:
                pgconn = conn.pgconn
                prepared = self._prepare(conn, [statement])
                # None sends NULL; libpq takes it, though psycopg's stub does not say so.
                result = pgconn.exec_prepared(statement.name_bytes, values)  # type: ignore[arg-type]
                if result.status != _TUPLES_OK:
                    if result.error_field(pq.DiagnosticField.SQLSTATE) == b"26000":
                        prepared.discard(statement.name)  # gone from the session: prepare again
                    raise errors.error_from_result(result)
                value = result.get_value(0, 0) if result.ntuples else None
                return None if value is None else bytes(value).decode()
            except errors.Error as exc:
                if server_lost(exc):
                    self._discard_autocommit_pool(pool, conn)
                error = DBAPIError.instance(
                    statement.sql, list(args), exc, errors.Error, connection_invalidated=conn.broken
                )
                retry = is_retryable(error) or exc.sqlstate == "26000"
                if attempt == attempts or not retry:
                    raise error from exc
            finally:
                pool.putconn(conn)  # a broken connection is closed and replaced by the pool
            time.sleep(min(0.2, 0.002 * 2**attempt) * random.random())
        raise AssertionError("unreachable")

    def _prepare(self, conn: PgConnection[Any], statements: Sequence[ServerStatement]) -> set[str]:
        """Prepare on ``conn`` whichever of ``statements`` it has not prepared yet; the names it
        has prepared."""
        prepared = self._prepared.get(conn)
        if prepared is None:
            prepared = self._prepared[conn] = set()
        for statement in statements:
            if statement.name not in prepared:
                result = conn.pgconn.prepare(statement.name_bytes, statement.sql.encode())
                if result.status != _COMMAND_OK:
                    raise errors.error_from_result(result)
                prepared.add(statement.name)
        return prepared

    def run_in_one_transaction(
        self, calls: Sequence[tuple[ServerStatement, Sequence[str | None]]]
    ) -> list[str | None]:
        """``calls`` in order as one transaction, sent as one pipeline (one round trip, one
        commit); the first column of each one's first row as text. PostgreSQL only.

        Any failure raises, once the transaction has rolled back: then none of the calls took
        effect. Nothing here retries; the caller decides (the write combiner runs each call
        again alone).
        """
        pool = self._autocommit_pool
        conn = pool.getconn()
        pgconn = conn.pgconn
        try:
            prepared = self._prepare(conn, [statement for statement, _ in calls])
            pgconn.enter_pipeline_mode()
            try:
                pgconn.send_query_params(b"BEGIN", None)
                for statement, args in calls:
                    pgconn.send_query_prepared(statement.name_bytes, _as_bytes(args))  # type: ignore[arg-type]
                pgconn.send_query_params(b"COMMIT", None)
                pgconn.pipeline_sync()
                _flush(pgconn)
                # Each query's results end with None; the sync's result ends the pipeline.
                outcomes: list[pq.abc.PGresult] = []
                ended = False  # the last call returned None: one query's results are complete
                while True:
                    result = _next_result(pgconn)
                    if result is None:
                        if ended or pgconn.status == pq.ConnStatus.BAD:  # nothing more will come
                            raise errors.OperationalError("the connection ended mid-pipeline")
                        ended = True
                        continue
                    ended = False
                    if result.status == pq.ExecStatus.PIPELINE_SYNC:
                        break
                    outcomes.append(result)
            finally:
                pgconn.exit_pipeline_mode()
            failed = next(
                (r for r in outcomes if r.status not in (_COMMAND_OK, _TUPLES_OK, _PIPELINE_ABORTED)), None
            )
            if failed is not None or any(r.status == _PIPELINE_ABORTED for r in outcomes):
                if pgconn.transaction_status != pq.TransactionStatus.IDLE:
                    pgconn.exec_(b"ROLLBACK")
                if failed is not None and failed.error_field(pq.DiagnosticField.SQLSTATE) == b"26000":
                    prepared.clear()  # the session lost its statements: prepare them again next time
                raise (
                    errors.error_from_result(failed)
                    if failed is not None
                    else errors.InternalError("the combined transaction was aborted")
                )
            if len(outcomes) != len(calls) + 2:
                raise errors.InternalError(f"{len(outcomes)} results for {len(calls)} statements")
            values_out: list[str | None] = []
            for result in outcomes[1:-1]:  # between BEGIN and COMMIT
                value = result.get_value(0, 0) if result.ntuples else None
                values_out.append(None if value is None else bytes(value).decode())
            return values_out
        except Exception as exc:
            if server_lost(exc):
                self._discard_autocommit_pool(pool, conn)
            elif pgconn.pipeline_status != pq.PipelineStatus.OFF or pgconn.transaction_status not in (
                pq.TransactionStatus.IDLE,
                pq.TransactionStatus.UNKNOWN,
            ):
                conn.close()  # left mid-pipeline or mid-transaction: the pool replaces it
            raise
        finally:
            pool.putconn(conn)

    # ---------------------------------------------------------------- reconnection (decision 0051)

    # While the database is away, a new autocommit pool is tried at most this often; callers in
    # between fail at once instead of waiting for a pool that cannot connect.
    AUTOCOMMIT_REATTEMPT_SECONDS = 0.2

    def _autocommit_conninfo(self) -> str:
        """libpq's connection string for the engine's URL, every host of a multi-host URL included
        (the dialect turns SQLAlchemy's ``?host=a:1&host=b:2`` into libpq's ``host=a,b port=1,2``)."""
        _, params = self.engine.dialect.create_connect_args(self.engine.url)
        return make_conninfo("", **{k: v for k, v in params.items() if isinstance(v, str | int)})

    def _attempt_autocommit_connection(self, conninfo: str) -> None:
        """One direct connection before a pool is opened: a pool whose database is away would
        make every caller wait for its timeout. Raises psycopg's OperationalError when the
        database cannot be reached, at once when it could not be a moment ago."""
        with self._autocommit_pool_lock:
            now = time.monotonic()
            if now < self._autocommit_attempt_after:
                raise errors.OperationalError("the database could not be reached a moment ago")
            self._autocommit_attempt_after = now + self.AUTOCOMMIT_REATTEMPT_SECONDS
        PgConnection.connect(conninfo, autocommit=True).close()
        with self._autocommit_pool_lock:
            self._autocommit_attempt_after = 0.0

    def _discard_autocommit_pool(self, pool: ConnectionPool, conn: PgConnection[Any]) -> None:
        """``conn`` failed because its server is gone or read-only: so are the pool's other
        connections. Close it, set the pool aside (closed in the background; connections still
        out are closed as they come back) and let the next caller open a new one."""
        conn.close()
        with self._autocommit_pool_lock:
            if self.__dict__.get("_autocommit_pool") is not pool:
                return  # another caller already replaced it
            del self.__dict__["_autocommit_pool"]
        log.warning("db.autocommit_pool_discarded", reason="server lost")
        threading.Thread(target=pool.close, name="chronote-autocommit-close", daemon=True).start()

    def _close_autocommit(self) -> None:
        if "_autocommit_pool" in self.__dict__:
            self._autocommit_pool.close()
            del self.__dict__["_autocommit_pool"]
            self._prepared.clear()


def _as_bytes(args: Sequence[str | None]) -> list[bytes | None]:
    """Text arguments as libpq takes them; None sends NULL."""
    return [None if arg is None else arg.encode() for arg in args]


def _flush(pgconn: pq.abc.PGconn) -> None:
    """Send everything queued on a non-blocking connection, waiting on its socket (the wait
    releases the interpreter lock)."""
    while pgconn.flush() == 1:
        select.select([pgconn.socket], [pgconn.socket], [])
        pgconn.consume_input()  # read what the server sends meanwhile, so it never waits on us


def _next_result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    """The connection's next result. libpq's own wait would hold the interpreter lock, and a
    thread of this process that the server is waiting for (one holding a row lock in another
    transaction) could then never run: wait on the socket instead."""
    pgconn.consume_input()
    while pgconn.is_busy():
        select.select([pgconn.socket], [], [])
        pgconn.consume_input()
    return pgconn.get_result()


class _PendingWrite:
    """One caller's statement waiting in its group's queue."""

    __slots__ = ("statement", "args", "finished", "leads", "result", "error")

    def __init__(self, statement: ServerStatement, args: Sequence[str | None]) -> None:
        self.statement = statement
        self.args = args
        self.finished = threading.Event()
        self.leads = False  # woken to run the queue rather than with its result
        self.result: str | None = None
        self.error: BaseException | None = None


class _WriteCombiner:
    """Runs overlapping autocommit writes of one group as one transaction (decision 0028).

    One caller per group leads at a time. It runs the queue (its own write first, then whatever
    arrived behind it, up to ``MAX_BATCH``), hands every caller its outcome, and passes the lead
    to the first caller still queued. A group of one runs exactly as an ungrouped call.
    """

    MAX_BATCH = 32

    def __init__(self, db: AutocommitWrites) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._queues: dict[str, list[_PendingWrite]] = {}
        self.combined_transactions = 0  # observability: transactions that carried 2+ writes
        self.combined_writes = 0

    def run(self, group: str, statement: ServerStatement, args: Sequence[str | None]) -> str | None:
        mine = _PendingWrite(statement, args)
        with self._lock:
            queue = self._queues.get(group)
            leading = queue is None
            if queue is None:
                queue = self._queues[group] = []
            queue.append(mine)
        if not leading:
            mine.finished.wait()
            leading = mine.leads
        if leading:
            with self._lock:
                batch = queue[: self.MAX_BATCH]
                del queue[: self.MAX_BATCH]
            try:
                self._run(batch)
            finally:
                with self._lock:
                    if queue:
                        queue[0].leads = True
                        queue[0].finished.set()
                    else:
                        del self._queues[group]
                for pending in batch:
                    if pending is not mine:
                        pending.finished.set()
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _run(self, batch: list[_PendingWrite]) -> None:
        if len(batch) > 1:
            try:
                results = self._run_together(batch)
            except Exception as exc:  # noqa: BLE001 - any failure: each write runs again alone
                log.warning("db.combined_transaction_failed", writes=len(batch), error=type(exc).__name__)
            else:
                for pending, result in zip(batch, results, strict=True):
                    pending.result = result
                with self._lock:
                    self.combined_transactions += 1
                    self.combined_writes += len(batch)
                return
        # Alone: a group of one, or a combined transaction that rolled back as a whole (nothing
        # of it was applied, so running each write again is exact).
        for pending in batch:
            try:
                pending.result = self.db._run_alone(pending.statement, pending.args)
            except Exception as exc:  # noqa: BLE001 - handed to its own caller
                pending.error = exc

    def _run_together(self, batch: list[_PendingWrite]) -> list[str | None]:
        return self.db.run_in_one_transaction([(pending.statement, pending.args) for pending in batch])


def json_argument(value: Any) -> str:
    """A JSON argument's text; a result document (a view) is serialized by pydantic in one step."""
    return value.model_dump_json() if isinstance(value, BaseModel) else json.dumps(value)


def text_argument(value: Any, sql_type: str) -> str | None:
    """An argument as PostgreSQL's text input for ``sql_type``, for statements run by name."""
    if value is None:
        return None
    if sql_type in ("jsonb", "json"):
        return json_argument(value)
    if sql_type == "boolean":
        return "true" if value else "false"
    if sql_type == "timestamptz":
        return str(as_utc(value).isoformat())
    if sql_type == "text[]":
        return (
            "{" + ",".join('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in value) + "}"
        )
    return str(value)
