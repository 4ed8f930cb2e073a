"""The runway projection (decision 0046) as pure functions of facts: what was spent and when,
the spendable grants in burn order, the caps. Integers only: millicredits and seconds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from chronote_billing.core.clock import as_utc

WINDOW = timedelta(days=14)
MIN_HISTORY = timedelta(days=3)
DAY_SECONDS = 86_400
MILLICREDITS_PER_CREDIT = 1000


@dataclass(frozen=True)
class Pace:
    """Spending over the time observed; `cold_start` when there is too little to go on."""

    spent: int  # millicredits in the window
    observed_seconds: int
    cold_start: bool
    reason: str  # cold_start, no_recent_spending, spending

    @property
    def daily_rate(self) -> int:
        """Millicredits a day (0 without a rate)."""
        if self.cold_start or self.observed_seconds <= 0:
            return 0
        return self.spent * DAY_SECONDS // self.observed_seconds

    def seconds_for(self, millicredits: int) -> int:
        """How long `millicredits` last at this pace (only with spending)."""
        return -(-millicredits * self.observed_seconds // self.spent)


@dataclass(frozen=True)
class Lot:
    available: int
    expires_at: datetime | None


def window_start(now: datetime) -> datetime:
    """The window: the last 14 UTC days, today's part included (so the chart's 14 bars add up to
    what the pace is computed from)."""
    today = as_utc(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - (WINDOW - timedelta(days=1))


def pace(now: datetime, spent_in_window: int, first_spend_at: datetime | None) -> Pace:
    """The last 14 days' pace; observed since the first spending ever when that is more recent."""
    if first_spend_at is None:
        return Pace(0, 0, True, "cold_start")
    since_first = now - as_utc(first_spend_at)
    if since_first < MIN_HISTORY:
        return Pace(spent_in_window, int(since_first.total_seconds()), True, "cold_start")
    observed = int(min(since_first, now - window_start(now)).total_seconds())
    if spent_in_window <= 0:
        return Pace(0, observed, False, "no_recent_spending")
    return Pace(spent_in_window, observed, False, "spending")


def runs_out_at(now: datetime, lots: Sequence[Lot], p: Pace) -> datetime | None:
    """When the lots, spent in the order given (burn order) at pace `p`, are gone; each lot that
    would still hold credits at its expiry lapses there. None without spending."""
    if p.reason != "spending":
        return None
    moment = now
    for lot in lots:
        if lot.available <= 0:
            continue
        expires = as_utc(lot.expires_at) if lot.expires_at is not None else None
        if expires is not None and expires <= moment:
            continue  # lapses before the spending reaches it
        lasts = timedelta(seconds=p.seconds_for(lot.available))
        moment = min(moment + lasts, expires) if expires is not None else moment + lasts
    return moment


@dataclass(frozen=True)
class CapOutlook:
    status: str  # no_cap, reached, cold_start, no_recent_spending, reaches_cap, not_this_month
    reaches_cap_at: datetime | None


def cap_outlook(
    now: datetime, cap: int | None, used: int, held: int, p: Pace, month_end: datetime
) -> CapOutlook:
    """When spending under an authorization reaches its monthly cap, if it does this month."""
    if cap is None:
        return CapOutlook("no_cap", None)
    room = cap - used - held
    if room <= 0:
        return CapOutlook("reached", None)
    if p.cold_start:
        return CapOutlook("cold_start", None)
    if p.reason != "spending":
        return CapOutlook("no_recent_spending", None)
    when = now + timedelta(seconds=p.seconds_for(room))
    if when >= month_end:
        return CapOutlook("not_this_month", None)
    return CapOutlook("reaches_cap", when)


def day_text(moment: datetime) -> str:
    moment = as_utc(moment)
    return f"{moment:%b} {moment.day}, {moment.year}"


def credits_text(millicredits: int) -> str:
    """About how many credits: whole credits from 10 on, else to a tenth (rounded half up)."""
    tenths = (millicredits + 50) // 100
    if tenths >= 100 or tenths % 10 == 0:
        return f"{(tenths + 5) // 10:,}"
    return f"{tenths // 10}.{tenths % 10}"


def account_sentence(p: Pace, available: int, runs_out: datetime | None, renews_at: datetime | None) -> str:
    if p.cold_start:
        return "Not enough usage yet to tell when the credits run out."
    if available <= 0:
        return "No credits are available now."
    if p.reason == "no_recent_spending":
        return "No credits were spent in the last 14 days; at that pace they do not run out."
    rate = credits_text(p.daily_rate)
    assert runs_out is not None
    text = (
        f"At the last 14 days' pace (about {rate} credits a day), the credits run out on {day_text(runs_out)}"
    )
    if renews_at is not None and runs_out >= renews_at:
        return f"At the last 14 days' pace (about {rate} credits a day), the credits last past the next allowance on {day_text(renews_at)}."
    return text + "."


def cap_sentence(outlook: CapOutlook) -> str:
    return {
        "no_cap": "No monthly cap.",
        "reached": "Has reached its monthly cap.",
        "cold_start": "Not enough usage yet to tell.",
        "no_recent_spending": "Nothing spent in the last 14 days.",
        "not_this_month": "Stays under its cap this month at the last 14 days' pace.",
        "reaches_cap": f"Reaches its cap on {day_text(outlook.reaches_cap_at)} at the last 14 days' pace."
        if outlook.reaches_cap_at
        else "",
    }[outlook.status]
