"""What a plan change does and what an upgrade adds (`plans.proration`, decision 0018). Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from chronote_billing.catalog.service import load_catalog
from chronote_billing.plans.periods import add_months
from chronote_billing.plans.proration import change_moment, decide_plan_change, upgrade_credits

CATALOG = load_catalog()
BASIC, PRO = CATALOG.plans["server_basic"], CATALOG.plans["server_pro"]
START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 3, 31, tzinfo=UTC)  # 30 days
HALF = START + timedelta(days=15)


def test_a_change_counts_from_within_the_period() -> None:
    assert change_moment(START - timedelta(days=1), START, END) == START
    assert change_moment(HALF, START, END) == HALF
    assert change_moment(END + timedelta(days=1), START, END) == END


def test_an_upgrade_halfway_charges_half_the_price_difference_now() -> None:
    decision = decide_plan_change(BASIC, "month", None, PRO, "month", START, END, HALF)
    assert (decision.kind, decision.effective, decision.effective_at) == ("upgrade", "now", HALF)
    assert decision.amount_due == round(2900 / 2) - round(1200 / 2)
    assert decision.charges_now


def test_monthly_to_annual_charges_the_annual_price_less_the_unused_month() -> None:
    decision = decide_plan_change(BASIC, "month", None, BASIC, "year", START, END, HALF)
    assert (decision.kind, decision.effective) == ("interval", "now")
    assert decision.amount_due == 12000 - 600


def test_a_downgrade_waits_for_the_period_end_and_charges_nothing() -> None:
    decision = decide_plan_change(PRO, "month", None, BASIC, "month", START, END, HALF)
    assert (decision.kind, decision.effective, decision.effective_at, decision.amount_due) == (
        "downgrade",
        "period_end",
        END,
        0,
    )
    assert not decision.charges_now
    back = decide_plan_change(PRO, "month", "server_basic", PRO, "month", START, END, HALF)
    assert back.kind == "cancel_pending"
    same = decide_plan_change(PRO, "month", None, PRO, "month", START, END, HALF)
    assert (same.kind, same.amount_due) == ("unchanged", 0)


def test_annual_to_a_lower_monthly_plan_mid_period_is_refused() -> None:
    year_end = add_months(START, 12)
    decision = decide_plan_change(PRO, "year", None, BASIC, "month", START, year_end, HALF)
    assert (decision.kind, decision.effective, decision.amount_due) == ("unsupported", "refused", 0)


@given(st.integers(min_value=0, max_value=30 * 24 * 3600))
def test_an_upgrade_adds_the_credit_difference_for_what_is_left_of_the_slice(seconds: int) -> None:
    at = START + timedelta(seconds=seconds)
    amount, slice_end = upgrade_credits(BASIC, PRO, changed_at=at, period_start=START, period_end=END)
    difference = PRO.included_millicredits - BASIC.included_millicredits
    assert slice_end == END
    assert amount == difference * int((END - at).total_seconds()) // int((END - START).total_seconds())
    assert 0 <= amount <= difference


def test_a_downgrade_adds_no_credits() -> None:
    amount, _ = upgrade_credits(PRO, BASIC, changed_at=HALF, period_start=START, period_end=END)
    assert amount <= 0
