"""Operator commands for the notification outbox: run the delivery worker, list entries."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer
from rich.table import Table

from chronote_billing.cli.ledger import resolve_account
from chronote_billing.cli.output import console, container, fail, handle_errors
from chronote_billing.notifications.delivery import DeliveryWorker


def register(app: typer.Typer) -> None:
    @app.command("deliver-notifications")
    @handle_errors
    def deliver_notifications(
        once: Annotated[bool, typer.Option("--once", help="Deliver what is due now, then exit.")] = False,
        poll_interval: Annotated[
            float, typer.Option(min=0.1, help="Seconds between passes when running continuously.")
        ] = 1.0,
        max_attempts: Annotated[
            int, typer.Option(min=1, max=100, help="Attempts before an entry is dead.")
        ] = 15,
    ) -> None:
        """Send queued webhooks to Chronote (signed, retried) and run queued auto-recharges."""
        c = container()
        if not c.settings.chronote_webhook_url:
            console.print("CHRONOTE_WEBHOOK_URL is not set: events stay pending, jobs still run")
        worker = DeliveryWorker(c, max_attempts=max_attempts)
        try:
            if once:
                report = worker.run_once()
                console.print(
                    f"delivered {report.delivered} · retrying {report.retrying} · dead {report.dead}"
                )
                return
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            console.print("delivering notifications; Ctrl-C stops")
            worker.run(stop, poll_interval)
        finally:
            worker.close()

    @app.command("notifications")
    @handle_errors
    def list_notifications(
        status: Annotated[str | None, typer.Option(help="pending, delivered or dead")] = None,
        account: Annotated[
            str | None,
            typer.Option(
                help="Only this billing account: acct_..., personal:<user id>, server:<guild id> or org:<id>."
            ),
        ] = None,
        limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    ) -> None:
        """List the notification outbox, newest first."""
        if status is not None and status not in ("pending", "delivered", "dead"):
            fail(f"status must be pending, delivered or dead, not '{status}'")
        c = container()

        def read(s):  # type: ignore[no-untyped-def]
            account_id = resolve_account(s, account).id if account else None
            return c.notifications.list_outbox(s, status=status, account_id=account_id, limit=limit)

        page = c.db.read(read)
        table = Table("id", "type", "account", "status", "attempts", "created (UTC)", "last error")
        for e in page.data:
            table.add_row(
                e.id,
                e.type,
                e.account_id or "",
                e.status,
                str(e.attempts),
                e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                (e.last_error or "")[:60],
            )
        console.print(table)
        if page.has_more:
            console.print("more entries: narrow with --status or --account")
