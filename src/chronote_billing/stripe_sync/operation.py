"""The ceremony of every billing write that calls Stripe, in one place (decisions 0033, 0055).

Such a write cannot hold a transaction open while Stripe answers, so it runs in three steps:

1. read and check (permission, the plan's scope, and whether this request was answered before:
   `first_answer`);
2. call Stripe with an idempotency key derived from our ids and the caller's key, so a retry gets
   Stripe's first answer;
3. write the result with the answer (`remember`), in a new transaction; a concurrent duplicate
   that remembered first wins, and its answer is returned.

The record is kept under the operation's own scope, on the request as the client sent it.
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

    def first_answer(self, session: Session) -> Answer | None:
        """The answer given to this same request before; a conflict for the same key with
        another request."""
        prior = idempotency.lookup(session, self.scope, self.key, self.request)
        return None if prior is None else self.answer.model_validate(prior)

    def remember(
        self, session: Session, answer: Answer, now: datetime, resource_id: str | None = None
    ) -> Answer:
        """Keep `answer` as this request's answer, in the caller's transaction."""
        first = self.first_answer(session)
        if first is not None:
            return first
        idempotency.remember(
            session, self.scope, self.key, self.request, answer.model_dump(mode="json"), now, resource_id
        )
        return answer

    def answered(self, db: Database, answer: Answer, now: datetime) -> Answer:
        """Keep `answer` in a transaction of its own (writes with no effect of ours but Stripe's)."""
        return db.write(lambda session: self.remember(session, answer, now))
