"""Retention (decision 0037): `sweep` purges delivered notifications and the idempotency records
of non-money scopes older than the retention age; money records, pending and dead notifications,
and scopes nobody classified stay."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text
from typer.testing import CliRunner

from chronote_billing import retention
from chronote_billing.cli import output
from chronote_billing.cli.main import app
from chronote_billing.config import Settings
from chronote_billing.container import Container
from chronote_billing.core.clock import ManualClock
from chronote_billing.core.db import Database
from chronote_billing.core.errors import ValidationFailed
from chronote_billing.core.idempotency import IdempotencyRecord
from chronote_billing.core.ids import new_id
from chronote_billing.notifications.models import OutboxEntry
from tests.conftest import IS_POSTGRES

MONEY = [
    "ledger.grant",
    "ledger.reverse_grant",
    "ledger.freeze_grant",
    "ledger.hold",
    "ledger.hold_extend",
    "ledger.hold_capture",
    "ledger.hold_release",
    "ledger.debit",
    "usage.start",
    "usage.extend",
    "usage.finish",
    "usage.cancel",
    "usage.event",
    "billing.checkout",
    "billing.plan_change",
    "billing.cancel",
    "billing.pack_off_session",
    "billing.portal",
    "something.added_later",
]


@pytest.mark.parametrize("operation", MONEY)
def test_money_and_unknown_scopes_are_kept(operation: str) -> None:
    assert retention.is_money_scope(f"{operation}:acct_01m92q5egskz0frejap38z336j")


@pytest.mark.parametrize("operation", retention.NON_MONEY_OPERATIONS)
def test_non_money_scopes_are_purgeable(operation: str) -> None:
    assert not retention.is_money_scope(f"{operation}:org_01m92q5egskz0frejap38z336j")
    assert not operation.startswith(("ledger.", "billing.")) and operation not in MONEY


def test_the_migrations_index_names_the_same_scopes() -> None:
    path = next(Path(retention.__file__).parent.joinpath("migrations", "versions").glob("0009_*.py"))
    spec = importlib.util.spec_from_file_location("migration_0009", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NON_MONEY_OPERATIONS == retention.NON_MONEY_OPERATIONS
    assert str(module.PURGEABLE) == str(retention.PURGEABLE_SCOPES)


@pytest.fixture
def world(scratch_db: Database) -> Iterator[tuple[Container, ManualClock]]:
    clock = ManualClock()
    container = Container(db=scratch_db, clock=clock)
    output.set_container(container)
    width = output.console.width
    output.console.width = 200  # no wrapping of the lines read below
    yield container, clock
    output.console.width = width
    output.set_container(None)


def add_outbox(db: Database, created_days_ago: int, state: str, now) -> str:  # type: ignore[no-untyped-def]
    entry_id = new_id("evt")
    at = now - timedelta(days=created_days_ago)
    db.write(
        lambda s: s.execute(
            insert(OutboxEntry).values(
                id=entry_id,
                kind="event",
                type="wallet.balance_low",
                account_id=None,
                data={},
                dedupe_key="d-" + entry_id,
                created_at=at,
                attempts=1,
                next_attempt_at=at if state == "pending" else None,
                delivered_at=at if state == "delivered" else None,
                dead_at=at if state == "dead" else None,
            )
        )
    )
    return entry_id


def add_record(db: Database, scope: str, days_ago: int, now) -> None:  # type: ignore[no-untyped-def]
    db.write(
        lambda s: s.execute(
            insert(IdempotencyRecord).values(
                scope=scope,
                key="k-" + new_id("x"),
                request_hash="0" * 64,
                response={},
                created_at=now - timedelta(days=days_ago),
            )
        )
    )


def remaining(db: Database) -> tuple[set[str], list[str]]:
    def read(s):  # type: ignore[no-untyped-def]
        outbox = set(s.execute(select(OutboxEntry.id)).scalars())
        scopes = sorted(s.execute(select(IdempotencyRecord.scope)).scalars())
        return outbox, scopes

    return db.read(read)


def test_sweep_purges_what_is_past_retention_and_keeps_the_rest(world) -> None:  # type: ignore[no-untyped-def]
    c, clock = world
    now = clock.now()
    old_delivered = add_outbox(c.db, 40, "delivered", now)
    recent_delivered = add_outbox(c.db, 10, "delivered", now)
    old_pending = add_outbox(c.db, 40, "pending", now)
    old_dead = add_outbox(c.db, 40, "dead", now)
    for scope in ("orgs.create:100000000000000001", "usage.share:m1", "notifications.alert_settings:acct_x"):
        add_record(c.db, scope, 40, now)
    add_record(c.db, "orgs.add_member:org_recent", 10, now)
    for operation in MONEY:
        add_record(c.db, f"{operation}:acct_old", 400, now)
    before_outbox, before_scopes = remaining(c.db)

    result = CliRunner().invoke(app, ["sweep"])
    assert result.exit_code == 0, result.output
    assert (
        "purged 1 delivered notifications and 3 non-money idempotency records older than 30 days"
        in result.output
    )
    outbox, scopes = remaining(c.db)
    assert outbox == before_outbox - {old_delivered}
    assert {recent_delivered, old_pending, old_dead} <= outbox
    assert scopes == sorted(s for s in before_scopes if retention.is_money_scope(s) or "recent" in s)

    # A shorter age for one run, from the command line.
    result = CliRunner().invoke(app, ["sweep", "--retention-days", "5"])
    assert result.exit_code == 0 and "purged 1 delivered notifications and 1 non-money" in result.output
    assert remaining(c.db)[1] == sorted(f"{operation}:acct_old" for operation in MONEY)
    assert CliRunner().invoke(app, ["sweep", "--retention-days", "0"]).exit_code != 0


def test_purge_works_in_batches(world) -> None:  # type: ignore[no-untyped-def]
    c, clock = world
    now = clock.now()
    for _ in range(5):
        add_outbox(c.db, 100, "delivered", now)
        add_record(c.db, "usage.funding_order:100000000000000001", 100, now)
    report = retention.purge(c.db, now, timedelta(days=30), batch=2)
    assert (report.outbox_rows, report.idempotency_records) == (5, 5)
    assert c.db.read(lambda s: s.execute(select(func.count()).select_from(OutboxEntry)).scalar_one()) == 0


def test_retention_days_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHRONOTE_RETENTION_DAYS", "7")
    assert Settings().retention_days == 7
    monkeypatch.setenv("CHRONOTE_RETENTION_DAYS", "soon")
    with pytest.raises(ValidationFailed):
        Settings()


@pytest.mark.postgres
def test_the_purge_reads_its_partial_index_on_postgresql(scratch_db: Database) -> None:
    assert IS_POSTGRES
    # The SQL the purge sends: the scope condition as text, the age as a parameter.
    explain = text(
        "EXPLAIN SELECT scope, key FROM idempotency_records "
        f"WHERE {retention.PURGEABLE_SCOPES} AND created_at < :cutoff LIMIT 1000"
    )
    with scratch_db.engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(row[0] for row in conn.execute(explain, {"cutoff": "2026-01-01"}))
    assert "ix_idempotency_records_purgeable" in plan, plan
