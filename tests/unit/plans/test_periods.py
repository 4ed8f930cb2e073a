"""Period arithmetic (`plans.periods`): monthly anniversaries and allowance slices. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from chronote_billing.plans.periods import add_months, allowance_slice

JAN_31 = datetime(2026, 1, 31, 9, 30, tzinfo=UTC)


def test_months_are_added_on_the_anchor_day_clamped_to_the_month_length() -> None:
    assert add_months(JAN_31, 1) == datetime(2026, 2, 28, 9, 30, tzinfo=UTC)
    assert add_months(JAN_31, 2) == datetime(2026, 3, 31, 9, 30, tzinfo=UTC)
    assert add_months(datetime(2026, 2, 28, tzinfo=UTC), 1, anchor_day=31) == datetime(
        2026, 3, 31, tzinfo=UTC
    )
    assert add_months(datetime(2027, 12, 15, tzinfo=UTC), 1) == datetime(2028, 1, 15, tzinfo=UTC)
    assert add_months(datetime(2028, 1, 31, tzinfo=UTC), 1) == datetime(2028, 2, 29, tzinfo=UTC)


def test_a_monthly_period_is_one_slice() -> None:
    end = add_months(JAN_31, 1)
    assert allowance_slice(JAN_31, end, JAN_31 + timedelta(days=10)) == (0, JAN_31, end)


@given(st.integers(min_value=0, max_value=364 * 24))
def test_a_yearly_period_has_twelve_slices_that_contain_the_moment(hours: int) -> None:
    end = add_months(JAN_31, 12)
    at = JAN_31 + timedelta(hours=hours)
    index, start, stop = allowance_slice(JAN_31, end, at)
    assert 0 <= index < 12
    assert start <= at < stop
    assert start == (JAN_31 if index == 0 else add_months(JAN_31, index, JAN_31.day))
    assert stop == min(add_months(JAN_31, index + 1, JAN_31.day), end)


def test_the_last_slice_ends_at_the_period_end() -> None:
    end = add_months(JAN_31, 12)
    assert allowance_slice(JAN_31, end, end - timedelta(seconds=1)) == (11, add_months(JAN_31, 11), end)
