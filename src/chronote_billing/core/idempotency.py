"""Idempotency records: a retry returns the first result; a reused key with other parameters
is a conflict.

The record is written in the same transaction as the effect it guards, so there is never an
effect without its record. Callers lock the row the effect serializes on (usually the wallet)
before calling :func:`lookup`, so concurrent duplicates queue behind one another and the
second one finds the first one's record.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import String, Text, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from .db import Base, JSONType, UTCDateTime
from .errors import IdempotencyConflict, ValidationFailed

MAX_KEY_LENGTH = 255


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_records"

    scope: Mapped[str] = mapped_column(String(96), primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[Any] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resource_id: Mapped[str | None] = mapped_column(Text, nullable=True)


def request_fingerprint(params: dict[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(key: str | None) -> str:
    if key is None or not str(key).strip():
        raise ValidationFailed("An idempotency key is required for every write.", field="idempotency_key")
    key = str(key).strip()
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed(
            f"Idempotency keys are at most {MAX_KEY_LENGTH} characters.", field="idempotency_key"
        )
    return key


def lookup(session: Session, scope: str, key: str, params: dict[str, Any]) -> Any | None:
    """Return the stored response for (scope, key), None if unseen; raise on a parameter mismatch."""
    record = session.execute(
        select(IdempotencyRecord.request_hash, IdempotencyRecord.response).where(
            IdempotencyRecord.scope == scope, IdempotencyRecord.key == key
        )
    ).first()
    if record is None:
        return None
    if record.request_hash != request_fingerprint(params):
        raise IdempotencyConflict(
            f"Idempotency key '{key}' was already used for a different {scope} request.",
            idempotency_key=key,
        )
    return record.response


def remember(
    session: Session,
    scope: str,
    key: str,
    params: dict[str, Any],
    response: Any,
    now: datetime,
    resource_id: str | None = None,
) -> None:
    session.execute(
        insert(IdempotencyRecord).values(
            scope=scope,
            key=key,
            request_hash=request_fingerprint(params),
            response=response,
            created_at=now,
            resource_id=resource_id,
        )
    )
