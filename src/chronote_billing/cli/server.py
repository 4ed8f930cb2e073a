"""Commands that run the service: migrate and serve. (`demo`, what `make run` starts, comes with
the development tools: decision 0054.)"""

from __future__ import annotations

import os
import socket
import threading
from typing import Annotated, Any

import typer

from chronote_billing.cli import output
from chronote_billing.cli.output import console, container, handle_errors
from chronote_billing.core import migrate as migrations
from chronote_billing.core.logs import UVICORN_LOG_CONFIG, configure_logging
from chronote_billing.notifications.delivery import start_delivery_thread


def use_public_url_of(host: str, port: int) -> str:
    """Checkout and Discord send people back to CHRONOTE_PUBLIC_BASE_URL; unless it is set, it is
    where this process serves (a wildcard host is reached on the loopback address)."""
    reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in reachable and not reachable.startswith("["):
        reachable = f"[{reachable}]"
    url = os.environ.setdefault("CHRONOTE_PUBLIC_BASE_URL", f"http://{reachable}:{port}")
    output.set_container(None)  # settings are read again with it
    return url


def serve_workers(processes: int, options: dict[str, Any]) -> None:
    """uvicorn's worker processes, each building its application from the environment this
    process set up, on one listening socket bound here."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("chronote_billing.api.app:create_app", factory=True, workers=processes, **options)  # type: ignore[arg-type]
    sock = config.bind_socket()
    # Accepted connections inherit the listening socket's options. Without this one, each answer
    # on a kept-alive connection waits out Nagle's algorithm against the client's delayed ACK,
    # about 40 ms: uvicorn sets it only on sockets it accepts on in a single process.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    Multiprocess(config, sockets=[sock]).run()


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def migrate() -> None:
        """Bring the database schema up to date."""
        c = container()
        migrations.upgrade(c.db.engine)
        console.print(f"database migrated ({c.db.dialect})")

    @app.command()
    @handle_errors
    def serve(
        host: Annotated[str, typer.Option()] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
        workers: Annotated[
            int,
            typer.Option(min=1, max=64, help="Worker processes (default: the number of cores)."),
        ] = 0,
        access_log: Annotated[
            bool, typer.Option(help="Log every request in uvicorn's access log too.")
        ] = False,
    ) -> None:
        """Serve the API and the portal, and deliver notifications in the background.

        Several workers each run the whole application with their own pools, write combiner and
        key cache; locks and idempotency live in the database, so nothing depends on them being
        shared (decision 0031). Notifications are delivered from this supervising process.
        """
        import uvicorn

        from chronote_billing.api import metrics
        from chronote_billing.api.app import create_app

        configure_logging()
        processes = workers or os.cpu_count() or 1
        # Several workers share their metrics through this directory (decision 0036); it is
        # emptied before they start.
        directory = metrics.prepare_multiprocess_directory(workers=processes)
        public = use_public_url_of(host, port)
        c = container()
        stop = threading.Event()
        start_delivery_thread(c, stop)
        console.print(f"public URL (Checkout and sign-in return here): {public}; {processes} worker(s)")
        options = dict(
            host=host, port=port, log_level="info", log_config=UVICORN_LOG_CONFIG, access_log=access_log
        )
        try:
            if processes == 1:
                uvicorn.run(create_app(c), **options)  # type: ignore[arg-type]
            else:
                serve_workers(processes, options)
        finally:
            stop.set()
            metrics.remove_directory(directory)
