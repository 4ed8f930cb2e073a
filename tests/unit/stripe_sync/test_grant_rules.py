"""What a payment grants (`stripe_sync.grant_rules`), as pure functions: packs, a period's
allowance, a trial's credits, an upgrade's prorated difference, refunds and disputes. No
database, no Stripe."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from chronote_billing.catalog.service import load_catalog
from chronote_billing.plans.proration import prorated_credits
from chronote_billing.stripe_sync.grant_rules import (
    ALLOWANCE_PRIORITY,
    PACK_PRIORITY,
    allowance_grant,
    dispute_moves_forward,
    dispute_state,
    effective_from,
    pack_grant,
    refund_target,
    refunded_share,
    trial_grant,
    upgrade_grant,
)

CATALOG = load_catalog()
START = datetime(2026, 1, 31, 9, 30, tzinfo=UTC)
DAY = timedelta(days=1)


def test_a_pack_is_keyed_by_its_payment_and_lasts_its_months() -> None:
    pack = CATALOG.credit_packs["credits_1000"]
    paid = pack_grant(
        pack, at=START, cause_type="checkout_session", cause_id="cs_1", payment_intent="pi_1", invoice_id=None
    )
    assert (paid.cause_key, paid.amount, paid.priority) == ("pack:pi_1", 1_000_000, PACK_PRIORITY)
    assert paid.expires_at == datetime(2027, 1, 31, 9, 30, tzinfo=UTC)
    assert paid.description == "1,000 credits pack, usable until 2027-01-31"
    # The same payment through its off-session purchase or its webhook: the same key, one grant.
    again = pack_grant(
        pack,
        at=START + DAY,
        cause_type="payment_intent",
        cause_id="pi_1",
        payment_intent="pi_1",
        invoice_id=None,
    )
    assert again.cause_key == paid.cause_key
    # Bought on an invoice (no payment intent known): keyed by the invoice.
    invoiced = pack_grant(
        pack, at=START, cause_type="invoice", cause_id="in_1", payment_intent=None, invoice_id="in_1"
    )
    assert invoiced.cause_key == "invoice:in_1:pack"


def test_a_yearly_invoice_grants_its_first_month_only() -> None:
    plan = CATALOG.plans["server_basic"]
    year = allowance_grant(plan, "in_9", START, START + timedelta(days=365))
    assert (year.cause_key, year.amount, year.priority) == (
        "invoice:in_9:allowance",
        4_800_000,
        ALLOWANCE_PRIORITY,
    )
    assert (year.effective_at, year.expires_at) == (START, datetime(2026, 2, 28, 9, 30, tzinfo=UTC))
    month = allowance_grant(plan, "in_10", START, START + 28 * DAY)
    assert month.expires_at == START + 28 * DAY


def test_a_trial_grants_its_own_credits_until_it_ends() -> None:
    pro = CATALOG.plans["personal_pro"]
    trial = trial_grant(pro, "in_t", START, START + 7 * DAY)
    assert trial is not None and (trial.cause_key, trial.source) == ("invoice:in_t:trial", "trial")
    assert trial.amount == 300_000 and trial.expires_at == START + 7 * DAY
    assert trial_grant(CATALOG.plans["server_basic"], "in_t", START, START + 7 * DAY) is None  # no trial
    assert pro.trial is not None
    assert trial_grant(replace(pro, trial=replace(pro.trial, credits=0)), "in_t", START, START + DAY) is None


def test_an_upgrade_adds_the_prorated_difference_for_the_rest_of_the_month() -> None:
    basic, pro = CATALOG.plans["server_basic"], CATALOG.plans["server_pro"]
    period_end = START + 28 * DAY  # 2026-02-28 09:30
    halfway = START + 14 * DAY
    grant = upgrade_grant(basic, pro, "in_u", changed_at=halfway, period_start=START, period_end=period_end)
    assert grant is not None
    assert grant.amount == (20_000_000 - 4_800_000) // 2  # half the slice left, rounded down
    assert (grant.cause_key, grant.kind, grant.effective_at, grant.expires_at) == (
        "invoice:in_u:upgrade",
        "upgrade",
        halfway,
        period_end,
    )
    # A yearly period: the rest of the current monthly slice only.
    yearly = upgrade_grant(
        basic, pro, "in_y", changed_at=START + 40 * DAY, period_start=START, period_end=START + 365 * DAY
    )
    assert yearly is not None and yearly.expires_at == datetime(2026, 3, 31, 9, 30, tzinfo=UTC)
    # A downgrade, or the last second of the slice, adds nothing.
    assert (
        upgrade_grant(pro, basic, "in_d", changed_at=halfway, period_start=START, period_end=period_end)
        is None
    )
    assert (
        upgrade_grant(basic, pro, "in_e", changed_at=period_end, period_start=START, period_end=period_end)
        is None
    )


@given(
    difference=st.integers(min_value=0, max_value=10**9),
    length=st.integers(min_value=1, max_value=400 * 86400),
    offset=st.integers(min_value=-86400, max_value=401 * 86400),
)
def test_prorated_credits_stay_between_nothing_and_the_whole_difference(
    difference: int, length: int, offset: int
) -> None:
    end = START + timedelta(seconds=length)
    at = START + timedelta(seconds=offset)
    amount = prorated_credits(difference, START, end, at)
    assert 0 <= amount <= difference
    assert prorated_credits(difference, START, end, START) == difference
    if offset >= length:
        assert amount == 0
    later = prorated_credits(difference, START, end, at + timedelta(seconds=1))
    assert later <= amount  # later changes never add more


def test_a_late_delivery_counts_from_now_and_an_ended_period_grants_nothing() -> None:
    pack = CATALOG.credit_packs["credits_1000"]
    grant = pack_grant(
        pack, at=START, cause_type="invoice", cause_id="in_1", payment_intent=None, invoice_id="in_1"
    )
    assert effective_from(grant, START + DAY) == START
    assert effective_from(replace(grant, effective_at=START + 2 * DAY), START + DAY) == START + DAY
    assert effective_from(grant, grant.expires_at) is None


def test_refunds_take_back_the_refunded_share_rounded_down() -> None:
    assert refund_target(1_000_000, 900, 450) == 500_000
    assert refund_target(1_000_000, 900, 1) == 1_111
    assert refund_target(1_000_000, 900, 2000) == 1_000_000  # never more than was bought
    assert refund_target(1_000_000, 0, 100) == 0 and refund_target(1_000_000, 900, 0) == 0
    assert (refunded_share(450, 900), refunded_share(899, 900), refunded_share(900, 900)) == (
        "50%",
        "99%",
        "all",
    )


def test_a_dispute_only_moves_forward() -> None:
    assert dispute_state("charge.dispute.created", "needs_response") == "open"
    assert dispute_state("charge.dispute.closed", "won") == "won"
    assert dispute_state("charge.dispute.closed", "lost") == "lost"
    assert dispute_state("charge.dispute.closed", "warning_closed") == "open"
    assert dispute_moves_forward("none", "open") and dispute_moves_forward("open", "lost")
    assert not dispute_moves_forward("open", "open") and not dispute_moves_forward("won", "lost")
