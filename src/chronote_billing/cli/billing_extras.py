"""Operator commands of the billing extras: auto-recharge settings (0045), erasing a person (0047)."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from chronote_billing.cli.ledger import resolve_account
from chronote_billing.cli.output import console, container, handle_errors
from chronote_billing.people.erasure import erase


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

    @app.command("erase-person")
    @handle_errors
    def erase_person(
        user_id: Annotated[str, typer.Argument(help="The person's Discord user id.")],
        reason: Annotated[str, typer.Option(help="Why (kept in the erasure's audit entry).")] = "",
        yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    ) -> None:
        """Erase a person: their id and name become a pseudonym everywhere; amounts stay."""
        c = container()
        if not yes:
            typer.confirm(f"Erase Discord user {user_id}? This cannot be undone", abort=True)
        view = erase(
            c.db,
            c.clock,
            user_id,
            forget_customer=c.billing.forget_customer,
            reason=reason,
            requested_by=getpass.getuser() or "operator",
        )
        tables = ", ".join(f"{name} {count}" for name, count in sorted(view.rows_changed.items()))
        console.print(
            f"erased as {view.pseudonym} ({view.id}): rows changed: {tables or 'none'}"
            + ("; Stripe customer updated" if view.stripe_customer_updated else ""),
            highlight=False,
            soft_wrap=True,
        )
