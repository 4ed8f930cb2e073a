"""Credits as a person reads them: whole credits, rounded toward zero (decision 0039).

Amounts stay integer millicredits everywhere else; this is the one place that turns them into
the whole credits that pages, the CLI, CSV credit columns and readable messages show.
"""

from __future__ import annotations

MILLICREDITS_PER_CREDIT = 1000
UNDER_ONE = "<1"


def whole(millicredits: int) -> int:
    """Whole credits, rounded toward zero: 20,944,767 millicredits are 20,944 credits."""
    whole_part = abs(int(millicredits)) // MILLICREDITS_PER_CREDIT
    return -whole_part if millicredits < 0 else whole_part


def whole_credits(millicredits: int | None, signed: bool = False) -> str:
    """ "20,944" (or "+15,199" with ``signed``); a non-zero amount under one credit reads "<1"."""
    if millicredits is None:
        return "—"
    value = int(millicredits)
    sign = "-" if value < 0 else ("+" if signed and value > 0 else "")
    if value != 0 and abs(value) < MILLICREDITS_PER_CREDIT:
        return f"{sign}{UNDER_ONE}"
    return f"{sign}{abs(whole(value)):,}"


def credits_phrase(millicredits: int) -> str:
    """ "1 credit", "32 credits", "<1 credit"."""
    text = whole_credits(millicredits)
    return f"{text} credit" if text in ("1", "-1", UNDER_ONE) else f"{text} credits"
