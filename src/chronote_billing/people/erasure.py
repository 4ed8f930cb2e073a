"""Erasing a person (decision 0047): their Discord id and names are replaced by a random
pseudonym in every text and JSON column of every table, their name row is deleted, and an audit
entry is written; amounts, dates and movements are kept, so the ledger still adds up.

`erase` checks, then asks the caller to scrub the Stripe customer (no transaction open, before
any database change), then sweeps in one transaction under the personal account's row lock.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import JSON, String, Text, and_, cast, delete, insert, or_, select
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.accounts.service import check_snowflake
from chronote_billing.core.clock import Clock
from chronote_billing.core.db import Base, Database
from chronote_billing.core.errors import Conflict
from chronote_billing.core.ids import new_id

from .export import UnknownPerson
from .models import Person, PersonErasure

PSEUDONYM_PREFIX = "erased-"


class PersonHasOpenHold(Conflict):
    code = "person_has_open_hold"
    title = "A recording of this person is in progress"


class ErasureView(BaseModel):
    object: str = "person_erasure"
    id: str
    pseudonym: str
    erased_at: datetime
    rows_changed: dict[str, int]
    stripe_customer_updated: bool


@dataclass(frozen=True)
class _Facts:
    account_id: str | None
    customer_id: str | None
    names: tuple[str, ...]


ForgetCustomer = Callable[[str, str, str], None]  # (customer id, pseudonym, erasure id)


def _facts(session: Session, user_id: str, now: datetime, lock: bool = False) -> _Facts:
    from chronote_billing.ledger.models import Hold
    from chronote_billing.orgs.models import OrgMember
    from chronote_billing.usage.models import UsageRecord

    query = select(BillingAccount).where(
        BillingAccount.kind == AccountKind.PERSONAL, BillingAccount.owner_ref == user_id
    )
    account = session.execute(query.with_for_update() if lock else query).scalar()
    person = session.get(Person, user_id)
    used = session.execute(select(UsageRecord.id).where(UsageRecord.user_id == user_id).limit(1)).first()
    member = session.execute(select(OrgMember.org_id).where(OrgMember.user_id == user_id).limit(1)).first()
    if account is None and person is None and used is None and member is None:
        raise UnknownPerson(
            f"Nothing is kept about Discord user {user_id}; there is nothing to erase.", user_id=user_id
        )
    recording = session.execute(
        select(UsageRecord.id).where(UsageRecord.user_id == user_id, UsageRecord.status == "open").limit(1)
    ).first()
    holding = (
        account is not None
        and session.execute(
            select(Hold.id)
            .where(Hold.billing_account_id == account.id, Hold.status == "open", Hold.expires_at > now)
            .limit(1)
        ).first()
    )
    if recording is not None or holding:
        raise PersonHasOpenHold(
            f"Discord user {user_id} has a recording in progress (an open hold); erase them once it has finished.",
            user_id=user_id,
        )
    names = {person.display_name} if person else set()
    if account is not None and account.display_name not in (f"User {user_id}", ""):
        names.add(account.display_name)
    names = {n for n in names if n.strip() and not n.isdigit()}
    return _Facts(
        account_id=account.id if account else None,
        customer_id=account.stripe_customer_id if account else None,
        names=tuple(sorted(names, key=len, reverse=True)),
    )


def _patterns(user_id: str, names: tuple[str, ...]) -> list[re.Pattern[str]]:
    """The id as a whole number; each name as whole words, also as JSON escapes them."""
    out = [re.compile(rf"(?<![0-9]){re.escape(user_id)}(?![0-9])")]
    for name in names:
        for form in {name, json.dumps(name)[1:-1]}:
            out.append(re.compile(rf"(?<!\w){re.escape(form)}(?!\w)"))
    return out


def _replace(value: Any, patterns: list[re.Pattern[str]], pseudonym: str) -> Any:
    if isinstance(value, str):
        for pattern in patterns:
            value = pattern.sub(pseudonym, value)
        return value
    if isinstance(value, dict):
        return {_replace(k, patterns, pseudonym): _replace(v, patterns, pseudonym) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, patterns, pseudonym) for v in value]
    return value


def sweep(session: Session, terms: list[str], pseudonym: str) -> dict[str, int]:
    """Replace every occurrence of `terms` (the id first, then names) in every text and JSON
    column of every table by the pseudonym; returns the rows changed per table."""
    import chronote_billing.models  # noqa: F401 - every table registered

    patterns = _patterns(terms[0], tuple(terms[1:]))
    needles = {terms[0]} | {form for name in terms[1:] for form in (name, json.dumps(name)[1:-1])}
    changed: dict[str, int] = {}
    for table in Base.metadata.sorted_tables:
        if table.name == PersonErasure.__tablename__:
            continue
        keys = list(table.primary_key.columns)
        for column in table.columns:
            is_json = isinstance(column.type, JSON)
            if not (is_json or isinstance(column.type, String | Text)):
                continue
            text = cast(column, Text) if is_json else column
            found = or_(*[text.contains(n, autoescape=True) for n in needles])
            rows = session.execute(select(*keys, column).where(found)).all()
            for row in rows:
                old = row[-1]
                new = _replace(old, patterns, pseudonym)
                if new == old:
                    continue
                session.execute(
                    table.update()
                    .where(and_(*[k == row[i] for i, k in enumerate(keys)]))
                    .values({column.name: new})
                )
                changed[table.name] = changed.get(table.name, 0) + 1
    return changed


def erase(
    db: Database,
    clock: Clock,
    user_id: str,
    *,
    forget_customer: ForgetCustomer,
    reason: str = "",
    requested_by: str = "operator",
) -> ErasureView:
    user_id = check_snowflake(user_id, "user_id")
    now = clock.now()
    facts = db.read(lambda s: _facts(s, user_id, now))
    erasure_id = new_id("era")
    pseudonym = PSEUDONYM_PREFIX + secrets.token_hex(8)
    if facts.customer_id:
        forget_customer(facts.customer_id, pseudonym, erasure_id)

    def write(session: Session) -> ErasureView:
        # Under the personal account's row lock, as a personal recording takes it to start.
        again = _facts(session, user_id, clock.now(), lock=True)
        named = session.execute(delete(Person).where(Person.discord_user_id == user_id)).rowcount  # type: ignore[attr-defined]
        changed = sweep(session, [user_id, *again.names], pseudonym)
        if named:
            changed["people"] = changed.get("people", 0) + int(named)
        view = ErasureView(
            id=erasure_id,
            pseudonym=pseudonym,
            erased_at=clock.now(),
            rows_changed=changed,
            stripe_customer_updated=bool(facts.customer_id),
        )
        session.execute(
            insert(PersonErasure).values(
                id=view.id,
                pseudonym=pseudonym,
                erased_at=view.erased_at,
                reason=reason,
                requested_by=requested_by,
                rows_changed=changed,
                stripe_customer_updated=view.stripe_customer_updated,
            )
        )
        return view

    return db.write(write)


__all__ = ["ErasureView", "PersonHasOpenHold", "UnknownPerson", "erase", "sweep"]
