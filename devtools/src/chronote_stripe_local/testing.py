"""Helpers for tests that run against the local Stripe stand-in.

`StripeLocalHarness` wraps a stand-in started with `server.start_in_thread` and does, through
the stand-in's public surface only, what a person or Stripe would do: pay a Checkout session on
its hosted page, act on the billing portal page, advance a test clock, open a dispute.
By default it collects every webhook event (after verifying its signature with the SDK's own
`stripe.Webhook.construct_event`) in `.received`; `send_webhooks_to(...)` sends them elsewhere,
e.g. to the billing service under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import stripe

from chronote_stripe_local.server import TEST_SECRET_KEY, StripeLocal, start_in_thread
from chronote_stripe_local.webhooks import WebhookTarget

CARD_OK = "4242424242424242"
CARD_DECLINES_RENEWALS = "4000000000000341"
CARD_DECLINED = "4000000000000002"


class StripeLocalHarness:
    def __init__(self, stand_in: StripeLocal, api_key: str = TEST_SECRET_KEY) -> None:
        self.stand_in = stand_in
        self.url = stand_in.url
        self.webhook_secret = stand_in.webhook_secret
        self.client = stand_in.client(api_key)
        self.http = httpx.Client(base_url=self.url, follow_redirects=False, timeout=30)
        self.received: list[stripe.Event] = []
        self.reset()

    # --- state -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every object and event; webhooks go to the built-in collector again."""
        self.stand_in.reset()
        self.received.clear()
        self.send_webhooks_to(self._collect)

    def _collect(self, payload: bytes, headers: dict[str, str]) -> int:
        event = stripe.Webhook.construct_event(payload, headers["Stripe-Signature"], self.webhook_secret)
        self.received.append(event)
        return 200

    def send_webhooks_to(self, target: WebhookTarget) -> None:
        """A URL (delivered by a background thread), a callable `(payload: bytes, headers) ->
        status` (called synchronously, before the API call that caused the event returns), or
        `None` (no endpoint)."""
        self.stand_in.set_webhook_target(target)

    def wait_for_webhooks(self, timeout: float = 10.0) -> bool:
        return self.stand_in.webhooks.wait_idle(timeout)

    def received_types(self) -> list[str]:
        return [e.type for e in self.received]

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        """Every event the stand-in created (oldest first), as stored (plain dicts)."""
        with self.stand_in.engine.store.lock:
            events = list(reversed(self.stand_in.engine.store.all("event")))
        return [e for e in events if type is None or e["type"] == type]

    # --- what a person does on the hosted pages ---------------------------------------------

    def _path(self, url_or_id: str, prefix: str) -> str:
        if url_or_id.startswith("http"):
            return httpx.URL(url_or_id).path
        return f"{prefix}{url_or_id}"

    def pay_checkout(
        self,
        session: Any,
        card: str | None = CARD_OK,
        email: str | None = None,
        name: str | None = None,
        **details: str,
    ) -> httpx.Response:
        """Open the session's hosted page and pay with a test card (None: no card, where nothing
        is due), after filling in `details` (`promotion_code`, `country`, `line1`, `postal_code`,
        `city`, `business_name`, `tax_id_type`, `tax_id_value`); returns the POST's response (a
        303 to `success_url` when paid, the page again with status 402 or 400 when refused)."""
        url = session if isinstance(session, str) else (session.url or f"/pay/{session.id}")
        path = self._path(url, "/pay/")
        page = self.http.get(path)
        page.raise_for_status()
        form = {"card": card or "none", **details}
        if email is not None:
            form["email"] = email
        if name is not None:
            form["name"] = name
        return self.http.post(path, data=form)

    def portal(
        self, portal_session: Any, action: str, subscription: str | None = None, **fields: str
    ) -> httpx.Response:
        """Submit a billing portal form: `switch` (with `price`), `cancel_at_period_end`,
        `resume`, `cancel_now`, or `use_card` (with `card`)."""
        url = portal_session if isinstance(portal_session, str) else portal_session.url
        path = httpx.URL(url).path
        page = self.http.get(path)
        page.raise_for_status()
        form = {"action": action, **fields}
        if subscription is not None:
            form["subscription"] = subscription
        return self.http.post(path, data=form)

    # --- what time and card holders do ------------------------------------------------------

    def advance_clock(self, clock_id: str, *, to: int | None = None, seconds: int | None = None) -> Any:
        """Advance a test clock (Stripe's API), to a moment or by a number of seconds."""
        if to is None:
            current = self.client.v1.test_helpers.test_clocks.retrieve(clock_id)
            to = int(current.frozen_time) + int(seconds or 0)
        return self.client.v1.test_helpers.test_clocks.advance(clock_id, {"frozen_time": to})

    def advance_time(self, seconds: int) -> None:
        """Stand-in only: move time for every object that is not on a test clock."""
        self.stand_in.advance_time(seconds)

    def dispute(
        self, charge_id: str, amount: int | None = None, reason: str = "fraudulent"
    ) -> dict[str, Any]:
        """Stand-in only: the card holder disputes a charge (`charge.dispute.created`)."""
        data: dict[str, str] = {"reason": reason}
        if amount is not None:
            data["amount"] = str(amount)
        response = self.http.post(
            f"/v1/test_helpers/charges/{charge_id}/dispute",
            data=data,
            headers={"Authorization": f"Bearer {TEST_SECRET_KEY}"},
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def close(self) -> None:
        self.http.close()


def started(**options: Any) -> Iterator[StripeLocalHarness]:
    """A stand-in on a free port for the duration of a `with`/fixture."""
    stand_in = start_in_thread(port=0, webhook_secret="whsec_test_stripe_local", **options)
    harness = StripeLocalHarness(stand_in)
    try:
        yield harness
    finally:
        harness.close()
        stand_in.stop()
