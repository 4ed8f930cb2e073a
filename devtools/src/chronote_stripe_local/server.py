"""Running the stand-in: in the foreground (`chronote-billing stripe-local`), or in a thread of
the current process (`make run`, tests)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import stripe
import uvicorn

from chronote_stripe_local.api import StripeLocalApp
from chronote_stripe_local.engine import Engine
from chronote_stripe_local.params import Params
from chronote_stripe_local.webhooks import WebhookDispatcher, WebhookTarget

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 12111
TEST_SECRET_KEY = "sk_test_chronote_local"


def build(
    webhook_target: WebhookTarget,
    webhook_secret: str,
    public_url: str | None = None,
    **dispatcher_options: Any,
) -> StripeLocalApp:
    engine = Engine(public_url or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}")
    webhooks = WebhookDispatcher(webhook_secret, webhook_target, **dispatcher_options)
    return StripeLocalApp(engine, webhooks, public_url)


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    webhook_url: str | None = None,
    webhook_secret: str = "whsec_chronote_local",
) -> None:
    """Serve in the foreground until interrupted."""
    app = build(webhook_url, webhook_secret)
    try:
        uvicorn.run(app.build(), host=host, port=port, log_level="info")
    finally:
        app.webhooks.stop()


@dataclass
class StripeLocal:
    """A stand-in running in a thread of this process."""

    url: str
    app: StripeLocalApp
    webhook_secret: str
    _server: uvicorn.Server
    _thread: threading.Thread

    @property
    def engine(self) -> Engine:
        return self.app.engine

    @property
    def webhooks(self) -> WebhookDispatcher:
        return self.app.webhooks

    def client(self, api_key: str = TEST_SECRET_KEY, **options: Any) -> stripe.StripeClient:
        """A `stripe.StripeClient` pointed at this stand-in, as the service configures its own."""
        base = {"api": self.url, "files": self.url, "connect": self.url, "meter_events": self.url}
        return stripe.StripeClient(api_key, base_addresses=base, **options)  # type: ignore[arg-type]

    def set_webhook_target(self, target: WebhookTarget) -> None:
        """Where later events go: a URL, a callable `(payload, headers) -> status`, or `None`."""
        self.webhooks.set_target(target)

    def reset(self) -> None:
        """Forget every object, event, idempotency key and delivery record."""
        with self.engine.store.lock:
            self.engine.store.reset()
        self.app.idempotency.clear()
        self.webhooks.deliveries.clear()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.webhooks.stop()

    # --- conveniences for tests and demos (each does what a person or Stripe would) ---------

    def advance_time(self, seconds: int) -> None:
        """Stand-in only: move the clock of objects that are not on a test clock."""
        with self.engine.store.lock:
            self.engine.billing.advance_global(Params({"seconds": str(seconds)}))
        self.webhooks.drain_sync()


def _free_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it: no 40 ms stalls
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def start_in_thread(
    host: str = DEFAULT_HOST,
    port: int = 0,
    webhook_url: WebhookTarget = None,
    webhook_secret: str = "whsec_chronote_local",
    **dispatcher_options: Any,
) -> StripeLocal:
    """Start the stand-in on `host:port` (`port=0`: a free port) and return once it answers."""
    sock = _free_socket(host, port)
    actual = sock.getsockname()[1]
    url = f"http://{host}:{actual}"
    app = build(webhook_url, webhook_secret, url, **dispatcher_options)
    config = uvicorn.Config(app.build(), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"stripe-local-{actual}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the local Stripe stand-in did not start on {url}")
        time.sleep(0.01)
    return StripeLocal(url, app, webhook_secret, server, thread)
