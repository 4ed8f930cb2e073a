"""Calendar arithmetic for allowance periods: monthly anniversaries of a subscription's anchor."""

from __future__ import annotations

import calendar
from datetime import datetime

from chronote_billing.core.clock import as_utc


def add_months(moment: datetime, months: int, anchor_day: int | None = None) -> datetime:
    """Same day of month `months` later, clamped to the month's length (Jan 31 -> Feb 28)."""
    moment = as_utc(moment)
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    day = min(anchor_day or moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def allowance_slice(
    period_start: datetime, period_end: datetime, at: datetime
) -> tuple[int, datetime, datetime]:
    """The monthly slice of a subscription period containing `at`: (index, start, end).

    A monthly period is one slice; a yearly period has twelve, on the anchor's monthly
    anniversaries (0002), the last one ending at the period end.
    """
    start, end, at = as_utc(period_start), as_utc(period_end), as_utc(at)
    index = 0
    slice_start = start
    while True:
        slice_end = min(add_months(start, index + 1, start.day), end)
        if at < slice_end or slice_end >= end:
            return index, slice_start, slice_end
        index += 1
        slice_start = slice_end
