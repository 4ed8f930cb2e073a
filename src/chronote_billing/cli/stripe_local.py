"""`chronote-billing stripe-local`: the local Stripe stand-in, in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer

from chronote_billing.config import get_settings
from chronote_billing.stripe_local.server import DEFAULT_HOST, DEFAULT_PORT


def register(app: typer.Typer) -> None:
    @app.command("stripe-local")
    def stripe_local(
        host: Annotated[str, typer.Option(help="Address to listen on.")] = DEFAULT_HOST,
        port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = DEFAULT_PORT,
        webhook_url: Annotated[
            str, typer.Option(help="Where signed webhook events are POSTed.")
        ] = "http://127.0.0.1:8000/webhooks/stripe",
        webhook_secret: Annotated[
            str | None,
            typer.Option(
                help="Signing secret of the webhook endpoint (default: the CHRONOTE_STRIPE_WEBHOOK_SECRET setting)."
            ),
        ] = None,
    ) -> None:
        """Serve a local stand-in for the part of Stripe's API this service uses (test mode only).

        Point the service at it with CHRONOTE_STRIPE_API_BASE=http://HOST:PORT and any sk_test_ key;
        open a Checkout session's url in a browser to pay it with a test card.
        """
        from chronote_billing.stripe_local.server import serve

        secret = webhook_secret or get_settings().stripe_webhook_secret
        typer.echo(f"local Stripe on http://{host}:{port} (API keys: any sk_test_...)")
        typer.echo(f"webhooks to {webhook_url}, signed with {secret[:10]}...")
        serve(host=host, port=port, webhook_url=webhook_url, webhook_secret=secret)
