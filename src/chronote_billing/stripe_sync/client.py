"""The Stripe client, built from settings: real Stripe or the local stand-in is configuration."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

import stripe
import structlog

from chronote_billing.config import Settings
from chronote_billing.core.errors import ExternalServiceError

log = structlog.get_logger(__name__)
T = TypeVar("T")

REAL_STRIPE_API = "https://api.stripe.com"


def make_client(settings: Settings) -> stripe.StripeClient:
    """`CHRONOTE_STRIPE_API_BASE` points the official SDK at Stripe or at the local stand-in."""
    base = settings.stripe_api_base.rstrip("/") or REAL_STRIPE_API
    return stripe.StripeClient(
        settings.stripe_secret_key,
        base_addresses={"api": base, "files": base, "connect": base, "meter_events": base},
        max_network_retries=2,
    )


def stripe_key(*parts: str) -> str:
    """A Stripe idempotency key derived from our own ids and request key (at most 255 chars)."""
    raw = ":".join(parts)
    if len(raw) <= 200:
        return "chronote:" + raw
    return "chronote:" + parts[0] + ":" + hashlib.sha256(raw.encode()).hexdigest()


def call(what: str, fn: Callable[[], T]) -> T:
    """Run one Stripe request; Stripe's refusals and outages become a stable domain error."""
    try:
        return fn()
    except stripe.StripeError as exc:
        message = getattr(exc, "user_message", None) or str(exc) or exc.__class__.__name__
        log.warning("stripe_call_failed", what=what, error=message, code=getattr(exc, "code", None))
        raise ExternalServiceError(
            f"Stripe refused or failed to {what}: {message}",
            stripe_code=getattr(exc, "code", None),
        ) from exc


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
