"""Database engine, declarative base and the unit of work.

Every write runs in one transaction through :func:`Database.write`, which on SQLite starts
with ``BEGIN IMMEDIATE`` (Python's sqlite3 would otherwise begin nothing before a SELECT, and
two spends could both read the same balance) and on PostgreSQL retries deadlocks and
serialization failures a bounded number of times.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import JSON, BigInteger, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
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


class Database:
    """Owns the engine and hands out transactions (the unit of work)."""

    def __init__(self, url: str | None = None, engine: Engine | None = None) -> None:
        self.url = url or get_settings().database_url
        self.engine = engine or make_engine(self.url)
        self._sessions = sessionmaker(bind=self.engine, expire_on_commit=False, autoflush=False)
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
    def _autocommit_engine(self) -> Engine:
        # A pool of its own whose connections stay in autocommit: nothing to switch on checkout
        # and nothing to roll back on return.
        url = self.engine.url.render_as_string(hide_password=False)
        return make_engine(url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None)

    def run_autocommit(self, sql: str, params: dict[str, Any], attempts: int = 8) -> Any:
        """One statement that is its own transaction, committed by the server as it finishes (one
        round trip), run at the driver level; returns its scalar result. PostgreSQL only.

        Driver errors surface as SQLAlchemy's ``DBAPIError`` family, as from ``write``, and lock
        conflicts are retried the same way.
        """
        engine = self._autocommit_engine
        for attempt in range(1, attempts + 1):
            conn = engine.raw_connection()
            try:
                cursor = conn.cursor()
                cursor.execute(sql, params, prepare=True)  # type: ignore[call-arg]  # psycopg: prepared on the server
                row = cursor.fetchone()
                cursor.close()
                return None if row is None else row[0]
            except engine.dialect.loaded_dbapi.Error as exc:
                broken = bool(getattr(conn.dbapi_connection, "closed", False))
                if broken:
                    conn.invalidate(exc)
                error = DBAPIError.instance(
                    sql, params, exc, engine.dialect.loaded_dbapi.Error, connection_invalidated=broken
                )
                if attempt == attempts or not _is_retryable(error):
                    raise error from exc
            finally:
                conn.close()
            time.sleep(min(0.2, 0.002 * 2**attempt) * random.random())
        raise AssertionError("unreachable")

    def read(self, work: Callable[[Session], T]) -> T:
        with self.session(readonly=True) as session:
            return work(session)

    def dispose(self) -> None:
        self.engine.dispose()
        if "_autocommit_engine" in self.__dict__:
            self._autocommit_engine.dispose()


_default: Database | None = None


def get_database() -> Database:
    global _default
    if _default is None:
        _default = Database()
    return _default


def set_database(db: Database | None) -> None:
    global _default
    _default = db
