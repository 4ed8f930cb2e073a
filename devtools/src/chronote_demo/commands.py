"""`chronote-billing demo` and `chronote-billing stripe-local`, registered into the product's CLI
through the `chronote_billing.cli` entry point group when the development tools are installed."""

from __future__ import annotations

import os
import threading
from typing import Annotated

import typer

from chronote_billing.cli.output import console, container, handle_errors
from chronote_billing.cli.server import use_public_url_of
from chronote_billing.config import get_settings
from chronote_billing.container import Container
from chronote_billing.core import migrate as migrations
from chronote_billing.core.logs import UVICORN_LOG_CONFIG, configure_logging
from chronote_billing.notifications.delivery import start_delivery_thread
from chronote_stripe_local.server import DEFAULT_HOST, DEFAULT_PORT


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def demo(
        host: Annotated[str, typer.Option()] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
        stripe_port: Annotated[int, typer.Option(min=1, max=65535)] = 12111,
    ) -> None:
        """Migrate, load demo data, start the local Stripe stand-in and serve (what `make run` does)."""
        import uvicorn

        from chronote_billing.api.app import create_app
        from chronote_demo import seed

        os.environ.setdefault("CHRONOTE_DEMO_MODE", "1")
        os.environ.setdefault("CHRONOTE_STRIPE_API_BASE", f"http://{host}:{stripe_port}")
        use_public_url_of(host, port)  # also reads the settings again with the demo environment
        c = container()
        migrations.upgrade(c.db.engine)
        console.print(seed.load(c))
        start_side_services(c, host=host, port=port, stripe_port=stripe_port)
        stop = threading.Event()
        start_delivery_thread(c, stop)
        console.print(f"portal: http://{host}:{port}/portal   API docs: http://{host}:{port}/docs")
        configure_logging()
        try:
            uvicorn.run(
                create_app(c),
                host=host,
                port=port,
                log_level="info",
                log_config=UVICORN_LOG_CONFIG,
                access_log=False,
            )
        finally:
            stop.set()

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
        from chronote_stripe_local.server import serve

        secret = webhook_secret or get_settings().stripe_webhook_secret
        typer.echo(f"local Stripe on http://{host}:{port} (API keys: any sk_test_...)")
        typer.echo(f"webhooks to {webhook_url}, signed with {secret[:10]}...")
        serve(host=host, port=port, webhook_url=webhook_url, webhook_secret=secret)


def start_side_services(c: Container, host: str, port: int, stripe_port: int) -> None:
    """Start what the demo needs beside the API (the local Stripe stand-in)."""
    from chronote_stripe_local.server import start_in_thread

    stand_in = start_in_thread(
        host=host,
        port=stripe_port,
        webhook_url=f"http://{host}:{port}/webhooks/stripe",
        webhook_secret=c.settings.stripe_webhook_secret,
    )
    print(f"local Stripe: {stand_in.url} (webhooks to http://{host}:{port}/webhooks/stripe)")
    # The stand-in starts empty: give it the catalog's products and prices, as an operator
    # would with `chronote-billing catalog sync` against a new Stripe account.
    from chronote_billing.stripe_sync.catalog_sync import sync_catalog

    report = sync_catalog(c.billing.client)
    print(f"catalog synced to the local Stripe: {report.count('create')} created")
