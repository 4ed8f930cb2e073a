"""Display formatting: credits from millicredits, money from minor units, dates.

Amounts stay integers everywhere else; these functions only turn them into text for a page.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from babel.core import Locale
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, get_currency_precision

from chronote_billing.core.clock import as_utc
from chronote_billing.credits_text import credits_phrase, whole_credits

LOCALE = Locale.parse("en_US")

SOURCE_LABELS = {
    "plan_allowance": "Plan allowance",
    "free_allowance": "Free monthly allowance",
    "purchase": "Credit pack",
    "promotional": "Promotional credits",
    "migration": "Migrated credits",
    "comp": "Complimentary credits",
    "adjustment": "Adjustment",
    "trial": "Trial credits",
}

KIND_LABELS = {
    "grant": "Credits added",
    "hold": "Reserved",
    "capture": "Usage",
    "release": "Reservation released",
    "hold_expiry": "Reservation expired",
    "debit": "Usage",
    "expiry": "Expired",
    "reversal": "Refund or correction",
    "refund": "Refund",
    "dispute": "Dispute",
}

# Economic statement lines (decision 0038).
LINE_TYPE_LABELS = {
    "credits_added": "Credits added",
    "usage": "Usage",
    "expired": "Expired",
    "refund": "Refund",
    "dispute_lost": "Dispute lost",
    "reversal": "Correction",
    "frozen": "Frozen",
    "unfrozen": "Unfrozen",
}

CAPTURE_SOURCE_LABELS = {
    "discord_voice": "Discord voice",
    "desktop": "Desktop",
    "web": "Web",
    "mobile": "Mobile",
    "quick_capture": "Quick capture",
    "upload": "Upload",
}

ROLE_LABELS = {"owner": "Owner", "billing_admin": "Billing admin", "member": "Member"}


def credits(millicredits: int | None) -> str:
    """Whole credits, rounded toward zero (decision 0039): 1,234 from 1,234,567 millicredits."""
    return whole_credits(millicredits)


def signed_credits(millicredits: int | None) -> str:
    """+1,234 or -25 credits for a statement line."""
    return whole_credits(millicredits, signed=True)


def money(minor_units: int | None, currency: str) -> str:
    """$9.00 from 900 cents; the currency's own number of decimals."""
    if minor_units is None:
        return "—"
    code = currency.upper()
    digits = get_currency_precision(code)
    return format_currency(Decimal(int(minor_units)).scaleb(-digits), code, locale=LOCALE)


def date(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return format_date(as_utc(moment), format="medium", locale=LOCALE)


def datetime_(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return format_datetime(as_utc(moment), format="MMM d, y HH:mm 'UTC'", locale=LOCALE)


def label(mapping: dict[str, str], key: str | None) -> str:
    if key is None:
        return "—"
    return mapping.get(key, key.replace("_", " ").capitalize())


def source_label(source: str | None) -> str:
    return label(SOURCE_LABELS, source)


def kind_label(kind: str | None) -> str:
    return label(KIND_LABELS, kind)


def line_type_label(kind: str | None) -> str:
    return label(LINE_TYPE_LABELS, kind)


def capture_source_label(source: str | None) -> str:
    return label(CAPTURE_SOURCE_LABELS, source)


def role_label(role: str | None) -> str:
    return label(ROLE_LABELS, role)


def percent(part: int, whole: int) -> int:
    """Share of a whole as a whole percentage for meters, 0..100."""
    if whole <= 0:
        return 0
    return max(0, min(100, round(100 * part / whole)))


MAX_BAR_WIDTH = 36


def bar_chart(points: list[tuple[str, int]], width: int = 640, height: int = 160) -> dict[str, Any]:
    """Geometry of a simple bar chart (one bar per labelled value), drawn as inline SVG.

    Bars are at most MAX_BAR_WIDTH wide, so a short range reads as a few bars rather than one
    bar across the page; the group is centred.
    """
    peak = max((v for _, v in points), default=0)
    count = max(1, len(points))
    gap = 4
    bar_width = max(2, min(MAX_BAR_WIDTH, (width - gap * (count + 1)) // count))
    used = count * bar_width + (count + 1) * gap
    left = max(0, (width - used) // 2)
    plot = height - 24
    bars = []
    for i, (name, value) in enumerate(points):
        h = 0 if peak <= 0 else max(1 if value > 0 else 0, round(plot * value / peak))
        bars.append(
            {
                "x": left + gap + i * (bar_width + gap),
                "y": plot - h,
                "width": bar_width,
                "height": h,
                "label": name,
                "value": value,
            }
        )
    return {"width": width, "height": height, "plot": plot, "bars": bars, "peak": peak}


def cap_notice(view: Any, who: str) -> str | dict[str, str]:
    """What changing a cap says; a cap below this month's use is allowed, with a warning of what
    it means (decision 0041)."""
    cap = "no cap" if view.monthly_cap is None else credits_phrase(view.monthly_cap)
    if not view.over_cap:
        return f"Cap for {who} set to {cap}."
    month_end = datetime.strptime(view.period + "-01", "%Y-%m-%d")
    next_month = datetime(month_end.year + month_end.month // 12, month_end.month % 12 + 1, 1)
    return {
        "level": "warn",
        "text": f"Cap for {who} set to {cap}, below the {credits_phrase(view.used + view.held)} already "
        f"used this month: nothing more can be spent under it until {format_date(next_month, 'MMMM d', locale=LOCALE)}.",
    }


def sentence_start(text: str) -> str:
    """Reasons are written to sit inside a sentence ("personal Pro allowance"); a heading
    starts with a capital without lowering the rest (Jinja's `capitalize` would)."""
    return text[:1].upper() + text[1:]


FILTERS = {
    "sentence_start": sentence_start,
    "credits": credits,
    "signed_credits": signed_credits,
    "line_type": line_type_label,
    "money": money,
    "date": date,
    "datetime": datetime_,
    "source_label": source_label,
    "kind_label": kind_label,
    "capture_source": capture_source_label,
    "role_label": role_label,
}
