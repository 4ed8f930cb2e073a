"""What a ledger request must be before anything is looked up: whole, bounded amounts, an expiry
given one way, a known grant source; and the spend cap a request counts against."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from chronote_billing.core.clock import as_utc
from chronote_billing.core.errors import (
    ValidationFailed,
)

GRANT_SOURCES = (
    "plan_allowance",
    "free_allowance",
    "purchase",
    "promotional",
    "migration",
    "comp",
    "adjustment",
    "trial",
)
MAX_AMOUNT = 10**15  # millicredits; far above any real balance, below BIGINT's limit


class CaptureExceedsHold(ValidationFailed):
    code = "capture_exceeds_hold"
    title = "Capture above the held amount"


@dataclass(frozen=True)
class CapSpec:
    """A spend cap to count a hold or debit against (an authorization's monthly cap).

    ``limit`` is the cap in millicredits for the calendar month, or None to count usage
    without limiting it.
    """

    cap_id: str
    limit: int | None


def _check_amount(amount: Any, field: str = "amount", allow_zero: bool = False) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValidationFailed(f"{field} must be a whole number of millicredits.", field=field)
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ValidationFailed(f"{field} must be {'zero or ' if allow_zero else ''}positive.", field=field)
    if amount > MAX_AMOUNT:
        raise ValidationFailed(f"{field} is larger than any balance can be.", field=field)
    return amount


def _expiry(
    now: datetime, expires_at: datetime | None, ttl_seconds: int | None
) -> tuple[datetime | None, dict[str, Any]]:
    """The absolute expiry, and the expiry as the client sent it for the request's fingerprint:
    a TTL stays a TTL, so a retry of the same request seconds later is the same request (0033)."""
    if ttl_seconds is not None:
        if expires_at is not None:
            raise ValidationFailed("Give expires_at or ttl_seconds, not both.", field="ttl_seconds")
        return now + timedelta(seconds=ttl_seconds), {"ttl_seconds": ttl_seconds}
    if expires_at is None:
        return None, {}
    expires = as_utc(expires_at)
    return expires, {"expires_at": expires.isoformat()}
