"""Operator commands on the ledger: balance, statement, grant, verify, sweep."""

from __future__ import annotations

import functools
from datetime import UTC, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from chronote_billing import retention
from chronote_billing.accounts.models import BillingAccount
from chronote_billing.balances import service as balances
from chronote_billing.cli.output import (
    console,
    container,
    fail,
    handle_errors,
    millicredits_to_credits,
    parse_credits,
)
from chronote_billing.core.errors import NotFound
from chronote_billing.credits_text import whole_credits
from chronote_billing.ledger.verify import CHECKS
from chronote_billing.ledger.verify import verify as verify_ledger

KIND_ALIASES = {
    "personal": "personal",
    "user": "personal",
    "server": "server",
    "guild": "server",
    "org": "organization",
    "organization": "organization",
}


def resolve_account(session, ref: str) -> BillingAccount:  # type: ignore[no-untyped-def]
    """`acct_...`, or `personal:<discord user id>`, `server:<guild id>`, `org:<organization id>`."""
    c = container()
    if ref.startswith("acct_"):
        return c.accounts.get(session, ref)
    kind, sep, owner = ref.partition(":")
    if not sep or kind not in KIND_ALIASES or not owner:
        raise NotFound(
            f"'{ref}' is not an account: use acct_..., personal:<user id>, server:<guild id> or org:<id>"
        )
    account = c.accounts.find(session, KIND_ALIASES[kind], owner)
    if account is None:
        raise NotFound(f"No {KIND_ALIASES[kind]} billing account for '{owner}'.")
    return account


def _sweep_one(account_id: str, session) -> int:  # type: ignore[no-untyped-def]
    return container().ledger.sweep(session, account_id)


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def balance(
        account: Annotated[str, typer.Argument(help="acct_..., personal:<id>, server:<id> or org:<id>")],
    ) -> None:
        """Show an account's available and held credits, grant by grant."""
        c = container()

        def work(session):  # type: ignore[no-untyped-def]
            acct = resolve_account(session, account)
            return acct, balances.available_balance(session, c.ledger, acct, c.catalog)

        acct, bal = c.db.read(work)
        console.print(f"[bold]{acct.display_name}[/bold] ({acct.kind}, {acct.id})")
        console.print(
            f"available {millicredits_to_credits(bal.available)} credits · held {millicredits_to_credits(bal.held)}"
            f" · frozen {millicredits_to_credits(bal.frozen)} · in wallet {millicredits_to_credits(bal.posted)}"
            f" (exactly {bal.available:,} millicredits available)",
            highlight=False,
        )
        if bal.allowance_due:
            console.print(
                f"includes this period's allowance of {millicredits_to_credits(bal.allowance_due)} credits, "
                "issued at the first use",
                highlight=False,
            )
        table = Table("grant", "source", "remaining", "held", "available", "expires", "priority")
        for g in bal.grants:
            table.add_row(
                g.id,
                g.source,
                millicredits_to_credits(g.remaining),
                millicredits_to_credits(g.held),
                millicredits_to_credits(g.available),
                g.expires_at.strftime("%Y-%m-%d %H:%M") if g.expires_at else "never",
                str(g.priority),
            )
        console.print(table)

    @app.command()
    @handle_errors
    def statement(
        account: Annotated[str, typer.Argument(help="acct_..., personal:<id>, server:<id> or org:<id>")],
        limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
        starting_after: Annotated[
            str | None, typer.Option(help="Line id cursor from the previous page.")
        ] = None,
        raw: Annotated[
            bool,
            typer.Option(
                "--raw", help="The transfer log instead: every transfer, pending and void ones too."
            ),
        ] = False,
        csv_file: Annotated[
            Path | None, typer.Option("--csv", help="Write the whole statement as CSV here.")
        ] = None,
    ) -> None:
        """One line per charge, purchase, expiry, refund or freeze, newest first (--raw: transfers)."""
        c = container()
        if raw:
            _raw_statement(account, limit, starting_after)
            return

        def work(session):  # type: ignore[no-untyped-def]
            acct = resolve_account(session, account)
            page = balances.statement(session, c.ledger, acct, c.catalog, limit, starting_after)
            text = balances.statement_csv(session, c.ledger, acct) if csv_file else None
            return acct, page, text

        acct, page, text = c.db.read(work)
        console.print(
            f"[bold]{escape(acct.display_name)}[/bold] · available {millicredits_to_credits(page.available)} credits"
            + (
                f" · {millicredits_to_credits(page.reserved)} reserved by {len(page.in_progress)} recording(s) in progress"
                if page.reserved
                else ""
            ),
            highlight=False,
        )
        table = Table("line", "when (UTC)", "what", "credits", "balance", "description")
        for line in page.data:
            table.add_row(
                line.id,
                line.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                line.type.replace("_", " "),
                whole_credits(line.amount, signed=True)
                if line.amount
                else f"({millicredits_to_credits(line.frozen_amount)} frozen)"
                if line.type == "frozen"
                else "0",
                millicredits_to_credits(line.balance_after),
                escape(line.description),
            )
        console.print(table)
        if page.has_more:
            console.print(f"more: --starting-after {page.next_cursor}")
        if csv_file is not None and text is not None:
            csv_file.write_text(text)
            console.print(f"wrote {csv_file}")

    def _raw_statement(account: str, limit: int, starting_after: str | None) -> None:
        c = container()
        cursor = None
        if starting_after is not None:
            if not starting_after.isdigit():
                fail("--starting-after for --raw is a transfer id (a whole number)")
            cursor = int(starting_after)

        def work(session):  # type: ignore[no-untyped-def]
            acct = resolve_account(session, account)
            return c.ledger.statement(session, acct.id, limit, cursor)

        page = c.db.read(work)
        table = Table("id", "when (UTC)", "kind", "phase", "millicredits", "balance", "reason")
        for line in page.data:
            table.add_row(
                str(line.id),
                line.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                line.kind,
                line.phase,
                f"{line.amount:+,}",
                f"{line.balance_after:,}",
                escape(line.reason),
            )
        console.print(table)
        if page.has_more:
            console.print(f"more: --raw --starting-after {page.next_cursor}")

    @app.command()
    @handle_errors
    def grant(
        account: Annotated[str, typer.Argument(help="acct_..., personal:<id>, server:<id> or org:<id>")],
        credits: Annotated[str, typer.Argument(help="Credits to grant, e.g. 100 or 12.5")],
        idempotency_key: Annotated[
            str, typer.Option("--idempotency-key", "-k", help="Retrying with the same key grants once.")
        ],
        expires_in_days: Annotated[
            int | None,
            typer.Option(
                min=1,
                max=36_500,
                help="Expire at the end of the UTC day this many days from today (a retry the same day matches).",
            ),
        ] = None,
        source: Annotated[
            str, typer.Option(help="promotional, comp, adjustment or migration")
        ] = "promotional",
        priority: Annotated[int, typer.Option(min=0, max=100)] = 50,
        description: Annotated[str, typer.Option()] = "",
    ) -> None:
        """Grant credits to an account (promotional by default)."""
        c = container()
        if source not in ("promotional", "comp", "adjustment", "migration"):
            fail(f"source must be promotional, comp, adjustment or migration, not '{source}'")
        amount = parse_credits(credits)
        expires = None
        if expires_in_days:
            # Whole days, so that retrying the command with the same key asks for the same grant.
            today = c.clock.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            expires = today + timedelta(days=expires_in_days + 1)

        def work(session):  # type: ignore[no-untyped-def]
            acct = resolve_account(session, account)
            return c.ledger.issue_grant(
                session,
                account_id=acct.id,
                amount=amount,
                source=source,
                idempotency_key=idempotency_key,
                cause_type="admin",
                cause_id="cli",
                priority=priority,
                expires_at=expires,
                description=description or f"{source} grant",
            )

        g = c.db.write(work)
        console.print(
            f"granted {millicredits_to_credits(g.amount)} credits ({g.amount:,} millicredits) as {g.id}"
            + (f", expiring {g.expires_at:%Y-%m-%d %H:%M} UTC" if g.expires_at else "")
        )

    @app.command()
    @handle_errors
    def verify() -> None:
        """Check every ledger invariant; exits non-zero on the first violation."""
        c = container()
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("verifying", total=len(CHECKS))
            started: list[str] = []

            def on_check(name: str) -> None:
                if started:
                    progress.advance(task)
                started.append(name)
                progress.update(task, description=f"checking {name}")

            # One verify call, so the aggregates several checks share are computed once.
            violations = c.db.read(lambda session: verify_ledger(session, first_only=True, on_check=on_check))
        if violations:
            fail(f"ledger invariant violated: {violations[0]}", code=2)
        console.print("ledger ok: " + ", ".join(name for name, _ in CHECKS))

    @app.command()
    @handle_errors
    def sweep(
        retention_days: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Delete delivered notifications and non-money idempotency records older than this "
                "many days (default: CHRONOTE_RETENTION_DAYS, 30).",
            ),
        ] = None,
    ) -> None:
        """Settle expired holds and grant remainders on every wallet that has something due, then
        purge what is past retention (decision 0037)."""
        c = container()
        total = 0
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("sweeping", total=None)
            while True:
                due = c.db.read(lambda s: c.ledger.wallets_due(s))
                if not due:
                    break
                for account_id in due:
                    total += c.db.write(functools.partial(_sweep_one, account_id))
                    progress.advance(task)
        console.print(f"settled {total} expired holds and grants")
        days = retention_days if retention_days is not None else c.settings.retention_days
        purged = retention.purge(c.db, c.clock.now(), timedelta(days=days))
        console.print(
            f"purged {purged.outbox_rows} delivered notifications and {purged.idempotency_records} "
            f"non-money idempotency records older than {days} days"
        )
