"""Alembic owns the schema on both databases: up, down and up again, and no drift from the models."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from chronote_billing.core import migrate
from chronote_billing.models import metadata


def test_upgrade_downgrade_upgrade(scratch_db):
    engine = scratch_db.engine
    assert "ledger_transfers" in inspect(engine).get_table_names()
    migrate.downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(engine)
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())


def test_models_match_migrations(scratch_db):
    with scratch_db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(context, metadata)
    assert diff == [], f"models and migrations differ; write a migration: {diff}"
