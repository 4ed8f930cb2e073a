"""The ceremony of every billing write that calls Stripe, in one place (decisions 0033, 0055).

Such a write cannot hold a transaction open while Stripe answers, so it runs in three steps:

1. read and check (permission, the plan's scope, and whether this request was answered before:
   `first_answer`);
2. call Stripe with an idempotency key derived from our ids and the caller's key, so a retry gets
   Stripe's first answer;
3. write the result with the answer (`remember`), in a new transaction; a concurrent duplicate
   that remembered first wins, and its answer is returned.

The record is kept under the operation's own scope, on the request as the client sent it, by
the same `core.idempotency.Once` as every other write; what this class adds is the split of its
look-up and its remembering across two transactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from chronote_billing.core import idempotency
from chronote_billing.core.db import Database

Answer = TypeVar("Answer", bound=BaseModel)


@dataclass(frozen=True)
class StripeWrite(Generic[Answer]):
    scope: str
    key: str
    request: dict[str, Any]
    answer: type[Answer]

    @classmethod
    def of(
        cls, operation: str, account_id: str, key: str | None, request: dict[str, Any], answer: type[Answer]
    ) -> StripeWrite[Answer]:
        """The write `operation` of one account; a missing or oversized key is refused first."""
        return cls(f"billing.{operation}:{account_id}", idempotency.check_key(key), request, answer)

    def once(self, now: datetime | None = None) -> idempotency.Once[Answer]:
        return idempotency.Once(self.answer, self.scope, self.key, self.request, now)

    def first_answer(self, session: Session) -> Answer | None:
        """The answer given to this same request before; a conflict for the same key with
        another request."""
        return self.once().prior(session)

    def remember(
        self, session: Session, answer: Answer, now: datetime, resource_id: str | None = None
    ) -> Answer:
        """Keep `answer` as this request's answer, in the caller's transaction; a concurrent
        duplicate that remembered first wins."""
        return self.once(now).run(session, lambda: answer, lambda _: resource_id)

    def answered(self, db: Database, answer: Answer, now: datetime) -> Answer:
        """Keep `answer` in a transaction of its own (writes with no effect of ours but Stripe's)."""
        return db.write(lambda session: self.remember(session, answer, now))
