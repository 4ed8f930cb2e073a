"""`chronote-billing`: the operator CLI."""

from __future__ import annotations

import typer

from chronote_billing.cli import (
    apikeys,
    billing_extras,
    ledger,
    notifications,
    openapi,
    orgs,
    promotions,
    server,
    stripe,
    stripe_local,
)

app = typer.Typer(
    help="Chronote Billing: plans, credits and usage authorization. Operator commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for module in (
    server,
    ledger,
    apikeys,
    stripe,
    orgs,
    notifications,
    stripe_local,
    promotions,
    billing_extras,
    openapi,
):
    module.register(app)

if __name__ == "__main__":
    app()
