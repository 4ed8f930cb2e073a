"""Idempotency records: a retry returns the first result; a reused key with other parameters
is a conflict.

The record is written in the same transaction as the effect it guards, so there is never an
effect without its record. Callers lock the row the effect serializes on (usually the wallet)
before calling :func:`lookup`, so concurrent duplicates queue behind one another and the
second one finds the first one's record.

Scopes and keys composed from a client's input are bounded by hashing (decision 0033): the text
is kept while it fits its column, else replaced by ``h:`` and its SHA-256, so any key a client
may send works everywhere and two different keys never share a record.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

from pydantic import TypeAdapter
from sqlalchemy import String, Text, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from .db import Base, JSONType, UTCDateTime
from .errors import IdempotencyConflict, ValidationFailed

V = TypeVar("V")

MAX_KEY_LENGTH = 255
MAX_SCOPE_LENGTH = 96


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_records"

    scope: Mapped[str] = mapped_column(String(MAX_SCOPE_LENGTH), primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[Any] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resource_id: Mapped[str | None] = mapped_column(Text, nullable=True)


def request_fingerprint(params: dict[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def bounded(text: str, limit: int) -> str:
    """``text`` while it fits ``limit`` characters, else ``h:`` and its SHA-256 (66 characters).
    Bounding twice changes nothing, so callers and the functions they call may both apply it."""
    if len(text) <= limit:
        return text
    return "h:" + hashlib.sha256(text.encode()).hexdigest()


def scope_of(*parts: str) -> str:
    """A scope composed of parts (an operation and an id), bounded to its column."""
    return bounded(":".join(parts), MAX_SCOPE_LENGTH)


def compose_key(*parts: str) -> str:
    """A key derived from a client's key and our ids (``usage:<recording>:extend:<key>``),
    bounded to its column."""
    return bounded(":".join(parts), MAX_KEY_LENGTH)


def check_key(key: str | None) -> str:
    if key is None or not str(key).strip():
        raise ValidationFailed("An idempotency key is required for every write.", field="idempotency_key")
    key = str(key).strip()
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed(
            f"Idempotency keys are at most {MAX_KEY_LENGTH} characters.", field="idempotency_key"
        )
    return key


def find(session: Session, scope: str, key: str) -> tuple[str, Any] | None:
    """The (request hash, first response) stored for (scope, key), if any."""
    record = session.execute(
        select(IdempotencyRecord.request_hash, IdempotencyRecord.response).where(
            IdempotencyRecord.scope == bounded(scope, MAX_SCOPE_LENGTH),
            IdempotencyRecord.key == bounded(key, MAX_KEY_LENGTH),
        )
    ).first()
    return None if record is None else (record.request_hash, record.response)


def replay(found: tuple[str, Any] | None, scope: str, key: str, params: dict[str, Any]) -> Any | None:
    """The first response for a stored record of the same request; a conflict for another."""
    if found is None:
        return None
    if found[0] != request_fingerprint(params):
        raise IdempotencyConflict(
            f"Idempotency key '{key}' was already used for a different {scope.split(':', 1)[0]} request.",
            idempotency_key=key,
        )
    return found[1]


def lookup(session: Session, scope: str, key: str, params: dict[str, Any]) -> Any | None:
    """Return the stored response for (scope, key), None if unseen; raise on a parameter mismatch."""
    return replay(find(session, scope, key), scope, key, params)


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
            scope=bounded(scope, MAX_SCOPE_LENGTH),
            key=bounded(key, MAX_KEY_LENGTH),
            request_hash=request_fingerprint(params),
            response=response,
            created_at=now,
            resource_id=resource_id,
        )
    )


@functools.cache
def _shape(answer: Any) -> TypeAdapter[Any]:
    # Building an adapter costs far more than using one; a handful of shapes exist.
    return TypeAdapter(answer)


class Once(Generic[V]):
    """One idempotent operation: look the key up, run the work once, remember its answer.

    Every write of the service goes through this sequence, after the caller has validated the
    request and locked the row its duplicates serialize on::

        once = Once(HoldView, scope_of("ledger.hold", account_id), key, params, now)
        if (prior := once.prior(session)) is not None:
            return prior
        view = ...  # the effect
        return once.remember(session, view, resource_id=view.id)

    or, when the work is one callable, ``once.run(session, work)``. The answer is a view or a
    list of views (``Once(list[SourceView], ...)``), stored as its JSON, so a retry returns
    exactly what the first request returned. ``now`` is only needed to remember: a step that
    only asks whether the request was answered before (a Stripe write's first step) may leave
    it out.
    """

    def __init__(
        self, answer: type[V], scope: str, key: str, params: dict[str, Any], now: datetime | None = None
    ) -> None:
        self.shape: TypeAdapter[V] = _shape(cast(Hashable, answer))
        self.scope = scope
        self.key = key
        self.params = params
        self.now = now

    def prior(self, session: Session) -> V | None:
        stored = lookup(session, self.scope, self.key, self.params)
        return None if stored is None else self.shape.validate_python(stored)

    def remember(self, session: Session, answer: V, resource_id: str | None = None) -> V:
        if self.now is None:
            raise TypeError("Once.remember needs the moment of the write (now).")
        stored = self.shape.dump_python(answer, mode="json")
        remember(session, self.scope, self.key, self.params, stored, self.now, resource_id)
        return answer

    def run(
        self, session: Session, work: Callable[[], V], resource_id: Callable[[V], str | None] | None = None
    ) -> V:
        prior = self.prior(session)
        if prior is not None:
            return prior
        answer = work()
        return self.remember(session, answer, resource_id(answer) if resource_id else None)
