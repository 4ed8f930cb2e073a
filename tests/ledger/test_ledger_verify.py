"""``verify`` catches each kind of corruption, naming the check and the rows involved; the
``verify`` command exits 0 on a clean ledger and non-zero with one line on a corrupted one.

The ledger lives in a database of its own; each corruption is made and verified inside one
transaction that is then rolled back, so every test starts from the same clean books.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from chronote_billing.accounts.service import AccountService
from chronote_billing.cli import output
from chronote_billing.cli.main import app
from chronote_billing.container import Container
from chronote_billing.core.clock import ManualClock
from chronote_billing.core.db import Database
from chronote_billing.ledger.service import CapSpec, LedgerService
from chronote_billing.ledger.verify import verify
from tests.conftest import fresh_database


@dataclass
class Books:
    """A small ledger with one of everything: grants, a captured hold, an open hold, a capped debit."""

    db: Database
    account: str
    wallet: str
    grant: str
    other_grant: str
    captured_hold: str
    open_hold: str
    debit: str
    cap_id: str
    period: str


@pytest.fixture(scope="module")
def books() -> Iterator[Books]:
    db = fresh_database("verify")
    clock = ManualClock()
    ledger = LedgerService(clock)
    accounts = AccountService(clock, ledger)
    account = db.write(lambda s: accounts.get_or_create(s, "personal", "223456789012345678").id)
    wallet = db.read(lambda s: ledger._wallet(s, account).id)

    def grant(amount: int, key: str, **kw):  # type: ignore[no-untyped-def]
        return db.write(
            lambda s: ledger.issue_grant(
                s,
                account_id=account,
                amount=amount,
                idempotency_key=key,
                source="promotional",
                cause_type="admin",
                **kw,
            )
        )

    g1 = grant(10_000, "g1", expires_at=clock.now() + timedelta(days=30))
    g2 = grant(5_000, "g2")
    exp = clock.now() + timedelta(hours=1)
    cap = CapSpec("cap_verify", 50_000)
    captured = db.write(
        lambda s: ledger.place_hold(s, account_id=account, amount=3_000, expires_at=exp, idempotency_key="h1")
    )
    db.write(lambda s: ledger.capture_hold(s, hold_id=captured.id, amount=2_000, idempotency_key="c1"))
    open_hold = db.write(
        lambda s: ledger.place_hold(
            s, account_id=account, amount=1_500, expires_at=exp, idempotency_key="h2", cap=cap
        )
    )
    debit = db.write(lambda s: ledger.debit(s, account_id=account, amount=700, idempotency_key="d1", cap=cap))
    assert db.read(lambda s: verify(s, first_only=False)) == []
    yield Books(
        db,
        account,
        wallet,
        g1.id,
        g2.id,
        captured.id,
        open_hold.id,
        debit.id,
        cap.cap_id,
        debit.cap_period or "",
    )
    db.dispose()


@contextmanager
def corrupted(db: Database, sql: str, **params: object) -> Iterator[Session]:
    """A session that sees the ledger with one row changed by ``sql``; rolled back afterwards."""
    with db.engine.connect() as conn:
        transaction = conn.begin()
        try:
            assert conn.execute(text(sql), params).rowcount == 1
            with Session(bind=conn) as session:
                yield session
        finally:
            transaction.rollback()


def found(session: Session) -> set[tuple[str, str]]:
    """(check, the first id named in the message) for every violation."""
    ids = re.compile(r"\b(?:la|grt|hold|deb)_[0-9a-z_]+")
    result = set()
    for v in verify(session, first_only=False):
        match = ids.search(v.message)
        result.add((v.check, match.group(0) if match else ""))
    return result


def test_wallet_counter_off(books: Books) -> None:
    sql = "UPDATE ledger_accounts SET debits_posted = debits_posted + 1 WHERE id = :w"
    with corrupted(books.db, sql, w=books.wallet) as session:
        assert found(session) == {("wallet_balance", books.wallet), ("wallet_grants", books.wallet)}
        first = verify(session)
    assert len(first) == 1 and first[0].check == "wallet_balance"
    assert f"account {books.account}" in first[0].message


def test_wallet_pending_counter_off(books: Books) -> None:
    sql = "UPDATE ledger_accounts SET debits_pending = debits_pending - 1 WHERE id = :w"
    with corrupted(books.db, sql, w=books.wallet) as session:
        assert found(session) == {("wallet_pending", books.wallet), ("wallet_grants", books.wallet)}


def test_grant_remaining_off(books: Books) -> None:
    sql = "UPDATE ledger_grants SET remaining = remaining - 1 WHERE id = :g"
    with corrupted(books.db, sql, g=books.other_grant) as session:
        assert found(session) == {("wallet_grants", books.wallet), ("grant_balance", books.other_grant)}


def test_grant_held_off(books: Books) -> None:
    sql = "UPDATE ledger_grants SET held = held + 1 WHERE id = :g"
    with corrupted(books.db, sql, g=books.other_grant) as session:
        assert found(session) == {("wallet_grants", books.wallet), ("grant_held", books.other_grant)}


def test_transfer_amount_mismatch(books: Books) -> None:
    sql = "UPDATE ledger_transfers SET amount = amount + 5 WHERE debit_id = :d AND phase = 'posted'"
    with corrupted(books.db, sql, d=books.debit) as session:
        assert found(session) == {
            ("wallet_balance", books.wallet),
            ("grant_balance", books.grant),
            ("debit", books.debit),
        }


def test_capture_posting_more_than_its_pending(books: Books) -> None:
    sql = "UPDATE ledger_transfers SET amount = amount + 2000 WHERE hold_id = :h AND phase = 'post'"
    with corrupted(books.db, sql, h=books.captured_hold) as session:
        violations = verify(session, first_only=False)
    assert violations[0].check == "two_phase"
    assert {v.check for v in violations} >= {"two_phase", "wallet_balance", "hold_capture"}


def test_unresolved_pending_on_captured_hold(books: Books) -> None:
    sql = (
        "INSERT INTO ledger_transfers (debit_account_id, credit_account_id, wallet_account_id, amount, phase,"
        " kind, grant_id, hold_id, balance_after, reason, created_at)"
        " SELECT debit_account_id, credit_account_id, wallet_account_id, 250, 'pending', 'hold', grant_id,"
        " hold_id, balance_after, 'stray', created_at FROM ledger_transfers"
        " WHERE hold_id = :h AND phase = 'pending'"
    )
    with corrupted(books.db, sql, h=books.captured_hold) as session:
        assert found(session) == {
            ("wallet_pending", books.wallet),
            ("grant_held", books.grant),
            ("hold_backing", books.captured_hold),
            ("hold_settled", books.captured_hold),
        }


def test_cap_counter_off(books: Books) -> None:
    sql = "UPDATE ledger_cap_usage SET used = used + 1 WHERE cap_id = :c AND period = :p"
    with corrupted(books.db, sql, c=books.cap_id, p=books.period) as session:
        violations = verify(session, first_only=False)
    assert [v.check for v in violations] == ["cap_usage"]
    assert f"cap {books.cap_id} {books.period}" in violations[0].message
    assert "used 701" in violations[0].message


def test_issued_differs_from_grant_amount(books: Books) -> None:
    sql = "UPDATE ledger_grants SET amount = amount + 100 WHERE id = :g"
    with corrupted(books.db, sql, g=books.other_grant) as session:
        violations = verify(session, first_only=False)
    assert [(v.check, books.other_grant in v.message) for v in violations] == [
        ("issuance", False),
        ("grant_issue", True),
    ]
    assert "issued 15000 but grants total 15100" in violations[0].message


def test_transfer_naming_no_account(books: Books) -> None:
    sql = (
        "UPDATE ledger_transfers SET debit_account_id = 'la_gone', wallet_account_id = 'la_gone'"
        " WHERE debit_id = :d AND phase = 'posted'"
    )
    with corrupted(books.db, sql, d=books.debit) as session:
        violations = verify(session, first_only=False)
    assert violations[0].check == "reference"
    assert "debit_account_id 'la_gone', which is no ledger account" in violations[0].message
    assert [v.check for v in violations if v.check == "reference"] == ["reference", "reference"]


@pytest.mark.parametrize(
    ("table", "row"), [("ledger_holds", "open_hold"), ("ledger_debits", "debit")], ids=["hold", "debit"]
)
def test_hold_or_debit_naming_no_wallet(books: Books, table: str, row: str) -> None:
    sql = f"UPDATE {table} SET wallet_account_id = 'la_gone' WHERE id = :id"
    with corrupted(books.db, sql, id=getattr(books, row)) as session:
        violations = verify(session, first_only=False)
    assert [v.check for v in violations] == ["reference"]
    assert violations[0].message == (
        f"{table.removeprefix('ledger_')[:-1]} {getattr(books, row)} names wallet_account_id 'la_gone',"
        " which is no ledger account"
    )


def test_every_corruption_was_rolled_back(books: Books) -> None:
    assert books.db.read(lambda s: verify(s, first_only=False)) == []


# ------------------------------------------------------------------------ the command


@pytest.fixture
def cli(books: Books, clock: ManualClock):  # type: ignore[no-untyped-def]
    output.set_container(Container(db=books.db, clock=clock))
    yield CliRunner()
    output.set_container(None)


def test_verify_command_on_clean_ledger(cli: CliRunner) -> None:
    result = cli.invoke(app, ["verify"])
    assert result.exit_code == 0, result.output
    assert "ledger ok" in result.output


def test_verify_command_on_corrupted_ledger(cli: CliRunner, books: Books) -> None:
    change = "UPDATE ledger_grants SET held = held + :n WHERE id = :g"
    with books.db.engine.begin() as conn:
        conn.execute(text(change), {"n": 1, "g": books.other_grant})
    try:
        result = cli.invoke(app, ["verify"])
    finally:
        with books.db.engine.begin() as conn:
            conn.execute(text(change), {"n": -1, "g": books.other_grant})
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ledger invariant violated: wallet_grants")
    assert books.wallet in lines[0]
    assert "Traceback" not in result.output
    assert cli.invoke(app, ["verify"]).exit_code == 0
