"""Database engine, declarative base and the unit of work.

Every write runs in one transaction through :func:`Database.write`, which on SQLite starts
with ``BEGIN IMMEDIATE`` (Python's sqlite3 would otherwise begin nothing before a SELECT, and
two spends could both read the same balance) and on PostgreSQL retries deadlocks and
serialization failures a bounded number of times.
"""

from __future__ import annotations

import random
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from psycopg import errors, pq
from psycopg_pool import ConnectionPool
from sqlalchemy import JSON, BigInteger, DateTime, Engine, MetaData, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from chronote_billing.config import get_settings

from .clock import as_utc

T = TypeVar("T")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT everywhere for money; SQLite only autoincrements INTEGER PRIMARY KEY.
BigInt = BigInteger().with_variant(sqlite.INTEGER(), "sqlite")
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_RETRYABLE_PG_STATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate in _RETRYABLE_PG_STATES:
            return True
        if isinstance(exc, OperationalError) and "database is locked" in str(orig):
            return True
    return False


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("chronote_readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 20)
    # No pre-ping: it costs a round trip on every transaction. Connections are recycled before
    # server-side timeouts instead, and a connection that died anyway fails its transaction,
    # which `Database.write` does not retry (the caller's idempotency key makes its retry safe).
    kwargs.setdefault("pool_recycle", 1800)
    return create_engine(url, **kwargs)


def recreate_postgres_database(base_url: str, name: str) -> str:
    """Drop and create database ``name`` on the server of ``base_url``; returns its URL.

    For throwaway databases (a test process's, the benchmark's) beside the configured one.
    """
    url = make_url(base_url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


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


class Database:
    """Owns the engine and hands out transactions (the unit of work)."""

    def __init__(self, url: str | None = None, engine: Engine | None = None) -> None:
        self.url = url or get_settings().database_url
        self.engine = engine or make_engine(self.url)
        self._sessions = sessionmaker(bind=self.engine, expire_on_commit=False, autoflush=False)
        # Statements prepared on each autocommit connection, by name.
        self._prepared: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
        self._read_sessions = sessionmaker(
            bind=self.engine.execution_options(chronote_readonly=True),
            expire_on_commit=False,
            autoflush=False,
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self, readonly: bool = False) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception."""
        factory = self._read_sessions if readonly else self._sessions
        with factory() as session, session.begin():
            yield session

    def write(self, work: Callable[[Session], T], attempts: int = 8) -> T:
        """Run ``work`` in a write transaction, retrying lock conflicts with jittered backoff."""
        for attempt in range(1, attempts + 1):
            try:
                with self.session() as session:
                    return work(session)
            except DBAPIError as exc:
                if attempt == attempts or not _is_retryable(exc):
                    raise
                time.sleep(min(0.2, 0.002 * 2**attempt) * random.random())
        raise AssertionError("unreachable")

    @cached_property
    def _autocommit_pool(self) -> ConnectionPool:
        # Connections of their own, kept in autocommit: nothing to switch on checkout and nothing
        # to roll back on return. psycopg's own pool: taking and returning a connection costs a
        # fraction of what the engine's pool does, on the path where it is paid twice per hold.
        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        return ConnectionPool(
            conninfo,
            min_size=1,
            max_size=40,
            timeout=10,
            kwargs={"autocommit": True},
            name="chronote-autocommit",
            open=True,
        )

    def open_autocommit_connections(self, count: int) -> None:
        """Have at least ``count`` autocommit connections open, so that ``count`` concurrent
        callers find one ready instead of waiting for a connection to be made. PostgreSQL only."""
        pool = self._autocommit_pool
        taken = [pool.getconn() for _ in range(count)]
        for conn in taken:
            pool.putconn(conn)

    def run_autocommit(
        self, statement: ServerStatement, args: Sequence[str | None], attempts: int = 8
    ) -> str | None:
        """One statement that is its own transaction, committed by the server as it finishes (one
        round trip); returns the first column of its first row as text. PostgreSQL only.

        The statement is prepared once per pooled connection and then run by name with text
        arguments straight through libpq: on the ledger's hottest writes the driver's per-call
        query handling cost as much client time as the rest of the request (docs/performance.md).
        Driver errors surface as SQLAlchemy's ``DBAPIError`` family, as from ``write``, and lock
        conflicts are retried the same way.
        """
        pool = self._autocommit_pool
        values = [None if arg is None else arg.encode() for arg in args]
        for attempt in range(1, attempts + 1):
            conn = pool.getconn()
            try:
                pgconn = conn.pgconn
                prepared = self._prepared.get(conn)
                if prepared is None:
                    prepared = self._prepared[conn] = set()
                if statement.name not in prepared:
                    result = pgconn.prepare(statement.name_bytes, statement.sql.encode())
                    if result.status != _COMMAND_OK:
                        raise errors.error_from_result(result)
                    prepared.add(statement.name)
                # None sends NULL; libpq takes it, though psycopg's stub does not say so.
                result = pgconn.exec_prepared(statement.name_bytes, values)  # type: ignore[arg-type]
                if result.status != _TUPLES_OK:
                    if result.error_field(pq.DiagnosticField.SQLSTATE) == b"26000":
                        prepared.discard(statement.name)  # gone from the session: prepare again
                    raise errors.error_from_result(result)
                value = result.get_value(0, 0) if result.ntuples else None
                return None if value is None else bytes(value).decode()
            except errors.Error as exc:
                error = DBAPIError.instance(
                    statement.sql, list(args), exc, errors.Error, connection_invalidated=conn.broken
                )
                retry = _is_retryable(error) or exc.sqlstate == "26000"
                if attempt == attempts or not retry:
                    raise error from exc
            finally:
                pool.putconn(conn)  # a broken connection is closed and replaced by the pool
            time.sleep(min(0.2, 0.002 * 2**attempt) * random.random())
        raise AssertionError("unreachable")

    def read(self, work: Callable[[Session], T]) -> T:
        with self.session(readonly=True) as session:
            return work(session)

    def dispose(self) -> None:
        self.engine.dispose()
        if "_autocommit_pool" in self.__dict__:
            self._autocommit_pool.close()
            del self.__dict__["_autocommit_pool"]
            self._prepared.clear()


_default: Database | None = None


def get_database() -> Database:
    global _default
    if _default is None:
        _default = Database()
    return _default


def set_database(db: Database | None) -> None:
    global _default
    _default = db
