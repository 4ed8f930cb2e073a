"""Time source. Services take a clock so tests can move time instead of sleeping."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to; thread-safe for concurrency tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now = self._now + delta
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every datetime in this service is UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def month_key(moment: datetime) -> str:
    """Calendar month (UTC) of a moment, e.g. '2026-11': the period of caps and free allowances."""
    moment = as_utc(moment)
    return f"{moment.year:04d}-{moment.month:02d}"


def month_bounds(moment: datetime) -> tuple[datetime, datetime]:
    moment = as_utc(moment)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(moment.year + (moment.month == 12), moment.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


system_clock = SystemClock()
__all__ = [
    "Clock",
    "SystemClock",
    "ManualClock",
    "as_utc",
    "month_key",
    "month_bounds",
    "system_clock",
    "timedelta",
]
