"""Database engine, declarative base and the unit of work.

Every write runs in one transaction through :func:`Database.write`, which on SQLite starts
with ``BEGIN IMMEDIATE`` (Python's sqlite3 would otherwise begin nothing before a SELECT, and
two spends could both read the same balance) and on PostgreSQL retries deadlocks and
serialization failures a bounded number of times.

The one-round-trip autocommit statements and the write combiner that ``Database`` also offers on
PostgreSQL live in ``write_combiner``; what a failure means (retry, server lost) in
``db_failures``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import JSON, BigInteger, DateTime, Engine, MetaData, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from chronote_billing.config import get_settings

from .clock import as_utc
from .db_failures import classify_database_failure as classify_database_failure
from .db_failures import is_retryable, server_lost
from .write_combiner import AutocommitWrites

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


def _drop_connections_to_lost_servers(engine: Engine) -> None:
    """SQLAlchemy discards a connection whose socket broke, with every pooled connection older
    than it; have it do the same when the server ended the session or turned read-only under an
    open connection (decision 0051). Runs only when a statement fails: no cost per transaction."""

    @event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> None:
        if not context.is_disconnect and server_lost(context.original_exception):
            context.is_disconnect = True


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
    engine = create_engine(url, **kwargs)
    _drop_connections_to_lost_servers(engine)
    return engine


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


class Database(AutocommitWrites):
    """Owns the engine and hands out transactions (the unit of work); on PostgreSQL also the
    one-round-trip autocommit statements (:class:`AutocommitWrites`)."""

    def __init__(self, url: str | None = None, engine: Engine | None = None) -> None:
        self.url = url or get_settings().database_url
        self.engine = engine or make_engine(self.url)
        self._sessions = sessionmaker(bind=self.engine, expire_on_commit=False, autoflush=False)
        self._read_sessions = sessionmaker(
            bind=self.engine.execution_options(chronote_readonly=True),
            expire_on_commit=False,
            autoflush=False,
        )
        self._init_autocommit()

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
                if attempt == attempts or not is_retryable(exc):
                    raise
                time.sleep(min(0.2, 0.002 * 2**attempt) * random.random())
        raise AssertionError("unreachable")

    def read(self, work: Callable[[Session], T]) -> T:
        with self.session(readonly=True) as session:
            return work(session)

    def dispose(self) -> None:
        self.engine.dispose()
        self._close_autocommit()


_default: Database | None = None


def get_database() -> Database:
    global _default
    if _default is None:
        _default = Database()
    return _default


def set_database(db: Database | None) -> None:
    global _default
    _default = db
