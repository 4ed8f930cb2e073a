"""The one module of the service that imports Stripe's SDK (decision 0055).

Everything else reaches Stripe through what is here: the client built from settings (real Stripe
or the local stand-in is configuration), `call` and `request`, which run one SDK request and turn
the SDK's exceptions into ours, the verification of a webhook's signature, and the helpers that
read Stripe's JSON. No other module names an SDK type or catches an SDK exception.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import stripe
import structlog
from stripe._request_options import RequestOptions

from chronote_billing.config import Settings
from chronote_billing.core.errors import BillingError, ExternalServiceError

log = structlog.get_logger(__name__)
T = TypeVar("T")

REAL_STRIPE_API = "https://api.stripe.com"
SIGNATURE_TOLERANCE_SECONDS = 300

# The SDK's client, by the name the rest of the service uses for it.
StripeClient = stripe.StripeClient


def make_client(settings: Settings) -> StripeClient:
    """`CHRONOTE_STRIPE_API_BASE` points the official SDK at Stripe or at the local stand-in."""
    base = settings.stripe_api_base.rstrip("/") or REAL_STRIPE_API
    return stripe.StripeClient(
        settings.stripe_secret_key,
        base_addresses={"api": base, "files": base, "connect": base, "meter_events": base},
        max_network_retries=2,
    )


# ---------------------------------------------------------------------- requests and their failures

FailureKind = Literal["card_declined", "invalid_request", "failed"]


class StripeFailure(Exception):
    """A Stripe request that failed, in our terms: a declined card, a request Stripe refused
    (`code` says why, `resource_missing` for an id it does not know), or anything else (an
    outage, a rate limit, an authentication failure). Its text is the SDK's own."""

    def __init__(self, kind: FailureKind, text: str, code: str | None, user_message: str | None, name: str):
        super().__init__(text)
        self.kind = kind
        self.text = text
        self.code = code
        self.user_message = user_message
        self.name = name  # the SDK's exception class, when Stripe gave no words at all

    def __str__(self) -> str:
        return self.text

    @property
    def missing(self) -> bool:
        return self.kind == "invalid_request" and self.code == "resource_missing"


def request(fn: Callable[[], T]) -> T:
    """Run one Stripe request; the SDK's exceptions become a `StripeFailure`."""
    try:
        return fn()
    except stripe.StripeError as exc:
        kind: FailureKind = (
            "card_declined"
            if isinstance(exc, stripe.CardError)
            else "invalid_request"
            if isinstance(exc, stripe.InvalidRequestError)
            else "failed"
        )
        code = getattr(exc, "code", None)
        raise StripeFailure(kind, str(exc), code, exc.user_message, exc.__class__.__name__) from exc


def call(what: str, fn: Callable[[], T]) -> T:
    """Run one Stripe request; Stripe's refusals and outages become a stable domain error."""
    try:
        return request(fn)
    except StripeFailure as exc:
        raise failed_to(what, exc) from exc


def failed_to(what: str, exc: StripeFailure) -> ExternalServiceError:
    """A Stripe failure as the domain's error: one line in Stripe's words, with Stripe's code."""
    message = exc.user_message or exc.text or exc.name
    log.warning("stripe_call_failed", what=what, error=message, code=exc.code)
    return ExternalServiceError(f"Stripe refused or failed to {what}: {message}", stripe_code=exc.code)


def idempotent(key: str) -> RequestOptions:
    """Request options carrying a Stripe idempotency key (see `stripe_key`)."""
    return {"idempotency_key": key}


def stripe_key(*parts: str) -> str:
    """A Stripe idempotency key derived from our own ids and request key (at most 255 chars)."""
    raw = ":".join(parts)
    if len(raw) <= 200:
        return "chronote:" + raw
    return "chronote:" + parts[0] + ":" + hashlib.sha256(raw.encode()).hexdigest()


# ---------------------------------------------------------------------- webhooks


class WebhookSignatureInvalid(BillingError):
    code = "invalid_signature"
    status = 400
    title = "Invalid webhook signature"


def verify_event(payload: bytes, sig_header: str | None, secret: str) -> dict[str, Any]:
    """Verify Stripe's signature (older than 5 minutes is refused) and parse the event."""
    try:
        stripe.Webhook.construct_event(payload, sig_header, secret, tolerance=SIGNATURE_TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureInvalid(
            f"Stripe signature check failed: {exc.user_message or str(exc)}".strip()
        ) from exc
    except ValueError as exc:
        raise WebhookSignatureInvalid(f"Webhook body is not a Stripe event: {exc}") from exc
    try:
        event = json.loads(payload)
    except ValueError as exc:  # pragma: no cover - construct_event parsed it already
        raise WebhookSignatureInvalid("Webhook body is not JSON.") from exc
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        raise WebhookSignatureInvalid("Webhook body is not a Stripe event (no id or type).")
    return event


# ---------------------------------------------------------------------- reading Stripe's JSON


def expandable_id(value: Any) -> str | None:
    """An expandable field: an id string, an expanded object (dict or StripeObject), or nothing."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("id")
    return getattr(value, "id", None)


def to_dict(obj: Any) -> dict[str, Any]:
    """A StripeObject as plain JSON data (what a webhook would carry)."""
    if hasattr(obj, "to_dict"):
        result: dict[str, Any] = obj.to_dict()
        return result
    return dict(obj)
