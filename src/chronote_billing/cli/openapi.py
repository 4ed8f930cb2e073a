"""`chronote-billing openapi`: the API's OpenAPI document, without starting a server.

Clients generate their types from it (clients/typescript: `npm run generate`), so the output is
deterministic: keys in the application's own order, two-space indentation, one final newline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from chronote_billing.cli.output import handle_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def openapi(
        output: Annotated[
            Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
        ] = None,
    ) -> None:
        """Print the OpenAPI document of the HTTP API as JSON (no database, no server)."""
        from chronote_billing.api.app import create_app

        document = json.dumps(create_app().openapi(), indent=2, ensure_ascii=False) + "\n"
        if output is None:
            typer.echo(document, nl=False)
        else:
            output.write_text(document, encoding="utf-8")
