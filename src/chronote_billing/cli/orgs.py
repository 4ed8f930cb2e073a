"""Operator commands of the orgs and usage domains: organizations, their audit log, usage reports."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from chronote_billing.cli.ledger import resolve_account
from chronote_billing.cli.output import console, container, handle_errors, millicredits_to_credits
from chronote_billing.usage import reports

org_app = typer.Typer(
    help="Organizations: members, servers, authorizations, audit log.", no_args_is_help=True
)
usage_app = typer.Typer(help="Usage reports per paying account.", no_args_is_help=True)


@org_app.command("list")
@handle_errors
def list_orgs() -> None:
    """Every organization."""
    c = container()
    orgs = c.db.read(lambda s: c.orgs.list_orgs(s))
    table = Table("id", "name", "billing account", "created by", "created (UTC)")
    for o in orgs:
        table.add_row(
            o.id, o.name, o.billing_account_id, o.created_by, o.created_at.strftime("%Y-%m-%d %H:%M")
        )
    console.print(table)


@org_app.command("show")
@handle_errors
def show(org_id: str) -> None:
    """Members, linked servers and authorizations with this month's usage."""
    c = container()

    def work(session):  # type: ignore[no-untyped-def]
        return (
            c.orgs.org_view(session, org_id),
            c.orgs.list_members(session, org_id),
            c.orgs.list_servers(session, org_id),
            auths := c.orgs.list_authorizations(session, org_id),
            c.ledger.balance(session, c.orgs.get_org(session, org_id).billing_account_id),
            {
                (kind, ref): c.orgs.subject_name(session, kind, ref)
                for kind, ref in {(a.subject_type, a.subject_id) for a in auths}
                | {("server", s.guild_id) for s in c.orgs.list_servers(session, org_id)}
            },
        )

    org, members, servers, auths, balance, names = c.db.write(work)
    console.print(
        f"[bold]{escape(org.name)}[/bold] ({org.id}) · available {millicredits_to_credits(balance.available)} credits",
        highlight=False,
    )
    table = Table("member", "discord id", "role", "since")
    for m in members:
        table.add_row(
            escape(m.display_name or "—"),
            m.user_id,
            m.role.replace("_", " "),
            m.created_at.strftime("%Y-%m-%d"),
        )
    console.print(table)
    if servers:
        console.print(
            "linked servers: "
            + ", ".join(f"{names.get(('server', s.guild_id), s.guild_id)} ({s.guild_id})" for s in servers),
            highlight=False,
            markup=False,
        )
    table = Table("authorization", "who", "status", "cap/month", "used", "held", "left", "sources")
    for a in auths:
        table.add_row(
            a.id,
            escape(names.get((a.subject_type, a.subject_id), a.subject_id)),
            a.status + (" (over cap)" if a.over_cap else ""),
            "none" if a.monthly_cap is None else millicredits_to_credits(a.monthly_cap),
            millicredits_to_credits(a.used),
            millicredits_to_credits(a.held),
            millicredits_to_credits(a.left),
            ", ".join(a.capture_sources or ["all"]),
        )
    console.print(table)


@org_app.command("audit")
@handle_errors
def audit(org_id: str, limit: Annotated[int, typer.Option(min=1, max=1000)] = 50) -> None:
    """Who changed what in an organization, newest first."""
    c = container()
    entries = c.db.read(lambda s: c.orgs.audit_log(s, org_id, limit))
    table = Table("when (UTC)", "who", "what changed", "action")
    for e in entries:
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M}",
            escape(f"{e.actor_name} ({e.actor})" if e.actor_name else e.actor),
            escape(e.description),
            e.action,
        )
    console.print(table)


@usage_app.command("report")
@handle_errors
def report(
    account: Annotated[str, typer.Argument(help="acct_..., personal:<id>, server:<id> or org:<id>")],
    by: Annotated[str, typer.Option("--by", help="day, source, member, server or context")] = "day",
    since: Annotated[datetime | None, typer.Option(help="From (UTC), e.g. 2026-11-01")] = None,
    until: Annotated[datetime | None, typer.Option(help="Until (UTC, exclusive)")] = None,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Write usage lines with reasons as CSV here.")
    ] = None,
) -> None:
    """Usage paid by an account, grouped one way; optionally every line as CSV."""
    c = container()

    def work(session):  # type: ignore[no-untyped-def]
        acct = resolve_account(session, account)
        text = reports.usage_csv(session, acct.id, None, since, until) if csv_file else None
        return acct, reports.usage_report(session, acct.id, by, since, until), text

    acct, result, text = c.db.read(work)
    console.print(f"[bold]{acct.display_name}[/bold] ({acct.kind}, {acct.id}) by {by}")
    table = Table(by, "count", "minutes", "held", "charged")
    for r in result.rows:
        table.add_row(
            r.key,
            str(r.count),
            str(r.minutes),
            millicredits_to_credits(r.held),
            millicredits_to_credits(r.charged),
        )
    console.print(table)
    console.print(f"total charged {millicredits_to_credits(result.total_charged)} credits")
    if csv_file and text is not None:
        csv_file.write_text(text)
        console.print(f"wrote {csv_file}")


def register(app: typer.Typer) -> None:
    """Add this domain's commands to the CLI."""
    app.add_typer(org_app, name="org")
    app.add_typer(usage_app, name="usage")
