"""A database that cannot take requests: 503 problem+json with Retry-After, never a 500
(decision 0050), and connections to a lost or read-only server dropped from both pools without
a check per transaction (decision 0051).

The unreachable database is a real one: a PostgreSQL URL on a port nobody listens on. The
read-only and terminated sessions are made on the test's own PostgreSQL database.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import replace

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import errors
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from chronote_billing.api.app import create_app
from chronote_billing.config import Settings, normalize_database_url
from chronote_billing.container import Container
from chronote_billing.core.clock import ManualClock
from chronote_billing.core.db import Database, classify_database_failure, make_engine
from chronote_billing.core.migrate import alembic_config
from chronote_billing.core.write_combiner import ServerStatement
from tests.factories import free_port

UNREACHABLE = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere?connect_timeout=2"
PID = ServerStatement("unavailable_pid", "SELECT pg_backend_pid()::text || $1::text")


def wrapped(exc: Exception) -> DBAPIError:
    return DBAPIError.instance(
        "SELECT 1", [], exc, errors.Error if isinstance(exc, psycopg.Error) else Exception
    )


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.OperationalError("connection failed: Connection refused"), "database_unavailable"),
        (errors.DatabaseError("server closed the connection unexpectedly"), "database_unavailable"),
        (
            errors.lookup("57P01")("terminating connection due to administrator command"),
            "database_unavailable",
        ),
        (errors.lookup("57P03")("the database system is starting up"), "database_unavailable"),
        (errors.lookup("25006")("cannot execute INSERT in a read-only transaction"), "database_unavailable"),
        (errors.lookup("08006")("connection failure"), "database_unavailable"),
        (errors.lookup("53300")("too many connections"), "database_unavailable"),
        (errors.lookup("40P01")("deadlock detected"), "database_busy"),
        (errors.lookup("40001")("could not serialize access"), "database_busy"),
        (errors.lookup("22P05")("unsupported Unicode escape sequence"), None),
        (errors.lookup("23505")("duplicate key value"), None),
        (errors.lookup("42P01")("relation does not exist"), None),
    ],
)
def test_which_database_failures_are_worth_a_retry(error: psycopg.Error, code: str | None) -> None:
    assert classify_database_failure(error) == code
    assert classify_database_failure(wrapped(error)) == code


def test_sqlite_lock_timeouts_are_busy_and_other_errors_are_not_outages() -> None:
    locked = DBAPIError.instance("BEGIN", [], sqlite3.OperationalError("database is locked"), sqlite3.Error)
    assert classify_database_failure(locked) == "database_busy"
    no_table = DBAPIError.instance("SELECT", [], sqlite3.OperationalError("no such table: x"), sqlite3.Error)
    assert classify_database_failure(no_table) is None
    assert classify_database_failure(ValueError("not a database error")) is None


def test_an_unreachable_database_answers_503_problems_with_retry_after() -> None:
    db = Database(UNREACHABLE)
    client = TestClient(create_app(Container(db=db, clock=ManualClock())), raise_server_exceptions=False)
    headers = {"Authorization": "Bearer cbk_x_y", "Idempotency-Key": "k1"}
    # The process is alive (decision 0036); it is not ready while its database is away.
    assert client.get("/healthz").status_code == 200
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["code"] == "not_ready"
    for method, path, body in [
        ("GET", "/v1/accounts/acct_x/balance", None),
        ("POST", "/v1/accounts/acct_x/holds", {"amount": 1000, "ttl_seconds": 60}),
    ]:
        started = time.monotonic()
        response = client.request(method, path, headers=headers, json=body)
        assert time.monotonic() - started < 2, "refused connections fail fast"
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["retry-after"] == "1"
        problem = response.json()
        assert problem["code"] == "database_unavailable" and problem["status"] == 503
        assert "same Idempotency-Key" in problem["detail"] and "Traceback" not in response.text
    db.dispose()


def test_a_portal_page_says_so_in_html_when_the_database_is_away(db: Database) -> None:
    settings = replace(Settings(), demo_mode=True, discord_client_id="", session_secret="s-outage")
    container = Container(db=db, clock=ManualClock(), settings=settings)
    client = TestClient(create_app(container), follow_redirects=False, raise_server_exceptions=False)
    login = client.get("/portal/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
    assert token is not None
    assert (
        client.post("/portal/login/demo", data={"who": "ada", "csrf_token": token.group(1)}).status_code
        == 303
    )
    container.db = Database(UNREACHABLE)  # the database goes away under a signed-in person
    page = client.get("/portal/personal/billing")
    assert page.status_code == 503 and page.headers["retry-after"] == "1"
    assert page.headers["content-type"].startswith("text/html") and "try again" in page.text
    container.db.dispose()


def test_autocommit_writes_fail_fast_while_the_database_is_away() -> None:
    db = Database(UNREACHABLE)
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as refused:
        db.run_autocommit(PID, ["x"])
    # The next attempt within the re-attempt interval does not even try.
    with pytest.raises(psycopg.OperationalError, match="a moment ago") as skipped:
        db.run_autocommit(PID, ["x"])
    assert time.monotonic() - started < 2
    assert classify_database_failure(refused.value) == classify_database_failure(skipped.value)
    assert classify_database_failure(skipped.value) == "database_unavailable"
    db.dispose()


def test_a_libpq_multi_host_url_works_for_sqlalchemy_the_pool_and_alembic() -> None:
    url = normalize_database_url(
        "postgresql://billing:s%40cret@db1:5432,db2:5433/chronote?target_session_attrs=read-write&connect_timeout=2"
    )
    assert url == (
        "postgresql+psycopg://billing:s%40cret@/chronote?host=db1:5432&host=db2:5433"
        "&target_session_attrs=read-write&connect_timeout=2"
    )
    db = Database(url)
    conninfo = psycopg.conninfo.conninfo_to_dict(db._autocommit_conninfo())
    assert conninfo["host"] == "db1,db2" and conninfo["port"] == "5432,5433"
    assert conninfo["password"] == "s@cret" and conninfo["target_session_attrs"] == "read-write"
    rendered = db.engine.url.render_as_string(hide_password=False)
    assert alembic_config(rendered).get_main_option("sqlalchemy.url") == rendered
    db.dispose()
    # One host stays as it was.
    assert normalize_database_url("postgresql://u@h:5432/d") == "postgresql+psycopg://u@h:5432/d"


@pytest.mark.postgres
def test_a_session_turned_read_only_is_dropped_from_the_engine_pool(scratch_db: Database) -> None:
    db = Database(scratch_db.url, engine=make_engine(scratch_db.url, pool_size=1, max_overflow=0))
    with db.session() as s:
        # What a server demoted to a standby does to every session: writes are refused.
        s.execute(text("SET SESSION default_transaction_read_only = on"))
        first_pid = s.execute(text("SELECT pg_backend_pid()")).scalar()
    with pytest.raises(DBAPIError) as refused:
        db.write(lambda s: s.execute(text("CREATE TABLE readonly_probe (x int)")))  # type: ignore[arg-type, return-value]
    assert refused.value.orig.sqlstate == "25006"  # type: ignore[union-attr]
    assert classify_database_failure(refused.value) == "database_unavailable"

    # The next transaction gets a new connection, which takes writes.
    def create(s):  # type: ignore[no-untyped-def]
        s.execute(text("CREATE TABLE readonly_probe (x int)"))
        return s.execute(text("SELECT pg_backend_pid()")).scalar()

    assert db.write(create) != first_pid
    db.dispose()


@pytest.mark.postgres
def test_an_autocommit_connection_turned_read_only_replaces_the_pool(scratch_db: Database) -> None:
    db = scratch_db
    db.write(lambda s: s.execute(text("CREATE TABLE readonly_probe (x int)")))  # type: ignore[arg-type, return-value]
    insert = ServerStatement(
        "readonly_insert", "INSERT INTO readonly_probe VALUES ($1::int) RETURNING x::text"
    )
    assert db.run_autocommit(insert, ["1"]) == "1"
    pool = db._autocommit_pool
    idle = [pool.getconn() for _ in range(pool.get_stats()["pool_available"])]
    for conn in idle:  # every pooled session now refuses writes, as on a demoted server
        conn.execute("SET default_transaction_read_only = on")
        pool.putconn(conn)
    with pytest.raises(DBAPIError) as refused:
        db.run_autocommit(insert, ["2"])
    assert refused.value.orig.sqlstate == "25006"  # type: ignore[union-attr]
    assert classify_database_failure(refused.value) == "database_unavailable"
    assert db._autocommit_pool is not pool  # set aside: the next write gets new connections
    assert db.run_autocommit(insert, ["3"]) == "3"
    assert db.read(
        lambda s: s.execute(text("SELECT array_agg(x ORDER BY x) FROM readonly_probe")).scalar()
    ) == [1, 3]


@pytest.mark.postgres
def test_sessions_ended_by_the_server_are_replaced_after_one_failure(scratch_db: Database) -> None:
    db = scratch_db
    db.read(lambda s: s.execute(text("SELECT 1")).scalar())
    db.run_autocommit(PID, ["x"])
    with psycopg.connect(db._autocommit_conninfo(), autocommit=True) as admin:
        # 57P01 admin_shutdown to every session of this database but the admin's own, as a
        # restart or failover does.
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert ended is not None and ended[0] >= 2
    for attempt in (
        lambda: db.read(lambda s: s.execute(text("SELECT 1")).scalar()),
        lambda: db.run_autocommit(PID, ["y"]),
    ):
        with pytest.raises((DBAPIError, psycopg.Error)) as lost:
            attempt()
        assert classify_database_failure(lost.value) == "database_unavailable"
        assert attempt() is not None  # the next one reconnects
