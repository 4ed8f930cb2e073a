"""Operator commands of the billing extras: auto-recharge settings (0045)."""

from __future__ import annotations

from typing import Annotated

import typer

from chronote_billing.cli.ledger import resolve_account
from chronote_billing.cli.output import console, container, handle_errors


def register(app: typer.Typer) -> None:
    @app.command("auto-recharge")
    @handle_errors
    def auto_recharge(
        account: Annotated[str, typer.Argument(help="acct_..., personal:<id>, server:<id> or org:<id>")],
        pack: Annotated[
            str, typer.Option(help="The credit pack to buy, e.g. credits_5000.")
        ] = "credits_1000",
        threshold: Annotated[int, typer.Option(help="Buy when fewer credits than this are available.")] = 500,
        limit_count: Annotated[int | None, typer.Option(help="At most this many purchases a month.")] = None,
        limit_amount: Annotated[
            int | None, typer.Option(help="At most this much money a month, in cents.")
        ] = None,
        off: Annotated[bool, typer.Option("--off", help="Turn auto-recharge off.")] = False,
        idempotency_key: Annotated[
            str, typer.Option("--idempotency-key", "-k", help="Retrying with the same key changes once.")
        ] = "",
    ) -> None:
        """Turn an account's auto-recharge on (with a monthly limit) or off."""
        c = container()

        def work(session):  # type: ignore[no-untyped-def]
            acct = resolve_account(session, account)
            key = (
                idempotency_key
                or f"cli:auto-recharge:{acct.id}:{off}:{pack}:{threshold}:{limit_count}:{limit_amount}"
            )
            return c.notifications.set_auto_recharge(
                session,
                account_id=acct.id,
                enabled=not off,
                threshold_credits=threshold,
                pack_id=pack,
                idempotency_key=key,
                monthly_limit_count=limit_count,
                monthly_limit_amount=limit_amount,
            )

        view = c.db.write(work)
        if not view.enabled:
            console.print(f"auto-recharge is off for {view.account_id}", highlight=False)
            return
        limits = [f"{view.monthly_limit_count} purchase(s)"] if view.monthly_limit_count is not None else []
        if view.monthly_limit_amount is not None:
            limits.append(f"{view.monthly_limit_amount} {view.currency} cents")
        console.print(
            f"auto-recharge on for {view.account_id}: buys {view.pack_id} below {view.threshold_credits} credits, "
            f"at most {' and '.join(limits)} a month",
            highlight=False,
        )
