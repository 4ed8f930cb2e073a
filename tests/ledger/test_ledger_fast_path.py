"""PostgreSQL's one-round-trip ledger functions (docs/decisions/0023) against the Python path.

The functions must handle the common case themselves, decline everything else before writing,
and leave exactly the ledger the Python path leaves: the differential test drives the same
random operations through both, on twin wallets, and compares every row they wrote.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from chronote_billing.accounts.service import AccountService
from chronote_billing.core.clock import ManualClock
from chronote_billing.core.db import Database
from chronote_billing.core.errors import BillingError
from chronote_billing.core.idempotency import IdempotencyRecord
from chronote_billing.core.write_combiner import ServerStatement
from chronote_billing.ledger.fast_path import _FUNCTION_SQL, _LedgerWrite
from chronote_billing.ledger.models import CapUsage, Grant, Hold, LedgerAccount, Transfer
from chronote_billing.ledger.schemas import HoldView
from chronote_billing.ledger.service import CapSpec, LedgerService
from chronote_billing.ledger.verify import verify

pytestmark = pytest.mark.postgres


def _call(session: Any, function: str, **args: Any) -> Any:
    """Call one database function directly, inside the session's transaction."""
    driver_args = _LedgerWrite(function, args, HoldView, lambda _session: None).driver_args()
    return session.connection().exec_driver_sql(_FUNCTION_SQL[function], driver_args).scalar()


def _open(db: Database, clock: ManualClock, *grants: dict[str, Any]) -> tuple[str, list[str]]:
    ledger = LedgerService(clock)
    accounts = AccountService(clock, ledger)
    owner = secrets.token_hex(6)

    def work(session: Any) -> tuple[str, list[str]]:
        account = accounts.get_or_create(session, "organization", owner)
        ids = [
            ledger.issue_grant(
                session,
                account_id=account.id,
                source="promotional",
                idempotency_key=f"g{n}",
                cause_type="test",
                **g,
            ).id
            for n, g in enumerate(grants)
        ]
        return account.id, ids

    return db.write(work)


def _count(db: Database, table: str) -> int:
    return db.read(lambda s: s.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


TABLES = ("ledger_transfers", "ledger_holds", "ledger_debits", "idempotency_records", "ledger_cap_usage")


def test_the_functions_handle_the_common_case(db: Database) -> None:
    clock = ManualClock()
    ledger = LedgerService(clock)
    account, (grant,) = _open(db, clock, {"amount": 10_000})
    expires = clock.now() + timedelta(hours=1)

    def try_hold(session: Any) -> Any:
        return _call(
            session,
            "ledger_try_place_hold",
            account=account,
            amount=4_000,
            allow_partial=False,
            expires_at=expires,
            now=clock.now(),
            cap_id=None,
            cap_limit=None,
            cap_period=None,
            scope=f"ledger.hold:{account}",
            key="h1",
            hash="x",
            result={"id": "hold_fast", "amount_held": 4_000, "partial": False},
            hold_id="hold_fast",
            reason="",
            metadata={},
            transfer_reason="hold",
        )

    assert db.write(try_hold) == {"id": "hold_fast", "amount_held": 4_000, "partial": False}
    assert db.write(try_hold)["id"] == "hold_fast"  # the same key and fingerprint: the first result

    def capture_elsewhere(session: Any) -> Any:
        # A session in another time zone still gets, and stores, UTC times like the Python path.
        session.execute(text("SET LOCAL TimeZone = 'America/New_York'"))
        return ledger.capture_hold(session, hold_id="hold_fast", amount=1_500, idempotency_key="c1")

    captured = db.write(capture_elsewhere)
    assert (captured.status, captured.amount_captured, captured.amount_held) == ("captured", 1_500, 4_000)
    assert captured.settled_at == clock.now() and captured.settled_at.utcoffset() == timedelta(0)
    stored = db.read(
        lambda s: s.execute(
            select(IdempotencyRecord.response).where(
                IdempotencyRecord.scope == f"ledger.hold_capture:{account}", IdempotencyRecord.key == "c1"
            )
        ).scalar_one()
    )
    assert stored["settled_at"].endswith("Z") and stored["expires_at"].endswith("Z")
    debit = db.write(lambda s: ledger.debit(s, account_id=account, amount=500, idempotency_key="d1"))
    assert debit.amount == 500
    balance = db.read(lambda s: ledger.balance(s, account))
    assert (balance.available, balance.held, balance.posted) == (8_000, 0, 8_000)
    kinds = db.read(
        lambda s: s.execute(
            select(Transfer.kind, Transfer.phase, Transfer.amount, Transfer.balance_after)
            .where(Transfer.grant_id == grant)
            .order_by(Transfer.id)
        ).all()
    )
    assert [tuple(k) for k in kinds] == [
        ("grant", "posted", 10_000, 10_000),
        ("hold", "pending", 4_000, 10_000),
        ("capture", "post", 1_500, 8_500),
        ("debit", "posted", 500, 8_000),
    ]
    assert db.read(lambda s: verify(s, first_only=False)) == []


@pytest.mark.parametrize(
    "case",
    ["unknown_account", "insufficient", "cap_reached", "conflicting_key", "past_expiry", "due_wallet"],
)
def test_a_declined_hold_writes_nothing(db: Database, case: str) -> None:
    clock = ManualClock()
    ledger = LedgerService(clock)
    account, _ = _open(db, clock, {"amount": 10_000, "expires_at": clock.now() + timedelta(minutes=5)})
    if case == "conflicting_key":
        db.write(
            lambda s: ledger.place_hold(
                s,
                account_id=account,
                amount=1,
                expires_at=clock.now() + timedelta(hours=1),
                idempotency_key="k",
            )
        )
    if case == "due_wallet":
        clock.advance(timedelta(minutes=10))  # the grant expired: the wallet has breakage to settle
    args = {
        "account": "acct_nobody" if case == "unknown_account" else account,
        "amount": 20_000 if case == "insufficient" else 3_000,
        "allow_partial": False,
        "expires_at": clock.now() - timedelta(seconds=1)
        if case == "past_expiry"
        else clock.now() + timedelta(hours=1),
        "now": clock.now(),
        "cap_id": "cap_test" if case == "cap_reached" else None,
        "cap_limit": 1_000 if case == "cap_reached" else None,
        "cap_period": "2026-11" if case == "cap_reached" else None,
        "scope": f"ledger.hold:{account}",
        "key": "k",
        "hash": "other-parameters",
        "result": {},
        "hold_id": "hold_declined",
        "reason": "",
        "metadata": {},
        "transfer_reason": "hold",
    }
    before = {t: _count(db, t) for t in TABLES}
    assert db.write(lambda s: _call(s, "ledger_try_place_hold", **args)) is None
    assert {t: _count(db, t) for t in TABLES} == before


# ----------------------------------------------------------------------------- differential

AMOUNTS = st.integers(min_value=1, max_value=6_000)
GRANT = st.tuples(
    st.just("grant"),
    st.integers(1_000, 8_000),
    st.sampled_from([10, 50, 90]),
    st.sampled_from([None, None, 30, 90, 600]),  # expiry, minutes from now
    st.sampled_from([0, 0, 20]),  # effective after, minutes
)
OPS = st.one_of(
    GRANT,
    st.tuples(st.just("debit"), AMOUNTS, st.booleans()),
    st.tuples(st.just("hold"), AMOUNTS, st.booleans(), st.sampled_from([5, 45, 240]), st.booleans()),
    st.tuples(st.just("capture"), st.integers(0, 9), st.integers(0, 7_000)),
    st.tuples(
        st.just("extend"),
        st.integers(0, 9),
        st.sampled_from([0, 500, 3_000, 9_000]),
        st.booleans(),
        st.sampled_from([None, 10, 60]),
        st.booleans(),
    ),
    st.tuples(st.just("release"), st.integers(0, 9)),
    st.tuples(st.just("freeze"), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("retry"), st.integers(0, 30), st.booleans()),
    st.tuples(st.just("advance"), st.sampled_from([1, 10, 35, 100])),
)


class Twin:
    """One wallet driven through one service; ids are recorded in creation order."""

    def __init__(self, db: Database, clock: ManualClock, fast: bool, own_transaction: bool = False) -> None:
        self.db = db
        self.ledger = LedgerService(clock, db_functions=fast)
        self.own_transaction = own_transaction  # use commit_* where the ledger has one
        self.account, _ = _open(db, clock)
        self.cap_id = "cap_" + secrets.token_hex(4)
        self.grants: list[str] = []
        self.holds: list[str] = []
        self.done: list[tuple[str, dict[str, Any]]] = []  # (operation, kwargs) of every write

    def run(self, op: str, kwargs: dict[str, Any]) -> Any:
        method = getattr(self.ledger, op)
        committed = getattr(self.ledger, f"commit_{op}", None)
        try:
            if self.own_transaction and committed is not None:
                result = committed(self.db, **kwargs)
            else:
                result = self.db.write(lambda s: method(s, **kwargs))
        except BillingError as exc:
            return self.normalize(("error", type(exc).__name__, str(exc)))
        self.done.append((op, kwargs))
        if op == "issue_grant":
            self.grants.append(result.id)
        if op == "place_hold" and result.id not in self.holds:
            self.holds.append(result.id)
        return self.normalize(result.model_dump(mode="json"))

    def normalize(self, value: Any) -> Any:
        """Replace this twin's ids with their creation index, so twins compare equal."""
        names = {self.account: "<acct>", self.cap_id: "<cap>"}
        names.update({g: f"<grant {n}>" for n, g in enumerate(self.grants)})
        names.update({h: f"<hold {n}>" for n, h in enumerate(self.holds)})
        if isinstance(value, dict):
            return {k: self.normalize(v) for k, v in value.items() if k not in ("id",) or v in names}
        if isinstance(value, list | tuple):
            return [self.normalize(v) for v in value]
        if isinstance(value, str):
            for raw, name in names.items():
                value = value.replace(raw, name)
            return value
        return value

    def rows(self) -> dict[str, Any]:
        def read(session: Any) -> dict[str, Any]:
            wallet = session.execute(
                select(
                    LedgerAccount.id,
                    LedgerAccount.credits_posted,
                    LedgerAccount.debits_posted,
                    LedgerAccount.debits_pending,
                    LedgerAccount.next_due_at,
                ).where(LedgerAccount.billing_account_id == self.account)
            ).one()
            transfers = session.execute(
                select(
                    Transfer.kind,
                    Transfer.phase,
                    Transfer.amount,
                    Transfer.grant_id,
                    Transfer.hold_id,
                    Transfer.balance_after,
                    Transfer.reason,
                    Transfer.created_at,
                    Transfer.debit_id.is_(None),
                    Transfer.pending_id.is_(None),
                )
                .where(Transfer.wallet_account_id == wallet.id)
                .order_by(Transfer.id)
            ).all()
            grants = session.execute(
                select(Grant.id, Grant.remaining, Grant.held, Grant.status).where(
                    Grant.wallet_account_id == wallet.id
                )
            ).all()
            holds = session.execute(
                select(
                    Hold.id,
                    Hold.status,
                    Hold.amount_requested,
                    Hold.amount_held,
                    Hold.amount_captured,
                    Hold.expires_at,
                    Hold.settled_at,
                ).where(Hold.wallet_account_id == wallet.id)
            ).all()
            caps = session.execute(
                select(CapUsage.period, CapUsage.held, CapUsage.used).where(CapUsage.cap_id == self.cap_id)
            ).all()
            records = session.execute(
                select(IdempotencyRecord.scope, IdempotencyRecord.key, IdempotencyRecord.response).where(
                    IdempotencyRecord.scope.like(f"%:{self.account}")
                )
            ).all()
            return {
                "wallet": tuple(wallet)[1:],
                "transfers": [tuple(t) for t in transfers],
                "grants": [tuple(g) for g in grants],
                "holds": [tuple(h) for h in holds],
                "caps": [tuple(c) for c in caps],
                # Both paths must store documents that read back as the same result.
                "records": [(r.scope, r.key, _as_result(r.response)) for r in records],
            }

        rows = self.normalize(self.db.read(read))
        return {
            name: value if name in ("wallet", "transfers") else sorted(value) for name, value in rows.items()
        }


def _as_result(document: dict[str, Any]) -> tuple[Any, ...]:
    def value(v: Any) -> Any:
        if isinstance(v, str) and len(v) >= 19 and v[4] == "-" and v[10] == "T":
            return datetime.fromisoformat(v.replace("Z", "+00:00")).isoformat()
        return v

    return tuple(sorted((k, json.dumps(value(v), sort_keys=True)) for k, v in document.items() if k != "id"))


def _kwargs(
    twin: Twin, op: tuple[Any, ...], clock: ManualClock, step: int
) -> tuple[str, dict[str, Any]] | None:
    now = clock.now()
    key = f"k{step}"
    kind = op[0]
    if kind == "grant":
        _, amount, priority, expiry, effective = op
        return "issue_grant", {
            "account_id": twin.account,
            "amount": amount,
            "source": "promotional",
            "idempotency_key": key,
            "cause_type": "test",
            "priority": priority,
            "effective_at": now + timedelta(minutes=effective),
            "expires_at": None if expiry is None else now + timedelta(minutes=expiry),
        }
    if kind == "debit":
        _, amount, capped = op
        return "debit", {
            "account_id": twin.account,
            "amount": amount,
            "idempotency_key": key,
            "reason": "metered",
            "cap": CapSpec(twin.cap_id, 9_000) if capped else None,
        }
    if kind == "hold":
        _, amount, partial, minutes, capped = op
        return "place_hold", {
            "account_id": twin.account,
            "amount": amount,
            "expires_at": now + timedelta(minutes=minutes),
            "idempotency_key": key,
            "allow_partial": partial,
            "reason": "recording",
            "metadata": {"meeting": step},
            "cap": CapSpec(twin.cap_id, 9_000) if capped else None,
        }
    if kind == "extend":
        if not twin.holds:
            return None
        _, index, amount, partial, minutes, capped = op
        return "extend_hold", {
            "hold_id": twin.holds[index % len(twin.holds)],
            "idempotency_key": key,
            "amount": amount,
            "expires_at": None if minutes is None else now + timedelta(minutes=minutes),
            "allow_partial": partial,
            "cap_limit": 9_000 if capped else None,
        }
    if kind in ("capture", "release"):
        if not twin.holds:
            return None
        hold_id = twin.holds[op[1] % len(twin.holds)]
        if kind == "capture":
            return "capture_hold", {"hold_id": hold_id, "amount": op[2], "idempotency_key": key}
        return "release_hold", {"hold_id": hold_id, "idempotency_key": key}
    if kind == "freeze":
        if not twin.grants:
            return None
        return "set_grant_frozen", {
            "grant_id": twin.grants[op[1] % len(twin.grants)],
            "frozen": op[2],
            "idempotency_key": key,
        }
    if kind == "retry":
        if not twin.done:
            return None
        name, previous = twin.done[op[1] % len(twin.done)]
        again = dict(previous)
        if op[2] and "amount" in again:  # the same key with other parameters: a conflict
            again["amount"] = again["amount"] + 1
        return name, again
    raise AssertionError(kind)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(grants=st.lists(GRANT, min_size=1, max_size=4), ops=st.lists(OPS, min_size=1, max_size=30))
def test_the_functions_leave_the_ledger_the_python_path_leaves(
    db: Database, grants: list[Any], ops: list[Any]
) -> None:
    clock = ManualClock()
    twins = [
        Twin(db, clock, fast=False),  # the Python path: the reference
        Twin(db, clock, fast=True),  # the functions inside the caller's transaction
        Twin(db, clock, fast=True, own_transaction=True),  # the functions, committed at once
    ]
    for step, op in enumerate(grants + ops):
        if op[0] == "advance":
            clock.advance(timedelta(minutes=op[1]))
            continue
        calls = [(twin, _kwargs(twin, op, clock, step)) for twin in twins]
        if any(call is None for _, call in calls):
            continue
        outcomes = [twin.run(*call) for twin, call in calls if call is not None]
        assert outcomes[1] == outcomes[0] and outcomes[2] == outcomes[0], (op, outcomes)
        # Distinct creation times: spend order never falls back to comparing random ids.
        clock.advance(timedelta(seconds=1))
    reference = twins[0].rows()
    assert twins[1].rows() == reference
    assert twins[2].rows() == reference
    for twin in twins:
        assert twin.db.read(lambda s, t=twin: t.ledger.balance(s, t.account)).available >= 0


def test_a_write_of_its_own_is_one_statement(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """commit_* send one statement in autocommit, and nothing through the session engine."""
    from sqlalchemy import event

    clock = ManualClock()
    ledger = LedgerService(clock)
    account, _ = _open(db, clock, {"amount": 10_000})
    in_session: list[str] = []
    autocommitted: list[str] = []
    groups: list[str | None] = []
    run_autocommit = db.run_autocommit

    def record(
        statement: ServerStatement, args: list[str | None], attempts: int = 8, group: str | None = None
    ) -> Any:
        autocommitted.append(statement.sql)
        groups.append(group)
        return run_autocommit(statement, args, attempts, group)

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        in_session.append(statement)

    monkeypatch.setattr(db, "run_autocommit", record)
    event.listen(db.engine, "before_cursor_execute", count)
    try:
        hold = ledger.commit_place_hold(
            db,
            account_id=account,
            amount=3_000,
            expires_at=clock.now() + timedelta(hours=1),
            idempotency_key="h",
        )
        ledger.commit_capture_hold(db, hold_id=hold.id, amount=1_000, idempotency_key="c")
        ledger.commit_debit(db, account_id=account, amount=500, idempotency_key="d")
        ledger.commit_capture_hold(
            db, hold_id=hold.id, amount=1_000, idempotency_key="c", account_id=account
        )  # a retry, in the account's group: the first result
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert in_session == []
    assert [s.split("(")[0] for s in autocommitted] == [
        "SELECT ledger_try_place_hold",
        "SELECT ledger_try_capture_hold",
        "SELECT ledger_try_debit",
        "SELECT ledger_try_capture_hold",
    ]
    # Writes name their account as their group; a capture only when the caller gives it.
    assert groups == [account, None, account, account]
    assert db.read(lambda s: ledger.balance(s, account)).available == 8_500


def test_autocommit_statements_raise_sqlalchemy_errors_and_keep_the_pool_usable(db: Database) -> None:
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError) as failed:
        db.run_autocommit(ServerStatement("divide", "SELECT 1 / $1::int"), ["0"])
    assert failed.value.orig is not None and getattr(failed.value.orig, "sqlstate", None) == "22012"
    add_one = ServerStatement("add_one", "SELECT $1::int + 1")
    for n in range(3):  # the connection went back to the pool healthy and in autocommit
        assert db.run_autocommit(add_one, [str(n)]) == str(n + 1)
    assert db.run_autocommit(ServerStatement("nothing", "SELECT 1 WHERE false"), []) is None
    assert db.run_autocommit(ServerStatement("null", "SELECT NULL::int"), []) is None


def test_autocommit_statements_are_prepared_again_when_the_session_forgot_them(db: Database) -> None:
    """A pooled connection whose prepared statements were dropped (DEALLOCATE ALL, a pooler in
    between) prepares them again rather than failing the write."""
    add_one = ServerStatement("add_one_again", "SELECT $1::int + 1")
    assert db.run_autocommit(add_one, ["1"]) == "2"
    with db._autocommit_pool.connection() as conn:  # the one connection the pool holds
        conn.execute("DEALLOCATE ALL")
    assert db.run_autocommit(add_one, ["41"]) == "42"


def test_autocommit_connections_can_be_opened_ahead_of_concurrent_callers(db: Database) -> None:
    db.open_autocommit_connections(3)
    stats = db._autocommit_pool.get_stats()
    assert stats["pool_size"] >= 3
    assert stats["pool_available"] >= 3  # open, idle and back in the pool: three callers find one each
    pid = ServerStatement("backend_pid", "SELECT pg_backend_pid()")
    assert db.run_autocommit(pid, []) is not None


def test_extending_a_hold_is_one_function_call_in_the_common_case(db: Database) -> None:
    """The extension's function answers the common case itself (not the Python path)."""
    clock = ManualClock()
    ledger = LedgerService(clock)
    account, _ = _open(db, clock, {"amount": 10_000})
    hold = db.write(
        lambda s: ledger.place_hold(
            s,
            account_id=account,
            amount=2_000,
            expires_at=clock.now() + timedelta(minutes=30),
            idempotency_key="h",
        )
    )
    later = clock.now() + timedelta(hours=1)
    write = ledger.plan_extend_hold(hold_id=hold.id, idempotency_key="e", amount=3_000, expires_at=later)

    def extend(session: Any) -> Any:
        return (
            session.connection().exec_driver_sql(_FUNCTION_SQL[write.function], write.driver_args()).scalar()
        )

    done = db.write(extend)
    assert done is not None and done["amount_held"] == 5_000 and done["partial"] is False
    assert db.write(extend) == done  # the same key and request: the first result
    again = db.write(
        lambda s: ledger.extend_hold(s, hold_id=hold.id, idempotency_key="e", amount=3_000, expires_at=later)
    )
    assert again.amount_held == 5_000 and again.expires_at == later
    assert db.read(lambda s: ledger.balance(s, account)).held == 5_000
    assert db.read(lambda s: verify(s, first_only=False)) == []
