"""Which plan is in force and which allowance is due (`plans.rules`), as pure functions over
facts: a subscription, complimentary plans and the catalog. No database, no Stripe."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from chronote_billing.catalog.service import load_catalog
from chronote_billing.plans.rules import (
    PAYMENT_GRACE,
    CompRow,
    SubscriptionRow,
    best_complimentary,
    due_allowance,
    grace_ends_at,
    next_allowance_at,
    paid_plan,
    plan_in_force,
    plan_source,
    subscription_in_force,
)

CATALOG = load_catalog()
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def subscription(**changes: object) -> SubscriptionRow:
    sub = SubscriptionRow(
        stripe_subscription_id="sub_1",
        plan_id="personal_pro",
        interval="month",
        status="active",
        current_period_start=datetime(2026, 3, 1, tzinfo=UTC),
        current_period_end=datetime(2026, 4, 1, tzinfo=UTC),
        payment_failed_at=None,
        updated_at=datetime(2026, 3, 1, tzinfo=UTC),
        pending_plan_id=None,
    )
    return replace(sub, **changes)  # type: ignore[arg-type]


def comp(plan_id: str = "server_basic", **changes: object) -> CompRow:
    return replace(CompRow("comp_1", plan_id, NOW - 30 * DAY, None), **changes)  # type: ignore[arg-type]


def test_without_subscription_or_comp_the_free_plan_of_the_kind_is_in_force() -> None:
    assert plan_in_force("personal", None, None, NOW, CATALOG) == CATALOG.plans["personal_free"]
    assert plan_in_force("server", None, None, NOW, CATALOG) == CATALOG.plans["server_free"]
    assert plan_in_force("organization", subscription(), None, NOW, CATALOG) is None


def test_an_active_or_trialing_subscription_puts_its_plan_in_force() -> None:
    for status in ("active", "trialing"):
        plan = plan_in_force("personal", subscription(status=status), None, NOW, CATALOG)
        assert plan is not None and plan.id == "personal_pro"
    for status in ("canceled", "unpaid", "incomplete"):
        plan = plan_in_force("personal", subscription(status=status), None, NOW, CATALOG)
        assert plan is not None and plan.id == "personal_free"


@given(st.integers(min_value=0, max_value=14 * 24 * 3600))
def test_past_due_keeps_the_plan_for_exactly_seven_days_after_the_first_failure(seconds: int) -> None:
    failed = NOW - timedelta(days=10)
    sub = subscription(status="past_due", payment_failed_at=failed)
    at = failed + timedelta(seconds=seconds)
    assert grace_ends_at(sub) == failed + PAYMENT_GRACE
    assert subscription_in_force(sub, at) is (at < failed + PAYMENT_GRACE)
    expected = "personal_pro" if at < failed + PAYMENT_GRACE else "personal_free"
    plan = plan_in_force("personal", sub, None, at, CATALOG)
    assert plan is not None and plan.id == expected


def test_grace_counts_from_the_last_update_when_no_failure_was_recorded() -> None:
    sub = subscription(status="past_due", updated_at=NOW - 2 * DAY)
    assert grace_ends_at(sub) == NOW + 5 * DAY
    assert grace_ends_at(subscription(status="active")) is None
    assert grace_ends_at(None) is None


def test_a_scheduled_downgrade_applies_from_the_period_end() -> None:
    sub = subscription(plan_id="server_pro", pending_plan_id="server_basic")
    before = paid_plan(sub, sub.current_period_end - timedelta(seconds=1), CATALOG)
    after = paid_plan(sub, sub.current_period_end, CATALOG)
    assert before is not None and before.id == "server_pro"
    assert after is not None and after.id == "server_basic"


def test_the_higher_of_the_paid_and_the_complimentary_plan_is_in_force() -> None:
    sub = subscription(plan_id="server_basic")
    pro = best_complimentary([comp("server_pro")], "server", NOW, CATALOG)
    plan = plan_in_force("server", sub, pro, NOW, CATALOG)
    assert plan is not None and plan.id == "server_pro"
    assert plan_source(plan, sub, pro) == "complimentary"
    basic = best_complimentary([comp("server_basic")], "server", NOW, CATALOG)
    sub_pro = subscription(plan_id="server_pro")
    plan = plan_in_force("server", sub_pro, basic, NOW, CATALOG)
    assert plan is not None and plan.id == "server_pro"
    assert plan_source(plan, sub_pro, basic) == "paid"
    assert plan_source(CATALOG.plans["server_free"], None, None) == "free"
    assert plan_source(None, None, None) == "none"


def test_only_comps_running_now_and_of_the_account_kind_count() -> None:
    ended = comp("server_pro", id="ended", ends_at=NOW)
    future = comp("server_pro", id="future", starts_at=NOW + DAY)
    wrong_kind = comp("personal_pro", id="personal")
    running = comp("server_basic", id="running", ends_at=NOW + DAY)
    best = best_complimentary([ended, future, wrong_kind, running], "server", NOW, CATALOG)
    assert best is not None and (best[0].id, best[1].id) == ("running", "server_basic")
    assert best_complimentary([ended, future, wrong_kind], "server", NOW, CATALOG) is None


def test_the_free_allowance_is_due_once_per_calendar_month() -> None:
    free = CATALOG.plans["personal_free"]
    due = due_allowance(free, None, None, NOW, CATALOG)
    assert due is not None
    assert (due.cause_type, due.cause_id, due.amount) == ("free_plan", "personal_free:2026-03", 120_000)
    assert (due.effective_at, due.expires_at) == (
        datetime(2026, 3, 1, tzinfo=UTC),
        datetime(2026, 4, 1, tzinfo=UTC),
    )
    assert due.idempotency_key == "free-allowance:2026-03"
    april = due_allowance(free, None, None, NOW + 30 * DAY, CATALOG)
    assert april is not None and april.cause_id == "personal_free:2026-04"


def test_a_monthly_subscription_allowance_comes_with_its_invoice_not_on_first_need() -> None:
    sub = subscription()
    plan = plan_in_force("personal", sub, None, NOW, CATALOG)
    assert plan is not None and plan.id == "personal_pro"
    assert due_allowance(plan, sub, None, NOW, CATALOG) is None


def test_a_yearly_subscription_issues_its_later_monthly_slices_on_first_need() -> None:
    start = datetime(2026, 1, 31, tzinfo=UTC)
    sub = subscription(
        interval="year", current_period_start=start, current_period_end=datetime(2027, 1, 31, tzinfo=UTC)
    )
    plan = CATALOG.plans["personal_pro"]
    assert due_allowance(plan, sub, None, start + DAY, CATALOG) is None  # first slice: the invoice
    due = due_allowance(plan, sub, None, datetime(2026, 3, 5, tzinfo=UTC), CATALOG)
    assert due is not None
    assert (due.cause_type, due.amount, due.source) == ("subscription", 1_500_000, "plan_allowance")
    assert (due.effective_at, due.expires_at) == (
        datetime(2026, 2, 28, tzinfo=UTC),
        datetime(2026, 3, 31, tzinfo=UTC),
    )
    assert due.cause_id == "sub_1:2026-02-28T00:00:00+00:00"
    # Past due, the plan stays in force but no new slice is issued until it is paid.
    assert (
        due_allowance(plan, replace(sub, status="past_due", payment_failed_at=NOW), None, NOW, CATALOG)
        is None
    )


def test_a_complimentary_allowance_is_monthly_and_stops_with_the_comp() -> None:
    ends = NOW + 5 * DAY
    best = best_complimentary([comp("server_basic", ends_at=ends)], "server", NOW, CATALOG)
    plan = plan_in_force("server", None, best, NOW, CATALOG)
    due = due_allowance(plan, None, best, NOW, CATALOG)
    assert due is not None
    assert (due.cause_type, due.cause_id, due.amount) == ("complimentary_plan", "comp_1:2026-03", 4_800_000)
    assert (due.effective_at, due.expires_at) == (datetime(2026, 3, 1, tzinfo=UTC), ends)


def test_the_next_allowance_is_the_next_month_or_the_next_slice() -> None:
    assert next_allowance_at(None, None, NOW) is None
    assert next_allowance_at(CATALOG.plans["personal_free"], None, NOW) == datetime(2026, 4, 1, tzinfo=UTC)
    yearly = subscription(
        interval="year",
        current_period_start=datetime(2026, 1, 15, tzinfo=UTC),
        current_period_end=datetime(2027, 1, 15, tzinfo=UTC),
    )
    assert next_allowance_at(CATALOG.plans["personal_pro"], yearly, NOW) == datetime(2026, 3, 15, tzinfo=UTC)
