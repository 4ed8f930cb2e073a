"""Stripe's moments are Unix seconds; ours are aware UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime

from chronote_billing.core.clock import as_utc


def from_ts(ts: int | float) -> datetime:
    return datetime.fromtimestamp(int(ts), tz=UTC)


def to_ts(moment: datetime) -> int:
    return int(as_utc(moment).timestamp())
