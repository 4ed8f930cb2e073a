"""`chronote-billing`: the operator CLI."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

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
)

# Installed distributions may add commands (the development tools add `demo` and `stripe-local`,
# decision 0054): each entry point of this group names a `register(app)` function.
PLUGIN_GROUP = "chronote_billing.cli"

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
    promotions,
    billing_extras,
    openapi,
):
    module.register(app)


def register_plugins(target: typer.Typer, group: str = PLUGIN_GROUP) -> list[str]:
    """Add the commands of every installed plugin; one that fails to load is named on stderr and
    left out, so the product's own commands always work. Returns the plugins added."""
    added = []
    for plugin in entry_points(group=group):
        try:
            plugin.load()(target)
        except Exception as exc:  # a broken development tool must not take the operator CLI down
            print(f"warning: CLI plugin {plugin.name} not loaded: {exc}", file=sys.stderr)
            continue
        added.append(plugin.name)
    return added


register_plugins(app)

if __name__ == "__main__":
    app()
