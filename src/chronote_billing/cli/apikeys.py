"""Operator commands for service API keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from chronote_billing.apikeys.service import SCOPES
from chronote_billing.cli.output import console, container, handle_errors

keys_app = typer.Typer(help="Scoped API keys for Chronote's services.", no_args_is_help=True)


@keys_app.command("create")
@handle_errors
def create(
    name: Annotated[str, typer.Option(help="Who uses it, e.g. 'discord-bot'.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: " + ", ".join(SCOPES))],
) -> None:
    """Create a key; the secret is printed once and stored only as a hash."""
    c = container()
    created = c.db.write(lambda s: c.api_keys.create(s, name, scopes.split(",")))
    console.print(f"created {created.id} ({created.name}) with scopes {', '.join(created.scopes)}")
    console.print("secret (shown once):", style="bold")
    print(created.secret)


@keys_app.command("list")
@handle_errors
def list_keys() -> None:
    """List keys (never their secrets)."""
    c = container()
    keys = c.db.read(lambda s: [(k.id, k.name, ",".join(k.scopes), k.revoked_at) for k in c.api_keys.list(s)])
    table = Table("id", "name", "scopes", "revoked")
    for key_id, name, scopes, revoked in keys:
        table.add_row(key_id, name, scopes, revoked.isoformat() if revoked else "")
    console.print(table)


@keys_app.command("revoke")
@handle_errors
def revoke(key_id: str) -> None:
    """Revoke a key at once."""
    c = container()
    c.db.write(lambda s: c.api_keys.revoke(s, key_id).id)
    console.print(f"revoked {key_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="api-key")
