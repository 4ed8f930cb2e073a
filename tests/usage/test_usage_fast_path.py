"""The recording path's database functions (decision 0031) against its Python path.

The facts twin must read what the ORM reads; the writes must answer and leave rows exactly as the
Python path does, for any sequence of starts, extensions, finishes, cancellations and metered
events; and in the common case each operation stays within its round-trip budget.
"""

from __future__ import annotations

import re
import secrets
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, select

from chronote_billing.access.service import Principal
from chronote_billing.accounts.models import BillingAccount
from chronote_billing.container import Container
from chronote_billing.core.clock import ManualClock
from chronote_billing.core.db import Database
from chronote_billing.core.errors import BillingError
from chronote_billing.core.idempotency import IdempotencyRecord
from chronote_billing.ledger.models import CapUsage, Hold, Transfer
from chronote_billing.ledger.service import LedgerService
from chronote_billing.ledger.verify import verify
from chronote_billing.people import service as people
from chronote_billing.usage import facts, fast_path
from chronote_billing.usage.models import MeetingAttribution, UsageRecord
from chronote_billing.usage.schemas import EventRequest, UsageRequest
from tests.conftest import snowflake

pytestmark = pytest.mark.postgres
MC = 1000


class World:
    """A user in an organization with a capped authorization, a server linked to it, and
    money in each wallet; driven through the fast path or the Python path only."""

    def __init__(self, db: Database, clock: ManualClock, fast: bool) -> None:
        c = Container(db=db, clock=clock)
        c.ledger = LedgerService(clock, db_functions=fast)  # type: ignore[misc]
        self.c = c
        self.user, self.owner, self.guild = snowflake(), snowflake(), snowflake()
        k = lambda: "w-" + secrets.token_hex(6)  # noqa: E731
        org = db.write(
            lambda s: c.orgs.create_org(s, actor_user_id=self.owner, name="Acme", idempotency_key=k())
        )
        self.org_account = org.billing_account_id
        db.write(
            lambda s: c.orgs.add_member(
                s,
                actor_user_id=self.owner,
                org_id=org.id,
                user_id=self.user,
                role="member",
                idempotency_key=k(),
            )
        )
        self.auth = db.write(
            lambda s: c.orgs.create_authorization(
                s,
                actor_user_id=self.owner,
                org_id=org.id,
                subject_type="member",
                subject_id=self.user,
                monthly_cap_credits=150,
                capture_sources=None,
                valid_from=None,
                valid_until=None,
                idempotency_key=k(),
            )
        ).id
        db.write(
            lambda s: c.orgs.link_server(
                s,
                actor_user_id=self.owner,
                actor_manages_guild=True,
                org_id=org.id,
                guild_id=self.guild,
                idempotency_key=k(),
            )
        )
        self.server_auth = db.write(
            lambda s: c.orgs.create_authorization(
                s,
                actor_user_id=self.owner,
                org_id=org.id,
                subject_type="server",
                subject_id=self.guild,
                monthly_cap_credits=None,
                capture_sources=None,
                valid_from=None,
                valid_until=None,
                idempotency_key=k(),
            )
        ).id
        db.write(lambda s: people.remember(s, self.user, "Cy", clock.now()))
        self.personal = db.write(lambda s: c.accounts.get_or_create(s, "personal", self.user).id)
        self.server = db.write(lambda s: c.accounts.get_or_create(s, "server", self.guild).id)
        db.write(
            lambda s: c.ledger.issue_grant(
                s,
                account_id=self.org_account,
                amount=400 * MC,
                source="purchase",
                idempotency_key="f",
                cause_type="t",
            )
        )
        self.principal = Principal(kind="service", scopes=frozenset({"holds:write"}), user_id=self.user)
        self.recordings: list[str] = []
        self.writes = c.usage_writes

    def run(self, op: tuple[Any, ...], step: int) -> Any:
        kind = op[0]
        w = self.writes
        try:
            if kind == "start":
                _, context, minutes, partial, source = op
                body: dict[str, Any] = {
                    "requested_minutes": minutes,
                    "allow_partial": partial,
                    "meeting_id": f"{self.user}-m{step}",
                }
                if context == "server":
                    body |= {"context": "server", "capture_source": "discord_voice", "guild_id": self.guild}
                else:
                    body |= {
                        "context": "personal",
                        "capture_source": "desktop",
                        "funding_source": self.auth if source else None,
                    }
                view = w.start(UsageRequest(user_id=self.user, **body), f"s{step}")
                if view.id not in self.recordings:
                    self.recordings.append(view.id)
            elif kind == "event":
                _, context, event_type = op
                view = w.charge(
                    EventRequest(
                        event_id=f"e{step}",
                        event_type=event_type,
                        context=context,
                        user_id=self.user,
                        guild_id=self.guild if context == "server" else None,
                    )
                )
            elif kind in ("extend", "finish", "cancel"):
                if not self.recordings:
                    return None
                rec = self.recordings[op[1] % len(self.recordings)]
                if kind == "extend":
                    view = w.extend(self.principal, rec, op[2], f"x{step}", op[3])
                elif kind == "finish":
                    view = w.finish(self.principal, rec, {"mic": op[2]}, f"f{step}")
                else:
                    view = self.c.db.write(
                        lambda s: self.c.usage.cancel_recording(s, self.principal, rec, f"c{step}")
                    )
            elif kind == "retry":
                return self.run(op[1], op[2])
            else:
                raise AssertionError(kind)
        except BillingError as exc:
            return self.normalize(("error", exc.code, exc.message))
        return self.normalize(view.model_dump(mode="json"))

    def names(self) -> dict[str, str]:
        names = {
            self.user: "<user>",
            self.owner: "<owner>",
            self.guild: "<guild>",
            self.auth: "<auth>",
            self.server_auth: "<server_auth>",
            self.personal: "<personal>",
            self.server: "<server>",
            self.org_account: "<org>",
        }
        names.update({r: f"<rec {n}>" for n, r in enumerate(self.recordings)})
        return names

    def normalize(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: self.normalize(v)
                for k, v in value.items()
                if k not in ("hold_id", "debit_id") and not (k == "id" and str(v).startswith("use_"))
            }
        if isinstance(value, list | tuple):
            return [self.normalize(v) for v in value]
        if isinstance(value, str):
            for raw, name in self.names().items():
                value = value.replace(raw, name)
            return re.sub(r"(hold|use|dbt)_[0-9a-z]{26}", r"<\1>", value)
        return value

    def rows(self) -> Any:
        accounts = (self.personal, self.server, self.org_account)

        def read(s: Any) -> Any:
            usage = s.execute(
                select(UsageRecord)
                .where(UsageRecord.payer_account_id.in_(accounts))
                .order_by(UsageRecord.created_at, UsageRecord.event_id)
            ).scalars()
            holds = s.execute(
                select(
                    Hold.billing_account_id,
                    Hold.status,
                    Hold.amount_requested,
                    Hold.amount_held,
                    Hold.amount_captured,
                    Hold.expires_at,
                    Hold.reason,
                )
                .where(Hold.billing_account_id.in_(accounts))
                .order_by(Hold.created_at, Hold.amount_requested)
            ).all()
            transfers = s.execute(
                select(
                    Transfer.kind, Transfer.phase, Transfer.amount, Transfer.balance_after, Transfer.reason
                )
                .where(
                    Transfer.wallet_account_id.in_(
                        [s.get(BillingAccount, a).wallet_account_id for a in accounts]
                    )
                )
                .order_by(Transfer.id)
            ).all()
            caps = s.execute(
                select(CapUsage.held, CapUsage.used).where(CapUsage.cap_id.in_([self.auth, self.server_auth]))
            ).all()
            attributions = s.execute(
                select(
                    MeetingAttribution.meeting_id,
                    MeetingAttribution.payer_account_id,
                    MeetingAttribution.reason,
                )
                .where(MeetingAttribution.payer_account_id.in_(accounts))
                .order_by(MeetingAttribution.meeting_id)
            ).all()
            keys = s.execute(
                select(IdempotencyRecord.scope, IdempotencyRecord.key)
                .where(IdempotencyRecord.scope.like("usage.%"))
                .where(
                    IdempotencyRecord.resource_id.in_(self.recordings)
                    | IdempotencyRecord.scope.like(f"%:{self.personal}")
                    | IdempotencyRecord.scope.like(f"%:{self.server}")
                )
            ).all()
            return {
                "usage": [
                    {
                        k: v
                        for k, v in vars(u).items()
                        if not k.startswith("_") and k not in ("id", "hold_id", "debit_id", "event_id")
                    }
                    for u in usage
                ],
                "holds": [tuple(h) for h in holds],
                "transfers": [tuple(t) for t in transfers],
                "caps": sorted(tuple(c) for c in caps),
                "attributions": [tuple(a) for a in attributions],
                "keys": sorted(tuple(k) for k in keys),
            }

        return self.normalize(self.c.db.read(read))


START = st.tuples(
    st.just("start"),
    st.sampled_from(["personal", "server"]),
    st.sampled_from([5, 30, 200]),
    st.booleans(),
    st.booleans(),
)
OPS = st.one_of(
    START,
    st.tuples(
        st.just("event"),
        st.sampled_from(["personal", "server"]),
        st.sampled_from(["ask_question", "chat_to_speech_message"]),
    ),
    st.tuples(st.just("extend"), st.integers(0, 5), st.sampled_from([5, 60, 500]), st.booleans()),
    st.tuples(st.just("finish"), st.integers(0, 5), st.sampled_from([0, 90, 1_800, 30_000])),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("advance"), st.sampled_from([1, 20, 200])),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, min_size=1, max_size=14), retries=st.lists(st.integers(0, 13), max_size=3))
def test_the_functions_answer_and_write_what_the_python_path_does(
    db: Database, ops: list[Any], retries: list[int]
) -> None:
    clock = ManualClock()
    python, fast = World(db, clock, fast=False), World(db, clock, fast=True)
    done: list[tuple[Any, int]] = []
    for step, op in enumerate(ops):
        if op[0] == "advance":
            clock.advance(timedelta(minutes=op[1]))
            continue
        outcomes = [world.run(op, step) for world in (python, fast)]
        assert outcomes[1] == outcomes[0], (op, outcomes)
        done.append((op, step))
        if step in retries and done:  # the same request again, under its first key
            again = [world.run(("retry", *done[step % len(done)]), 0) for world in (python, fast)]
            assert again[1] == again[0]
        clock.advance(timedelta(seconds=1))
    assert fast.rows() == python.rows()
    assert db.read(lambda s: verify(s, first_only=False)) == []


def test_the_facts_twin_reads_what_the_orm_reads(db: Database) -> None:
    clock = ManualClock()
    world = World(db, clock, fast=True)
    c = world.c
    c.db.write(lambda s: c.usage.set_default_order(s, world.user, [world.auth], "order"))
    # A finished recording gives a meeting its original payer; one still open blocks the meeting.
    first = world.run(("start", "personal", 5, False, True), 1)
    world.run(("finish", 0, 60), 2)
    world.run(("start", "personal", 5, False, False), 3)
    world.run(("event", "server", "chat_to_speech_message"), 4)
    wheres = [
        facts.Where("personal", world.user, None, f"{world.user}-m1", None, "usage.start", "s1"),
        facts.Where("personal", world.user, None, f"{world.user}-m3"),
        facts.Where(
            "server", world.user, world.guild, None, "chat_to_speech_message", "usage.event", "e4", 50
        ),
        facts.Where("server", world.user, world.guild, None, "chat_to_speech_message", None, None, 1),
        facts.Where("server", world.user, snowflake()),  # a server nobody has used yet
        facts.Where("personal", snowflake(), None),  # a person nobody has seen yet
    ]
    assert first["payer_kind"] == "organization"
    for where in wheres:
        for moment in (clock.now(), clock.now() + timedelta(days=40)):  # later: allowances due, holds lapsed
            orm = db.read(lambda s, w=where, m=moment: facts.gather(s, c.ledger, w, m, c.catalog))
            one = fast_path.gather(db, where, moment, c.catalog)
            assert one == orm, where


def test_each_step_of_a_recording_stays_within_its_round_trip_budget(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    world = World(db, clock, fast=True)
    c = world.c
    c.db.write(
        lambda s: c.ledger.issue_grant(
            s,
            account_id=world.personal,
            amount=500 * MC,
            source="promotional",
            idempotency_key="p",
            cause_type="t",
        )
    )
    # The month's free allowance is issued on first use (the Python path); then the common case.
    assert "error" not in world.run(("start", "personal", 5, False, False), 1)
    trips: list[str] = []
    run_autocommit = db.run_autocommit

    def autocommit(statement: Any, args: Any, attempts: int = 8, group: str | None = None) -> Any:
        trips.append(statement.name)
        return run_autocommit(statement, args, attempts, group)

    def count(*_: Any) -> None:
        trips.append("session statement")

    monkeypatch.setattr(db, "run_autocommit", autocommit)
    listeners = [("before_cursor_execute", count), ("begin", count), ("commit", count), ("rollback", count)]
    for name, fn in listeners:
        event.listen(db.engine, name, fn)
    try:
        budget: dict[str, list[str]] = {}
        for step, op in [
            ("start", ("start", "personal", 30, False, False)),
            ("extend", ("extend", 0, 10, False)),
            ("finish", ("finish", 0, 25 * 60)),
            ("event", ("event", "personal", "ask_question")),
        ]:
            trips.clear()
            outcome = world.run(op, len(budget) + 10)
            assert "error" not in outcome, outcome
            budget[step] = list(trips)
    finally:
        for name, fn in listeners:
            event.remove(db.engine, name, fn)
    assert budget == {
        "start": ["chronote_usage_facts", "chronote_usage_try_start"],
        "extend": ["chronote_usage_try_extend"],
        "finish": ["chronote_usage_try_finish"],
        "event": ["chronote_usage_facts", "chronote_usage_try_event"],
    }
    assert all(len(trips) <= 4 for trips in budget.values())
