"""Operator commands of the Stripe side: catalog sync and show, import, reconcile, subscription."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chronote_billing.cli.ledger import resolve_account
from chronote_billing.cli.output import console, container, handle_errors
from chronote_billing.stripe_sync.catalog_sync import sync_catalog
from chronote_billing.stripe_sync.importer import ChronoteImporter
from chronote_billing.stripe_sync.reconcile import Reconciler


def _money(amount: int, currency: str) -> str:
    return f"{amount / 100:,.2f} {currency.upper()}"


def register(app: typer.Typer) -> None:
    catalog_app = typer.Typer(
        help="The catalog of plans and credit packs, and its Stripe prices.", no_args_is_help=True
    )
    app.add_typer(catalog_app, name="catalog")

    @catalog_app.command("show")
    @handle_errors
    def catalog_show() -> None:
        """Show the plans and credit packs in force."""
        catalog = container().catalog
        console.print(f"[bold]Catalog {catalog.version}[/bold] ({catalog.currency.upper()})")
        plans = Table("plan", "scope", "credits / period", "longest recording", "prices (lookup key)")
        for plan in catalog.plans.values():
            prices = ", ".join(
                f"{_money(p.unit_amount, p.currency)}/{p.interval} ({p.lookup_key})" for p in plan.prices
            )
            plans.add_row(
                plan.id,
                plan.scope,
                f"{plan.included_credits:,}",
                f"{plan.max_recording_minutes} min",
                prices or "free",
            )
        console.print(plans)
        packs = Table("credit pack", "credits", "price", "valid", "lookup key")
        for pack in catalog.credit_packs.values():
            packs.add_row(
                pack.id,
                f"{pack.credits:,}",
                _money(pack.unit_amount, pack.currency),
                f"{pack.expires_after_months} months",
                pack.lookup_key,
            )
        console.print(packs)

    @catalog_app.command("sync")
    @handle_errors
    def catalog_sync(
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
        ] = False,
    ) -> None:
        """Create or update Stripe's products and prices by lookup key (replaced prices are archived)."""
        report = sync_catalog(container().billing.client, dry_run=dry_run)
        for action, obj, detail in report.actions:
            if action != "unchanged":
                console.print(
                    f"{'would ' if dry_run else ''}{action} {obj} {detail}".rstrip(), highlight=False
                )
        console.print(
            f"{report.count('create')} created, {report.count('update')} updated, "
            f"{report.count('archive')} archived, {report.count('unchanged')} unchanged"
            + (f", {report.count('conflict')} conflict(s)" if report.count("conflict") else "")
            + (" (dry run)" if dry_run else "")
        )

    @app.command("import-chronote")
    @handle_errors
    def import_chronote(
        file: Annotated[Path, typer.Argument(help="JSON export of today's guild subscriptions and comps.")],
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Print what would be imported; write nothing.")
        ] = False,
    ) -> None:
        """Import today's guild subscriptions and manual comps into server accounts."""
        c = container()
        report = ChronoteImporter(c.db, c.clock, c.ledger, c.accounts).run(file, dry_run=dry_run)
        prefix = "would " if dry_run else ""
        for action, key, detail in report.actions:
            if action == "skip":
                console.print(f"skip {key}: {detail}", highlight=False)
            else:
                console.print(f"{prefix}{action} {key}: {detail}", highlight=False)
        for warning in report.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
        console.print(
            f"{report.count('import')} subscription(s), {report.count('comp')} comp(s) "
            f"{'to import' if dry_run else 'imported'}, {report.count('skip')} skipped"
        )

    @app.command("reconcile")
    @handle_errors
    def reconcile(
        fix: Annotated[bool, typer.Option("--fix", help="Repair what can be repaired.")] = False,
    ) -> None:
        """Compare local customers and subscriptions with Stripe's and report (or fix) drift."""
        c = container()
        reconciler = Reconciler(c.db, c.clock, c.billing.client, c.billing.webhooks)
        with Progress(
            TextColumn("reconciling"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("accounts", total=None)
            report = reconciler.run(
                fix=fix,
                on_total=lambda n: progress.update(task, total=n),
                on_progress=lambda: progress.advance(task),
            )
        for d in report.drift:
            state = " [green](fixed)[/green]" if d.fixed else ""
            console.print(f"{d.account_id} {d.kind}: {d.detail}{state}", highlight=False)
        console.print(
            f"{report.checked} account(s) checked, {len(report.drift)} drift(s)"
            + (f", {report.fixed} fixed" if fix else "")
        )
        if report.drift and not fix:
            raise typer.Exit(1)

    @app.command("subscription")
    @handle_errors
    def subscription(
        account: Annotated[str, typer.Argument(help="acct_..., personal:<id>, server:<id> or org:<id>")],
    ) -> None:
        """Show an account's plan in force, subscription status, period and grace."""
        c = container()

        def work(session):  # type: ignore[no-untyped-def]
            acct = resolve_account(session, account)
            return acct, c.billing.subscription_view(session, acct)

        acct, view = c.db.read(work)
        console.print(f"[bold]{acct.display_name}[/bold] ({acct.kind}, {acct.id})")
        console.print(f"plan {view.plan or '-'} ({view.plan_source})", highlight=False)
        if view.subscription_id:
            console.print(
                f"subscription {view.subscription_id}: {view.status}, {view.interval}ly, "
                f"{view.current_period_start:%Y-%m-%d} to {view.current_period_end:%Y-%m-%d}"
                + (" · cancels at period end" if view.cancel_at_period_end else "")
                + (f" · becomes {view.pending_plan} at renewal" if view.pending_plan else ""),
                highlight=False,
            )
        if view.grace_ends_at:
            state = "in grace until" if view.in_grace else "grace ended"
            console.print(f"payment failed: {state} {view.grace_ends_at:%Y-%m-%d %H:%M} UTC", highlight=False)
        if view.complimentary_until:
            console.print(f"complimentary plan until {view.complimentary_until:%Y-%m-%d}", highlight=False)
