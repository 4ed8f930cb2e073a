"""Runway (decision 0046): the projection's rules as pure functions, then the service over a real
ledger and usage engine, the API with its access rules, the portal sentence and chart, and the
low-balance notification."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from chronote_billing.api.app import create_app
from chronote_billing.container import Container
from chronote_billing.notifications.service import NotificationService
from chronote_billing.runway import projection
from chronote_billing.runway.projection import Lot
from chronote_billing.usage.schemas import UsageRequest
from tests.api.test_notifications_api import keys
from tests.conftest import OPERATOR, snowflake
from tests.factories import api_headers, new_key
from tests.portal.test_portal_pages import discord, person, text_of

__all__ = ["discord", "keys"]

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


# ---------------------------------------------------------------------- the projection


def test_a_cold_start_says_so_instead_of_guessing() -> None:
    assert projection.pace(NOW, 0, None).cold_start
    young = projection.pace(NOW, 50_000, NOW - 2 * DAY)
    assert young.cold_start and young.daily_rate == 0
    assert projection.runs_out_at(NOW, [Lot(100_000, None)], young) is None
    assert projection.account_sentence(young, 100_000, None, None).startswith("Not enough usage yet")


def test_the_pace_is_the_last_fourteen_days_or_since_the_first_spending() -> None:
    steady = projection.pace(NOW, 135_000, NOW - 60 * DAY)
    # 13 whole days and today's first 12 hours observed.
    assert (steady.observed_seconds, steady.daily_rate) == (13 * 86_400 + 43_200, 10_000)
    recent = projection.pace(NOW, 70_000, NOW - 7 * DAY)
    assert recent.daily_rate == 10_000  # seven days observed, not fourteen
    quiet = projection.pace(NOW, 0, NOW - 30 * DAY)
    assert (quiet.cold_start, quiet.reason) == (False, "no_recent_spending")
    assert projection.runs_out_at(NOW, [Lot(1, None)], quiet) is None
    assert "do not run out" in projection.account_sentence(quiet, 5_000, None, None)


def test_credits_are_spent_in_burn_order_and_lapse_at_their_expiry() -> None:
    pace = projection.pace(NOW, 135_000, NOW - 30 * DAY)  # 10 credits a day
    assert projection.runs_out_at(NOW, [Lot(100_000, None)], pace) == NOW + 10 * DAY
    # 50 credits expiring in 2 days: 20 are spent, 30 lapse; then 100 more last 10 days.
    lots = [Lot(50_000, NOW + 2 * DAY), Lot(100_000, None)]
    assert projection.runs_out_at(NOW, lots, pace) == NOW + 12 * DAY
    gone = [Lot(40_000, NOW - DAY), Lot(10_000, None)]
    assert projection.runs_out_at(NOW, gone, pace) == NOW + DAY
    sentence = projection.account_sentence(pace, 150_000, NOW + 12 * DAY, NOW + 30 * DAY)
    assert (
        sentence == "At the last 14 days' pace (about 10 credits a day), the credits run out on Dec 2, 2026."
    )
    later = projection.account_sentence(pace, 150_000, NOW + 12 * DAY, NOW + 5 * DAY)
    assert "last past the next allowance on Nov 25, 2026" in later


def test_when_an_authorization_reaches_its_cap() -> None:
    pace = projection.pace(NOW, 135_000, NOW - 30 * DAY)
    month_end = datetime(2026, 12, 1, tzinfo=UTC)
    outlook = projection.cap_outlook(NOW, 100_000, 40_000, 10_000, pace, month_end)
    assert (outlook.status, outlook.reaches_cap_at) == ("reaches_cap", NOW + 5 * DAY)
    assert projection.cap_outlook(NOW, 1_000_000, 0, 0, pace, month_end).status == "not_this_month"
    assert projection.cap_outlook(NOW, 50_000, 50_000, 0, pace, month_end).status == "reached"
    assert projection.cap_outlook(NOW, None, 0, 0, pace, month_end).status == "no_cap"
    cold = projection.pace(NOW, 0, None)
    assert projection.cap_outlook(NOW, 100_000, 0, 0, cold, month_end).status == "cold_start"
    assert projection.cap_sentence(outlook) == "Reaches its cap on Nov 25, 2026 at the last 14 days' pace."


# ---------------------------------------------------------------------- the service and its edges


@pytest.fixture
def c(db, clock) -> Container:  # type: ignore[no-untyped-def]
    return Container(db=db, clock=clock)


def spend_daily(c: Container, clock, account_id: str, days: int, credits: int) -> None:  # type: ignore[no-untyped-def]
    for _ in range(days):
        c.db.write(
            lambda s: c.ledger.debit(
                s, account_id=account_id, amount=credits * 1000, idempotency_key=new_key()
            )
        )
        clock.advance(DAY)


def test_an_accounts_runway_from_its_ledger_over_the_api(c, clock, make_account, keys) -> None:  # type: ignore[no-untyped-def]
    account_id = make_account("server")
    c.db.write(
        lambda s: c.ledger.issue_grant(
            s,
            account_id=account_id,
            amount=500_000,
            source="purchase",
            idempotency_key=new_key(),
            cause_type="t",
        )
    )
    client = TestClient(create_app(c))
    guild = c.db.read(lambda s: c.accounts.get(s, account_id).owner_ref)
    reader = keys("accounts:read")
    manager = api_headers(reader, snowflake(), **{"Chronote-Manage-Guilds": guild})
    cold = client.get(f"/v1/accounts/{account_id}/runway", headers=manager).json()
    assert cold["cold_start"] and cold["runs_out_at"] is None and cold["sentence"].startswith("Not enough")

    spend_daily(c, clock, account_id, 20, 10)  # 10 credits a day for 20 days: 300 left
    body = client.get(f"/v1/accounts/{account_id}/runway", headers=manager).json()
    # 130 credits over 13 days and a half: a little under 10 a day, in whole millicredits.
    assert (body["status"], body["daily_rate"], body["spent_in_window"]) == ("spending", 9_629, 130_000)
    assert body["available"] == 300_000
    assert [d["spent"] for d in body["daily"]] == [10_000] * 13 + [0]  # today: nothing spent yet
    runs_out = datetime.fromisoformat(body["runs_out_at"])
    assert runs_out > c.clock.now() and body["renews_at"]
    assert "credits a day" in body["sentence"]

    url = f"/v1/accounts/{account_id}/runway"
    assert client.get(url, headers=api_headers(reader, snowflake())).status_code == 403  # another user
    assert client.get(url, headers=api_headers(reader)).status_code == 403  # for nobody
    assert client.get(url).status_code == 401
    assert client.get(url, headers=api_headers(keys("holds:write"))).status_code == 403
    assert client.get(url, headers=api_headers(keys("operator"))).status_code == 200
    assert (
        client.get("/v1/accounts/acct_01m92q5egskz0frejap38z336j/runway", headers=manager).status_code == 404
    )


def test_an_organization_sees_when_each_authorization_reaches_its_cap(c, clock) -> None:  # type: ignore[no-untyped-def]
    owner, member = snowflake(), snowflake()
    org = c.db.write(
        lambda s: c.orgs.create_org(s, actor_user_id=owner, name="Acme", idempotency_key=new_key())
    )
    c.db.write(
        lambda s: c.ledger.issue_grant(
            s,
            account_id=org.billing_account_id,
            amount=900_000,
            source="purchase",
            idempotency_key=new_key(),
            cause_type="t",
        )
    )
    c.db.write(
        lambda s: c.orgs.add_member(
            s, actor_user_id=owner, org_id=org.id, user_id=member, role="member", idempotency_key=new_key()
        )
    )
    grant = c.db.write(
        lambda s: c.orgs.create_authorization(
            s,
            actor_user_id=owner,
            org_id=org.id,
            subject_type="member",
            subject_id=member,
            monthly_cap_credits=300,
            capture_sources=None,
            valid_from=None,
            valid_until=None,
            idempotency_key=new_key(),
        )
    )
    for _ in range(5):  # 20 minutes a day
        req = UsageRequest(
            context="personal",
            capture_source="desktop",
            user_id=member,
            requested_minutes=20,
            funding_source=grant.id,
        )
        rec = c.db.write(lambda s, r=req: c.usage.start_recording(s, r, new_key()))
        c.db.write(lambda s, r=rec: c.usage.finish_recording(s, OPERATOR, r.id, {"mic": 20 * 60}, new_key()))
        clock.advance(DAY)
    view = c.db.read(lambda s: c.runway.runway(s, c.accounts.get(s, org.billing_account_id)))
    (outlook,) = view.authorizations
    assert (outlook.used, outlook.daily_rate, outlook.status) == (100_000, 20_000, "reaches_cap")
    assert outlook.reaches_cap_at == clock.now() + 10 * DAY  # 200 credits of room at 20 a day


def test_the_low_balance_alert_says_when_the_credits_run_out(c, clock, make_account) -> None:  # type: ignore[no-untyped-def]
    account_id = make_account()
    notifications = NotificationService(clock, c.ledger, c.catalog)
    c.db.write(
        lambda s: c.ledger.issue_grant(
            s,
            account_id=account_id,
            amount=200_000,
            source="purchase",
            idempotency_key=new_key(),
            cause_type="t",
        )
    )
    c.db.write(
        lambda s: notifications.set_alert_settings(
            s, account_id=account_id, low_balance_threshold_credits=150, idempotency_key="al"
        )
    )
    spend_daily(c, clock, account_id, 5, 5)

    def spend(s):  # type: ignore[no-untyped-def]
        c.ledger.debit(s, account_id=account_id, amount=60_000, idempotency_key="big")
        notifications.after_balance_change(s, account_id)

    c.db.write(spend)
    from sqlalchemy import select

    from chronote_billing.notifications.models import OutboxEntry

    (event,) = c.db.read(
        lambda s: list(
            s.scalars(
                select(OutboxEntry.data).where(
                    OutboxEntry.account_id == account_id, OutboxEntry.type == "wallet.balance_low"
                )
            )
        )
    )
    runway = event["runway"]
    assert runway["cold_start"] is False and runway["daily_rate_millicredits"] > 0
    assert runway["runs_out_at"] and "run out on" in runway["sentence"]


def test_every_billing_page_shows_the_runway(db, clock, discord) -> None:  # type: ignore[no-untyped-def]
    guild = snowflake()
    someone = person(db, discord, clock, [{"id": guild, "name": "Den", "permissions": "32"}])
    for page in ("/portal/personal/billing", f"/portal/server/{guild}/billing"):
        text = text_of(someone.get(page))
        assert "Runway" in text and "Not enough usage yet" in text
    c = someone.client.app.state.container  # type: ignore[attr-defined]
    account_id = db.read(lambda s: c.accounts.find(s, "personal", someone.user_id).id)
    clock.advance(-20 * DAY)
    c.db.write(
        lambda s: c.ledger.issue_grant(
            s,
            account_id=account_id,
            amount=100_000,
            source="promotional",
            idempotency_key=new_key(),
            cause_type="t",
        )
    )
    spend_daily(c, clock, account_id, 20, 3)
    page = someone.get("/portal/personal/billing")
    assert (
        "about 2.9 credits a day" in text_of(page)
        and 'aria-label="Credits spent per day, last 14 days"' in page
    )
