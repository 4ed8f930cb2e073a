"""The HTTP edge of organizations and usage: real API keys, scopes, problem codes, CSV."""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from chronote_billing.api.app import create_app
from chronote_billing.container import Container
from chronote_billing.core.ids import new_id
from chronote_billing.orgs.models import OrgAuditEntry
from tests.conftest import snowflake
from tests.factories import api_headers, api_key


@pytest.fixture
def c(db, clock) -> Container:
    return Container(db=db, clock=clock)


@pytest.fixture
def client(c) -> TestClient:
    return TestClient(create_app(c))


def test_org_flow_recording_and_usage_report_over_http(c, client):
    admin_key = api_key(c, "orgs:read", "orgs:write", "accounts:read")
    bot_key = api_key(c, "holds:write", "usage:write", "accounts:read")
    owner, member, guild = snowflake(), snowflake(), snowflake()
    org = client.post("/v1/orgs", json={"name": "Acme"}, headers=api_headers(admin_key, owner, idem=True))
    assert org.status_code == 201, org.text
    org_id, org_account = org.json()["id"], org.json()["billing_account_id"]
    c.db.write(
        lambda s: c.ledger.issue_grant(
            s,
            account_id=org_account,
            amount=1_000_000,
            source="purchase",
            idempotency_key="buy",
            cause_type="test",
        )
    )
    assert (
        client.post(
            f"/v1/orgs/{org_id}/members",
            json={"user_id": member},
            headers=api_headers(admin_key, owner, idem=True),
        ).status_code
        == 201
    )
    # Listings carry the name a member signed in to the portal with, once they have.
    from chronote_billing.people import service as people

    c.db.write(lambda s: people.remember(s, member, "  Dana   Scully ", c.clock.now()))
    listed = client.get(f"/v1/orgs/{org_id}/members", headers=api_headers(admin_key, owner)).json()
    assert {m["user_id"]: m["display_name"] for m in listed} == {owner: None, member: "Dana Scully"}
    no_manage = client.post(
        f"/v1/orgs/{org_id}/servers",
        json={"guild_id": guild},
        headers=api_headers(admin_key, owner, idem=True),
    )
    assert (
        no_manage.status_code == 403
        and no_manage.json()["missing_permission"] == f"Manage Server on guild {guild}"
    )
    linked = client.post(
        f"/v1/orgs/{org_id}/servers",
        json={"guild_id": guild},
        headers=api_headers(admin_key, owner, guild, idem=True),
    )
    assert linked.status_code == 201
    auth = client.post(
        f"/v1/orgs/{org_id}/authorizations",
        json={"subject_type": "member", "subject_id": member, "monthly_cap_credits": 600},
        headers=api_headers(admin_key, owner, idem=True),
    ).json()

    body = {
        "context": "personal",
        "capture_source": "desktop",
        "requested_minutes": 90,
        "meeting_id": "m-" + member,
    }
    headers = api_headers(bot_key, member, idem=True)
    quote = client.post("/v1/usage/quote", json=body, headers=headers).json()
    started = client.post("/v1/recordings", json=body, headers=headers)
    retried = client.post("/v1/recordings", json=body, headers=headers)
    assert started.status_code == 201 and retried.json() == started.json()
    rec = started.json()
    assert rec["authorization_id"] == auth["id"] == quote["authorization_id"]
    assert rec["reason"] == "Acme authorization for you, 510 of 600 credits left this month"
    done = client.post(
        f"/v1/recordings/{rec['id']}/finish",
        json={"seconds_by_source": {"mic": 3000, "system": 3010}},
        headers=api_headers(bot_key, member, idem=True),
    )
    assert done.json()["charged"] == 51_000

    ent = client.get("/v1/entitlements?context=personal", headers=api_headers(bot_key, member)).json()
    assert ent["plan"] == "personal_free" and [f["id"] for f in ent["funding_sources"]] == [
        "personal",
        auth["id"],
    ]
    assert ent["funding_sources"][1]["left"] == 549_000

    report = client.get(
        f"/v1/accounts/{org_account}/usage?group_by=member", headers=api_headers(admin_key, owner)
    )
    assert report.status_code == 200
    assert report.json()["rows"] == [
        {"object": "usage_report_row", "key": member, "count": 1, "minutes": 51, "held": 0, "charged": 51_000}
    ]
    # A window given with and without a zone: both read as UTC, never a 500.
    for path in ("usage", "usage.csv"):
        mixed = client.get(
            f"/v1/accounts/{org_account}/{path}",
            params={"since": "2020-01-01T00:00:00", "until": "2099-01-01T00:00:00Z"},
            headers=api_headers(admin_key, owner),
        )
        assert mixed.status_code == 200, mixed.text
    backwards = client.get(
        f"/v1/accounts/{org_account}/usage",
        params={"since": "2099-01-01T00:00:00", "until": "2020-01-01T00:00:00Z"},
        headers=api_headers(admin_key, owner),
    )
    assert backwards.status_code == 422 and backwards.json()["code"] == "validation_error"
    denied = client.get(f"/v1/accounts/{org_account}/usage", headers=api_headers(admin_key, member))
    assert denied.status_code == 403
    text = client.get(f"/v1/accounts/{org_account}/usage.csv", headers=api_headers(admin_key, owner)).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["charged_credits"] == "51" and rows[0]["source"] == "desktop"
    # Third person, by name: the CSV is read by the organization's admins (decision 0041).
    assert (
        rows[0]["reason"].startswith("Desktop recording by ")
        and "under their own authorization" in rows[0]["reason"]
    )
    assert "for you" not in text
    audit = client.get(f"/v1/orgs/{org_id}/audit", headers=api_headers(admin_key, owner)).json()
    assert [a["action"] for a in audit][:3] == ["authorization.created", "server.linked", "member.added"]


def test_api_bad_input_and_missing_scope_have_stable_codes_and_write_nothing(c, client):
    admin_key = api_key(c, "orgs:read", "orgs:write")
    read_only = api_key(c, "accounts:read")
    bot_key = api_key(c, "holds:write", "usage:write")
    owner, outsider, member = snowflake(), snowflake(), snowflake()
    org_id = client.post(
        "/v1/orgs", json={"name": "Acme"}, headers=api_headers(admin_key, owner, idem=True)
    ).json()["id"]
    audit_rows = c.db.read(lambda s: s.execute(select(func.count()).select_from(OrgAuditEntry)).scalar())

    r = client.post(
        f"/v1/orgs/{org_id}/members",
        json={"user_id": member},
        headers=api_headers(admin_key, outsider, idem=True),
    )
    assert r.status_code == 403 and r.json()["code"] == "permission_denied"
    r = client.post(
        "/v1/recordings",
        json={"context": "personal", "capture_source": "desktop", "requested_minutes": 5},
        headers=api_headers(read_only, member, idem=True),
    )
    assert r.status_code == 403 and r.json()["missing_permission"] == "scope:holds:write"
    r = client.post("/v1/orgs", json={"name": "X"}, headers=api_headers(bot_key, owner, idem=True))
    assert r.json()["code"] == "permission_denied"
    for body, code in [
        ({"context": "personal", "capture_source": "zoom", "requested_minutes": 5}, "unknown_capture_source"),
        ({"context": "personal", "capture_source": "desktop", "requested_minutes": 0}, "validation_error"),
        ({"context": "personal", "capture_source": "desktop", "requested_minutes": 61}, "recording_too_long"),
        (
            {
                "context": "personal",
                "capture_source": "desktop",
                "requested_minutes": 5,
                "funding_source": new_id("auth"),
            },
            "funding_source_not_held",
        ),
    ]:
        r = client.post("/v1/recordings", json=body, headers=api_headers(bot_key, member, idem=True))
        assert r.json()["code"] == code, r.text
    assert c.db.read(lambda s: c.accounts.find(s, "personal", member)) is None
    assert (
        c.db.read(lambda s: s.execute(select(func.count()).select_from(OrgAuditEntry)).scalar()) == audit_rows
    )


def test_recording_lifecycle_shares_and_funding_order_over_http(c, client):
    admin_key = api_key(c, "orgs:read", "orgs:write", "accounts:read")
    bot_key = api_key(c, "holds:write", "usage:write", "accounts:read")
    owner, user, guild = snowflake(), snowflake(), snowflake()
    org = client.post(
        "/v1/orgs", json={"name": "Globex"}, headers=api_headers(admin_key, owner, idem=True)
    ).json()
    client.post(
        f"/v1/orgs/{org['id']}/members",
        json={"user_id": user},
        headers=api_headers(admin_key, owner, idem=True),
    )
    auth = client.post(
        f"/v1/orgs/{org['id']}/authorizations",
        json={"subject_type": "member", "subject_id": user, "monthly_cap_credits": 100},
        headers=api_headers(admin_key, owner, idem=True),
    ).json()
    body = {"context": "personal", "capture_source": "web", "requested_minutes": 10}

    # Extend while it runs, then finish: charged once, by wall-clock minutes.
    rec = client.post(
        "/v1/recordings",
        json={**body, "meeting_id": "m1-" + user},
        headers=api_headers(bot_key, user, idem=True),
    ).json()
    extended = client.post(
        f"/v1/recordings/{rec['id']}/extend",
        json={"additional_minutes": 5},
        headers=api_headers(bot_key, user, idem=True),
    )
    assert extended.status_code == 200 and extended.json()["approved_minutes"] == 15
    done = client.post(
        f"/v1/recordings/{rec['id']}/finish",
        json={"seconds_by_source": {"web": 12 * 60}},
        headers=api_headers(bot_key, user, idem=True),
    ).json()
    assert done["status"] == "finished" and done["charged"] == 12_000

    # Cancelled and failed recordings charge nothing.
    for action in ("cancel", "fail"):
        other = client.post(
            "/v1/recordings",
            json={**body, "meeting_id": f"{action}-{user}"},
            headers=api_headers(bot_key, user, idem=True),
        ).json()
        ended = client.post(
            f"/v1/recordings/{other['id']}/{action}", headers=api_headers(bot_key, user, idem=True)
        )
        assert ended.status_code == 200 and ended.json()["charged"] == 0
        assert ended.json()["status"] == ("cancelled" if action == "cancel" else "failed")

    # Sharing with a server charges nothing and keeps the original payer.
    shared = client.post(
        f"/v1/meetings/m1-{user}/shares",
        json={"guild_id": guild},
        headers=api_headers(bot_key, user, idem=True),
    )
    assert shared.status_code == 201 and shared.json()["shared_with_guilds"] == [guild]
    who = client.get(f"/v1/meetings/m1-{user}/attribution", headers=api_headers(bot_key, user)).json()
    assert who["payer_account_id"] == rec["payer_account_id"] and who["authorization_id"] is None
    # The server it was shared to may read it; a stranger, or nobody, is told it does not exist.
    manager = snowflake()
    assert (
        client.get(
            f"/v1/meetings/m1-{user}/attribution", headers=api_headers(bot_key, manager, guilds=guild)
        ).json()["meeting_id"]
        == f"m1-{user}"
    )
    for headers in (api_headers(bot_key), api_headers(bot_key, snowflake(), idem=True)):
        hidden = client.get(f"/v1/meetings/m1-{user}/attribution", headers=headers)
        assert hidden.status_code == 404 and hidden.json()["code"] == "not_found"

    # The default order lists the user's authorizations; a source they do not hold is refused.
    order = client.put(
        "/v1/funding-sources/order",
        json={"order": [auth["id"]]},
        headers=api_headers(bot_key, user, idem=True),
    )
    assert order.status_code == 200
    bad = client.put(
        "/v1/funding-sources/order",
        json={"order": ["auth_nothing"]},
        headers=api_headers(bot_key, user, idem=True),
    )
    assert bad.status_code in (403, 404, 422) and bad.headers["content-type"] == "application/problem+json"
    sources = client.get("/v1/funding-sources", headers=api_headers(bot_key, user)).json()
    assert [s["id"] for s in sources] == ["personal", auth["id"]]
