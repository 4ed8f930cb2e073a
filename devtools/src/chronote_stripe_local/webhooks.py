"""Signed webhook delivery, as Stripe does it.

Each event is POSTed as JSON with `Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<payload>" keyed with the endpoint's signing secret>`, which `stripe.Webhook.construct_event`
verifies. Any 2xx answer is a success. First attempts go out in the order the events were
created; a failed delivery is retried later with exponential backoff while later events go on
(Stripe does not promise order either).

The target is a URL (delivered by a background thread) or a Python callable
`(payload: bytes, headers: dict[str, str]) -> int | None` (an HTTP status; `None` means 200),
which is called synchronously in the thread of the API request that caused the event, after
that request's changes are complete, so a test sees the webhook handled when its SDK call returns.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger("chronote_stripe_local.webhooks")

WebhookCallable = Callable[[bytes, dict[str, str]], "int | None"]
WebhookTarget = str | WebhookCallable | None


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header value for a payload."""
    t = int(time.time()) if timestamp is None else timestamp
    signed = f"{t}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def encode_event(event: dict[str, Any]) -> bytes:
    return json.dumps(event, indent=2).encode()


@dataclass
class Delivery:
    """One attempt to deliver one event."""

    event_id: str
    event_type: str
    attempt: int
    status: int | None
    error: str | None
    at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookDispatcher:
    def __init__(
        self,
        secret: str,
        target: WebhookTarget = None,
        *,
        max_attempts: int = 8,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 10.0,
    ) -> None:
        self.secret = secret
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.deliveries: list[Delivery] = []
        self.on_delivered: Callable[[str], None] | None = None
        self._target: WebhookTarget = target
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, int, str, str, bytes]] = []  # due, seq, attempt, id, type, body
        self._seq = 0
        self._in_flight = 0
        self._sync_queue: deque[tuple[str, str, bytes]] = deque()
        self._sync_lock = threading.Lock()
        self._stopped = False
        self._thread: threading.Thread | None = None

    # --- configuration ---------------------------------------------------------------------

    @property
    def target(self) -> WebhookTarget:
        return self._target

    def set_target(self, target: WebhookTarget) -> None:
        """Send later events to a URL, a callable, or nowhere (`None`)."""
        with self._cond:
            self._target = target
            self._cond.notify_all()

    def endpoints(self) -> int:
        return 0 if self._target is None else 1

    # --- intake ----------------------------------------------------------------------------

    def enqueue(self, event: dict[str, Any]) -> None:
        """Called as each event is created (with the store's lock held: never blocks on I/O)."""
        target = self._target
        if target is None:
            return
        body = encode_event(event)
        if callable(target):
            self._sync_queue.append((event["id"], event["type"], body))
            return
        with self._cond:
            self._push(time.monotonic(), 1, event["id"], event["type"], body)
            self._ensure_thread()

    def _push(self, due: float, attempt: int, event_id: str, event_type: str, body: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, attempt, event_id, event_type, body))
        self._cond.notify_all()

    # --- synchronous delivery to a callable ------------------------------------------------

    def drain_sync(self) -> None:
        """Deliver queued events to the callable target, in order, on this thread.

        A delivery may call back into the stand-in, whose request then finds the queue being
        drained here and returns at once; its events are delivered by this loop, in order.
        """
        if not self._sync_lock.acquire(blocking=False):
            return
        try:
            while self._sync_queue:
                event_id, event_type, body = self._sync_queue.popleft()
                target = self._target
                if not callable(target):
                    continue
                self._deliver_to_callable(target, event_id, event_type, body, attempt=1)
        finally:
            self._sync_lock.release()

    def _deliver_to_callable(
        self, target: WebhookCallable, event_id: str, event_type: str, body: bytes, attempt: int
    ) -> bool:
        headers = self._headers(body)
        status: int | None = None
        error = None
        try:
            result = target(body, headers)
            status = 200 if result is None else int(result)
        except Exception as exc:  # the handler's failure is the delivery's failure
            error = f"{type(exc).__name__}: {exc}"
            log.warning("webhook %s (%s) raised: %s", event_id, event_type, error)
        return self._record(event_id, event_type, attempt, status, error)

    # --- background delivery to a URL ------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopped = False
            self._thread = threading.Thread(target=self._run, name="stripe-local-webhooks", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        client = httpx.Client(timeout=self.timeout)
        try:
            while True:
                with self._cond:
                    while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                        wait = None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic())
                        self._cond.wait(wait)
                    if self._stopped:
                        return
                    _due, _seq, attempt, event_id, event_type, body = heapq.heappop(self._heap)
                    target = self._target
                    self._in_flight += 1
                try:
                    if isinstance(target, str):
                        ok = self._deliver_http(client, target, event_id, event_type, body, attempt)
                    elif callable(target):
                        ok = self._deliver_to_callable(target, event_id, event_type, body, attempt)
                    else:
                        ok = True  # no endpoint any more: nothing to deliver
                    if not ok and attempt < self.max_attempts:
                        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                        with self._cond:
                            self._push(time.monotonic() + delay, attempt + 1, event_id, event_type, body)
                finally:
                    with self._cond:
                        self._in_flight -= 1
                        self._cond.notify_all()
        finally:
            client.close()

    def _deliver_http(
        self, client: httpx.Client, url: str, event_id: str, event_type: str, body: bytes, attempt: int
    ) -> bool:
        status = None
        error = None
        try:
            response = client.post(url, content=body, headers=self._headers(body))
            status = response.status_code
            if not 200 <= status < 300:
                error = response.text[:500]
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error:
            log.info("webhook %s (%s) attempt %d to %s failed: %s", event_id, event_type, attempt, url, error)
        return self._record(event_id, event_type, attempt, status, error)

    def _headers(self, body: bytes) -> dict[str, str]:
        return {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": sign(body, self.secret),
        }

    def _record(
        self, event_id: str, event_type: str, attempt: int, status: int | None, error: str | None
    ) -> bool:
        delivery = Delivery(event_id, event_type, attempt, status, error)
        # Mark the event delivered before the attempt is visible, so whoever watches
        # `deliveries` never sees a success whose event still counts as pending.
        if delivery.ok and self.on_delivered is not None:
            self.on_delivered(event_id)
        with self._cond:
            self.deliveries.append(delivery)
            self._cond.notify_all()
        return delivery.ok

    # --- control ---------------------------------------------------------------------------

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event had its first attempt and nothing is in flight."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                first_attempts = any(entry[2] == 1 for entry in self._heap)
                if not first_attempts and self._in_flight == 0 and not self._sync_queue:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))

    def resend(self, event: dict[str, Any]) -> None:
        """Deliver an event again (what "Resend" in Stripe's dashboard does)."""
        target = self._target
        body = encode_event(event)
        if callable(target):
            self._sync_queue.append((event["id"], event["type"], body))
            self.drain_sync()
        elif target is not None:
            with self._cond:
                self._push(time.monotonic(), 1, event["id"], event["type"], body)
                self._ensure_thread()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
