"""Operator commands: balance, statement, grant, verify, sweep and API keys; account references
and errors as one line with a non-zero exit, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from chronote_billing.cli import output
from chronote_billing.cli.main import app
from chronote_billing.container import Container
from tests.factories import snowflake


@pytest.fixture
def cli(db, clock) -> Iterator[CliRunner]:  # type: ignore[no-untyped-def]
    output.set_container(Container(db=db, clock=clock))
    width = output.console.width
    output.console.width = 200  # no wrapping of ids in tables and messages
    yield CliRunner()
    output.console.width = width
    output.set_container(None)


def run(cli: CliRunner, *args: str) -> tuple[int, str]:
    result = cli.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def one_line_error(output_text: str) -> str:
    lines = [line for line in output_text.splitlines() if line.strip()]
    assert len(lines) == 1, output_text
    assert lines[0].startswith("error: ") and "Traceback" not in output_text
    return lines[0]


def test_grant_balance_and_statement_by_every_reference(cli, db, ledger, make_account) -> None:  # type: ignore[no-untyped-def]
    user = snowflake()
    personal = make_account("personal", user)
    code, out = run(
        cli, "grant", f"personal:{user}", "12.5", "--idempotency-key", "cli-g1", "--description", "welcome"
    )
    assert code == 0, out
    assert "granted 12 credits (12,500 millicredits) as grt_" in out
    code, again = run(
        cli, "grant", f"personal:{user}", "12.5", "--idempotency-key", "cli-g1", "--description", "welcome"
    )
    assert code == 0 and again == out  # the retry reports the same grant
    assert db.read(lambda s: ledger.balance(s, personal)).posted == 12_500

    code, out = run(cli, "balance", personal)
    assert code == 0, out
    # Whole credits: 12.5 granted and this month's free allowance of 120, not issued yet.
    assert "available 132 credits" in out and "held 0" in out and "welcome" not in out
    assert "exactly 132,500 millicredits" in out and "allowance of 120 credits" in out
    code, by_ref = run(cli, "balance", f"user:{user}")
    assert code == 0 and by_ref == out

    code, out = run(cli, "grant", personal, "1", "-k", "cli-conflict")
    assert code == 0
    code, out = run(cli, "grant", personal, "2", "-k", "cli-conflict")
    assert code != 0 and "[idempotency_conflict]" in one_line_error(out)

    for n in range(3):
        db.write(lambda s, n=n: ledger.debit(s, account_id=personal, amount=100 + n, idempotency_key=f"d{n}"))
    code, out = run(cli, "statement", f"personal:{user}", "--limit", "2")
    assert code == 0, out
    assert "usage" in out and "<1" in out and "more: --starting-after" in out
    cursor = out.rsplit("--starting-after", 1)[1].split()[0]
    code, rest = run(cli, "statement", personal, "--limit", "10", "--starting-after", cursor)
    assert code == 0 and "credits added" in rest and "more:" not in rest
    code, raw = run(cli, "statement", personal, "--raw", "--limit", "10")
    assert code == 0 and "posted" in raw and "-102" in raw and "+12,500" in raw


def test_server_accounts_and_expiring_grants(cli, db, ledger, clock, make_account) -> None:  # type: ignore[no-untyped-def]
    guild = snowflake()
    server = make_account("server", guild)
    code, out = run(
        cli, "grant", f"server:{guild}", "3", "-k", "exp", "--expires-in-days", "2", "--source", "comp"
    )
    assert code == 0, out
    assert "expiring 2026-11-04 00:00 UTC" in out
    clock.advance(timedelta(hours=3))  # a retry later the same day asks for the same grant
    code, again = run(
        cli, "grant", f"guild:{guild}", "3", "-k", "exp", "--expires-in-days", "2", "--source", "comp"
    )
    assert code == 0 and again == out
    grants = db.read(lambda s: ledger.list_grants(s, server))
    assert [(g.amount, g.source) for g in grants] == [(3_000, "comp")]


@pytest.mark.parametrize("amount", ["abc", "0", "1.2345", "12.5.1", ""])
def test_bad_amounts_are_one_line_errors(cli, make_account, amount: str) -> None:  # type: ignore[no-untyped-def]
    account = make_account()
    code, out = run(cli, "grant", account, amount, "-k", "bad")
    assert code != 0
    one_line_error(out)


def test_unknown_accounts_and_bad_references(cli) -> None:  # type: ignore[no-untyped-def]
    for ref in ("acct_missing", "personal:123456789012345678999", "server:", "nobody", "planet:1"):
        code, out = run(cli, "balance", ref)
        assert code != 0, ref
        assert "[not_found]" in one_line_error(out)
    code, out = run(cli, "grant", "acct_missing", "5", "-k", "x")
    assert code != 0 and "[not_found]" in one_line_error(out)
    code, out = run(cli, "grant", "acct_missing", "5", "-k", "x", "--source", "purchase")
    assert code != 0 and "source must be" in one_line_error(out)


def test_verify_and_sweep(cli, db, ledger, clock, make_account) -> None:  # type: ignore[no-untyped-def]
    account = make_account()
    db.write(
        lambda s: ledger.issue_grant(
            s,
            account_id=account,
            amount=5_000,
            idempotency_key="g",
            source="promotional",
            cause_type="admin",
            expires_at=clock.now() + timedelta(hours=1),
        )
    )
    db.write(
        lambda s: ledger.place_hold(
            s,
            account_id=account,
            amount=1_000,
            expires_at=clock.now() + timedelta(minutes=30),
            idempotency_key="h",
        )
    )
    clock.advance(timedelta(hours=2))
    assert db.read(lambda s: ledger.balance(s, account)).posted == 5_000  # nothing settled yet
    code, out = run(cli, "sweep")
    assert code == 0, out
    settled = int(out.split("settled ")[1].split()[0])
    assert settled >= 1  # this wallet's hold (its grant's remainder goes with it), and whatever else fell due
    assert db.read(lambda s: ledger.balance(s, account)).posted == 0
    assert db.read(lambda s: ledger.wallets_due(s)) == []
    code, out = run(cli, "sweep")
    assert code == 0 and "settled 0" in out
    code, out = run(cli, "verify")
    assert code == 0 and "ledger ok" in out


def test_api_keys(cli, db) -> None:  # type: ignore[no-untyped-def]
    code, out = run(
        cli, "api-key", "create", "--name", "discord-bot", "--scopes", "accounts:read,holds:write"
    )
    assert code == 0, out
    key_id = out.split("created ")[1].split()[0]
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("cbk_")
    code, listing = run(cli, "api-key", "list")
    assert code == 0 and key_id in listing and secret not in listing
    code, out = run(cli, "api-key", "revoke", key_id)
    assert code == 0 and f"revoked {key_id}" in out
    container = output.container()
    with pytest.raises(Exception, match="unknown or revoked"):
        db.read(lambda s: container.api_keys.authenticate(s, secret))
    code, out = run(cli, "api-key", "revoke", "key_missing")
    assert code != 0 and "[not_found]" in one_line_error(out)
    code, out = run(cli, "api-key", "create", "--name", "x", "--scopes", "root")
    assert code != 0 and "[validation_error]" in one_line_error(out)


def test_a_database_url_that_is_not_one_is_a_one_line_error(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from chronote_billing.config import DEFAULT_SQLITE_PATH, Settings

    output.set_container(None)
    monkeypatch.setattr("chronote_billing.core.db._default", None)  # no test database to fall back on
    monkeypatch.setenv("CHRONOTE_DATABASE_URL", "not a url")
    try:
        code, out = run(CliRunner(), "balance", "acct_whatever")
    finally:
        output.set_container(None)
    assert code == 1
    assert "CHRONOTE_DATABASE_URL is not a database URL" in one_line_error(out)
    # Set but empty means unset: the embedded SQLite database.
    monkeypatch.setenv("CHRONOTE_DATABASE_URL", "  ")
    assert Settings().database_url == f"sqlite:///{DEFAULT_SQLITE_PATH}"


def test_an_expiry_beyond_any_calendar_is_a_one_line_error(cli, make_account) -> None:  # type: ignore[no-untyped-def]
    acct = make_account()
    code, out = run(cli, "grant", acct, "5", "-k", "far", "--expires-in-days", "5000000")
    assert code == 2 and "--expires-in-days" in out and "36500" in out and "Traceback" not in out


def test_notifications_are_listed_for_an_account_by_any_reference(cli, db, make_account) -> None:  # type: ignore[no-untyped-def]
    guild = snowflake()
    acct = make_account("server", guild)
    db.write(
        lambda s: output.container().notifications.emit(
            s, "hold.declined", acct, {"n": 1}, dedupe_key=f"cli:{acct}"
        )
    )
    for ref in (acct, f"server:{guild}"):
        code, out = run(cli, "notifications", "--account", ref)
        assert code == 0 and "hold.declined" in out and acct in out, out
    code, out = run(cli, "notifications", "--account", "server:not-a-guild")
    assert code == 1 and one_line_error(out)
