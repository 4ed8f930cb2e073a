"""Usage reports and the operator CLI: grouped by day, source, member, server and context."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from chronote_billing.cli import output
from chronote_billing.cli.main import app
from chronote_billing.container import Container
from chronote_billing.usage import reports
from chronote_billing.usage.schemas import EventRequest, UsageRequest
from tests.conftest import OPERATOR, snowflake
from tests.factories import new_key


@pytest.fixture
def c(db, clock) -> Container:
    return Container(db=db, clock=clock)


def test_org_usage_grouped_every_way_and_exported(c, clock, tmp_path):
    owner, alice, bob, guild = snowflake(), snowflake(), snowflake(), snowflake()
    org = c.db.write(
        lambda s: c.orgs.create_org(s, actor_user_id=owner, name="Acme", idempotency_key=new_key())
    )
    acct = org.billing_account_id
    c.db.write(
        lambda s: c.ledger.issue_grant(
            s, account_id=acct, amount=500_000, source="purchase", idempotency_key=new_key(), cause_type="t"
        )
    )
    auths = {}
    for user in (alice, bob):
        c.db.write(
            lambda s, u=user: c.orgs.add_member(
                s, actor_user_id=owner, org_id=org.id, user_id=u, role="member", idempotency_key=new_key()
            )
        )
        auths[user] = c.db.write(
            lambda s, u=user: c.orgs.create_authorization(
                s,
                actor_user_id=owner,
                org_id=org.id,
                subject_type="member",
                subject_id=u,
                monthly_cap_credits=None,
                capture_sources=None,
                valid_from=None,
                valid_until=None,
                idempotency_key=new_key(),
            )
        )
    c.db.write(
        lambda s: c.orgs.link_server(
            s,
            actor_user_id=owner,
            actor_manages_guild=True,
            org_id=org.id,
            guild_id=guild,
            idempotency_key=new_key(),
        )
    )
    c.db.write(
        lambda s: c.orgs.create_authorization(
            s,
            actor_user_id=owner,
            org_id=org.id,
            subject_type="server",
            subject_id=guild,
            monthly_cap_credits=None,
            capture_sources=None,
            valid_from=None,
            valid_until=None,
            idempotency_key=new_key(),
        )
    )

    def record(user, source, minutes):
        req = UsageRequest(
            context="personal",
            capture_source=source,
            user_id=user,
            requested_minutes=minutes,
            funding_source=auths[user].id,
        )
        rec = c.db.write(lambda s: c.usage.start_recording(s, req, new_key()))
        c.db.write(lambda s: c.usage.finish_recording(s, OPERATOR, rec.id, {"mic": minutes * 60}, new_key()))

    record(alice, "desktop", 30)
    clock.advance(timedelta(days=1))
    record(bob, "web", 20)
    record(alice, "web", 10)
    ask = EventRequest(
        event_id=new_key(),
        event_type="ask_question",
        context="personal",
        user_id=bob,
        funding_source=auths[bob].id,
    )
    c.db.write(lambda s: c.usage.charge_event(s, ask))

    def keys(group_by):
        rows = c.db.read(lambda s: reports.usage_report(s, acct, group_by)).rows
        return {r.key: r.charged for r in rows}

    assert keys("member") == {alice: 40_000, bob: 20_500}
    assert keys("source") == {"desktop": 30_000, "web": 30_000, "ask_question": 500}
    assert keys("day") == {"2026-11-01": 30_000, "2026-11-02": 30_500}
    assert keys("context") == {"personal": 60_500}
    assert keys("server") == {"personal": 60_500}
    lines = list(csv.DictReader(io.StringIO(c.db.read(lambda s: reports.usage_csv(s, acct)))))
    # Whole credits (decision 0039) beside the exact millicredits; reasons in the third person.
    assert [line["charged_credits"] for line in lines] == ["30", "20", "10", "0"]
    assert [line["charged_millicredits"] for line in lines] == ["30000", "20000", "10000", "500"]
    assert lines[0]["reason"].startswith("Desktop recording by ") and "30 min, under" in lines[0]["reason"]
    assert lines[3]["reason"].startswith("Ask question by ") and "for you" not in "".join(
        r["reason"] for r in lines
    )
    assert "title" not in ",".join(lines[0].keys())

    output.set_container(c)
    try:
        target = tmp_path / "usage.csv"
        result = CliRunner().invoke(app, ["usage", "report", acct, "--by", "member", "--csv", str(target)])
        assert result.exit_code == 0, result.output
        assert alice in result.output and "total charged 60 credits" in result.output
        assert target.read_text().count("\n") == 5
        shown = CliRunner().invoke(app, ["org", "show", org.id])
        assert shown.exit_code == 0 and "Acme" in shown.output and "available 439 credits" in shown.output
        audited = CliRunner().invoke(app, ["org", "audit", org.id])
        assert audited.exit_code == 0 and "linked the server" in audited.output
        assert "{" not in audited.output and "monthly_cap" not in audited.output
        bad = CliRunner().invoke(app, ["usage", "report", acct, "--by", "title"])
        assert bad.exit_code == 1 and "group_by" in bad.output
    finally:
        output.set_container(None)
