"""The transactional outbox: events and jobs queued in the caller's transaction, and the
operators' listing of them. An entry exists if and only if the change it reports committed; the
delivery worker (``delivery.py``) sends it afterwards, at least once.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from chronote_billing.core.clock import Clock
from chronote_billing.core.errors import NotFound, ValidationFailed
from chronote_billing.core.ids import new_id

from .models import OutboxEntry
from .schemas import OutboxEntryView, OutboxPage

# Event types sent to Chronote (documented in docs/notifications.md).
EVENT_TYPES: dict[str, str] = {
    "wallet.balance_low": "The available balance fell below the account's alert threshold.",
    "authorization.cap_reached": "A spend authorization reached its monthly cap.",
    "hold.declined": "A hold was declined (not enough credits or cap room).",
    "payment.failed": "A Stripe payment for the account failed.",
    "auto_recharge.started": "The balance fell below the auto-recharge threshold; a pack purchase was queued.",
    "auto_recharge.succeeded": "The auto-recharge payment succeeded; its credits are granted once, on confirmation.",
    "auto_recharge.failed": "The auto-recharge purchase could not be made.",
    "auto_recharge.stopped": "Auto-recharge stopped: the monthly limit was reached, or the card was declined.",
}
STATUSES = ("pending", "delivered", "dead")
_TYPE_PATTERN = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+$")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class Outbox:
    """The notification service's outbox: queue an entry once per dedupe key, list them."""

    clock: Clock

    def emit(
        self, session: Session, event_type: str, account_id: str | None, data: dict[str, Any], dedupe_key: str
    ) -> None:
        """Queue a webhook to Chronote in the caller's transaction; the same dedupe key twice
        writes one event (the first)."""
        if not isinstance(event_type, str) or not _TYPE_PATTERN.match(event_type) or len(event_type) > 64:
            raise ValueError(f"'{event_type}' is not an event type like 'wallet.balance_low'.")
        self._enqueue(session, "event", event_type, account_id, data, dedupe_key)

    def _enqueue(
        self,
        session: Session,
        kind: str,
        entry_type: str,
        account_id: str | None,
        data: dict[str, Any],
        dedupe_key: str,
    ) -> str | None:
        """Insert an outbox row unless its dedupe key exists; returns its id, None if deduplicated."""
        if not isinstance(dedupe_key, str) or not dedupe_key.strip() or len(dedupe_key) > 255:
            raise ValueError("dedupe_key must be a non-empty string of at most 255 characters.")
        if not isinstance(data, dict):
            raise ValueError("data must be a JSON object.")
        try:
            payload = json.loads(json.dumps(data, default=_json_default))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"data must be JSON-serializable: {exc}") from exc
        now = self.clock.now()
        entry_id = new_id("evt" if kind == "event" else "job")
        values = {
            "id": entry_id,
            "kind": kind,
            "type": entry_type,
            "account_id": account_id,
            "data": payload,
            "dedupe_key": dedupe_key,
            "created_at": now,
            "attempts": 0,
            "next_attempt_at": now,
        }
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            stmt: Any = postgresql.insert(OutboxEntry).values(**values)
        elif dialect == "sqlite":
            stmt = sqlite.insert(OutboxEntry).values(**values)
        else:  # pragma: no cover - only the two supported databases
            raise RuntimeError(f"unsupported database {dialect}")
        result = session.execute(stmt.on_conflict_do_nothing(index_elements=["dedupe_key"]))
        return entry_id if result.rowcount else None  # type: ignore[attr-defined]

    def list_outbox(
        self,
        session: Session,
        *,
        status: str | None = None,
        account_id: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        starting_after: str | None = None,
    ) -> OutboxPage:
        if status is not None and status not in STATUSES:
            raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}.", field="status")
        if kind is not None and kind not in ("event", "job"):
            raise ValidationFailed("kind must be 'event' or 'job'.", field="kind")
        if not 1 <= limit <= 500:
            raise ValidationFailed("limit must be from 1 to 500.", field="limit")
        query = select(OutboxEntry)
        if status == "delivered":
            query = query.where(OutboxEntry.delivered_at.is_not(None))
        elif status == "dead":
            query = query.where(OutboxEntry.dead_at.is_not(None))
        elif status == "pending":
            query = query.where(OutboxEntry.delivered_at.is_(None), OutboxEntry.dead_at.is_(None))
        if account_id is not None:
            query = query.where(OutboxEntry.account_id == account_id)
        if kind is not None:
            query = query.where(OutboxEntry.kind == kind)
        if starting_after is not None:
            query = query.where(OutboxEntry.id < starting_after)
        rows = list(session.execute(query.order_by(OutboxEntry.id.desc()).limit(limit + 1)).scalars())
        data = [entry_view(r) for r in rows[:limit]]
        has_more = len(rows) > limit
        return OutboxPage(
            data=data, has_more=has_more, next_cursor=data[-1].id if has_more and data else None
        )

    def get_entry(self, session: Session, entry_id: str) -> OutboxEntryView:
        row = session.get(OutboxEntry, entry_id)
        if row is None:
            raise NotFound(f"No notification '{entry_id}'.", notification_id=entry_id)
        return entry_view(row)


def entry_status(row: OutboxEntry) -> str:
    if row.delivered_at is not None:
        return "delivered"
    if row.dead_at is not None:
        return "dead"
    return "pending"


def entry_view(row: OutboxEntry) -> OutboxEntryView:
    return OutboxEntryView(
        id=row.id,
        kind=row.kind,
        type=row.type,
        account_id=row.account_id,
        data=dict(row.data or {}),
        status=entry_status(row),
        attempts=row.attempts,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
        dead_at=row.dead_at,
        last_error=row.last_error,
    )
