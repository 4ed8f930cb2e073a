"""Retention (decision 0037): delivered notifications and the idempotency records of writes that
move no money are deleted once older than the retention age; money records are kept (0013).

A scope's kind is its operation, the part before the first ``:`` (``orgs.add_member:org_...``).
This module names the operations whose records may go; every other scope is kept, so a scope
added later is kept until someone decides otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Index, delete, select, text, tuple_
from sqlalchemy.orm import Session

from chronote_billing.core.db import Database
from chronote_billing.core.idempotency import IdempotencyRecord
from chronote_billing.notifications.models import OutboxEntry

# Writes that move no money, reserve none and charge nothing: settings, membership, sharing.
NON_MONEY_OPERATIONS: tuple[str, ...] = (
    "orgs.create",
    "orgs.add_member",
    "orgs.remove_member",
    "orgs.set_role",
    "orgs.link_server",
    "orgs.unlink_server",
    "orgs.authorize",
    "orgs.authorization_update",
    "orgs.authorization_revoke",
    "usage.share",
    "usage.funding_order",
    "notifications.alert_settings",
    "notifications.auto_recharge",
)

# One SQL text for the partial index and the purge, so both databases' planners match them.
# (The list is frozen into migration 0009's index: changing it is a new migration.)
PURGEABLE_SCOPES_SQL = " OR ".join(f"scope LIKE '{operation}:%'" for operation in NON_MONEY_OPERATIONS)
PURGEABLE_SCOPES = text(f"({PURGEABLE_SCOPES_SQL})")

BATCH = 1_000

# Read by the purge below; created by migration 0009.
Index(
    "ix_idempotency_records_purgeable",
    IdempotencyRecord.created_at,
    postgresql_where=PURGEABLE_SCOPES,
    sqlite_where=PURGEABLE_SCOPES,
)


def operation_of(scope: str) -> str:
    return scope.partition(":")[0]


def is_money_scope(scope: str) -> bool:
    """Whether records of ``scope`` are kept indefinitely."""
    return operation_of(scope) not in NON_MONEY_OPERATIONS


@dataclass(frozen=True)
class PurgeReport:
    outbox_rows: int
    idempotency_records: int


def purge(db: Database, now: datetime, age: timedelta, batch: int = BATCH) -> PurgeReport:
    """Delete what is older than ``age``, in short transactions of ``batch`` rows each."""
    cutoff = now - age

    def outbox_batch(session: Session) -> int:
        ids = select(OutboxEntry.id).where(OutboxEntry.delivered_at < cutoff).limit(batch)
        result = session.execute(delete(OutboxEntry).where(OutboxEntry.id.in_(ids)))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def idempotency_batch(session: Session) -> int:
        keys = (
            select(IdempotencyRecord.scope, IdempotencyRecord.key)
            .where(PURGEABLE_SCOPES, IdempotencyRecord.created_at < cutoff)
            .limit(batch)
        )
        result = session.execute(
            delete(IdempotencyRecord).where(tuple_(IdempotencyRecord.scope, IdempotencyRecord.key).in_(keys))
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    return PurgeReport(_until_done(db, outbox_batch, batch), _until_done(db, idempotency_batch, batch))


def _until_done(db: Database, work: Callable[[Session], int], batch: int) -> int:
    total = 0
    while True:
        deleted = db.write(work)
        total += deleted
        if deleted < batch:
            return total
