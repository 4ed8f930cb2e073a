"""Every read and write is for someone (D11, decisions 0011 and 0029).

One world belongs to Ada: her personal account, a server she manages, an organization she owns
with an authorization, a raw hold, recordings and a meeting. Every `/v1` route that takes an id is
called with Ada's ids by a key acting for Ben (who holds every non-operator scope), and by the
same key acting for nobody: any answer but 401, 403 or 404 fails. A route that is neither in the
matrix nor listed below as taking no one's ids fails the test too, so a new route cannot ship
unchecked.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from chronote_billing.api.app import create_app
from chronote_billing.apikeys.service import SCOPES
from chronote_billing.container import Container
from tests.conftest import snowflake
from tests.factories import api_headers, api_key

# Scopes an operator's tools hold; a service client's key never does.
OPERATOR_SCOPES = {"operator", "grants:write"}

# Routes that take no payer's id, and why they are safe for anybody with the scope.
NO_ID_ROUTES = {
    ("GET", "/v1/catalog"): "the public price list",
    ("POST", "/v1/orgs"): "creates the acting user's own organization",
    ("GET", "/v1/orgs"): "lists the acting user's own memberships",
    ("POST", "/v1/usage/quote"): "the acting user's own work (server meetings: see the matrix's quote row)",
    (
        "POST",
        "/v1/recordings",
    ): "starts the acting user's own work; a server pays for any member's meeting (D8)",
    ("POST", "/v1/usage/events"): "the acting user's own work, as a recording start",
    (
        "GET",
        "/v1/entitlements",
    ): "plan limits for anyone; a server's credits only for its managers (tested below)",
    ("GET", "/v1/funding-sources"): "the acting user's own sources",
    ("PUT", "/v1/funding-sources/order"): "the acting user's own order",
    ("GET", "/v1/notifications"): "operators only",
}


@dataclass
class World:
    ada: str
    guild: str
    personal: str
    server: str
    org: str
    org_account: str
    auth: str
    server_auth: str
    hold: str
    recording: str
    finished: str
    server_recording: str
    meeting: str
    notification: str


@pytest.fixture
def c(db, clock) -> Container:
    return Container(db=db, clock=clock)


@pytest.fixture
def client(c: Container) -> Iterator[TestClient]:
    with TestClient(create_app(c)) as client:
        yield client


@pytest.fixture
def world(c: Container, client: TestClient) -> World:
    ada, guild, member = snowflake(), snowflake(), snowflake()
    every = api_key(c, *(set(SCOPES) - OPERATOR_SCOPES), label="matrix")
    as_ada = api_headers(every, ada, guild, idem=True)

    def post(path: str, body: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        response = client.post(
            path, json=body, headers={**as_ada, "Idempotency-Key": "w-" + secrets.token_hex(6)}, **kw
        )
        assert response.status_code in (200, 201), (path, response.text)
        result: dict[str, Any] = response.json()
        return result

    personal = post("/v1/accounts", {"kind": "personal", "owner_ref": ada})["id"]
    server = post("/v1/accounts", {"kind": "server", "owner_ref": guild})["id"]
    org = post("/v1/orgs", {"name": "Ada's"})
    for account in (personal, server, org["billing_account_id"]):
        c.db.write(
            lambda s, a=account: c.ledger.issue_grant(
                s,
                account_id=a,
                amount=500_000,
                source="promotional",
                idempotency_key="fund",
                cause_type="test",
            )
        )
    post(f"/v1/orgs/{org['id']}/members", {"user_id": member})
    post(f"/v1/orgs/{org['id']}/servers", {"guild_id": guild})
    auth = post(f"/v1/orgs/{org['id']}/authorizations", {"subject_type": "member", "subject_id": member})
    server_auth = post(
        f"/v1/orgs/{org['id']}/authorizations", {"subject_type": "server", "subject_id": guild}
    )
    hold = post(f"/v1/accounts/{personal}/holds", {"amount": 1_000, "ttl_seconds": 600})
    meeting = "meeting-" + secrets.token_hex(4)
    recording = post(
        "/v1/recordings", {"context": "personal", "capture_source": "desktop", "requested_minutes": 5}
    )
    finished = post(
        "/v1/recordings",
        {"context": "personal", "capture_source": "web", "requested_minutes": 5, "meeting_id": meeting},
    )
    post(f"/v1/recordings/{finished['id']}/finish", {"seconds_by_source": {"web": 120}})
    server_recording = post(
        "/v1/recordings",
        {"context": "server", "capture_source": "discord_voice", "guild_id": guild, "requested_minutes": 5},
    )
    c.db.write(
        lambda s: c.notifications.emit(
            s, "wallet.balance_low", personal, {"account_id": personal}, f"m-{personal}"
        )
    )
    from chronote_billing.notifications.models import OutboxEntry

    entry = c.db.read(lambda s: s.query(OutboxEntry).filter(OutboxEntry.account_id == personal).first())
    return World(
        ada=ada,
        guild=guild,
        personal=personal,
        server=server,
        org=org["id"],
        org_account=org["billing_account_id"],
        auth=auth["id"],
        server_auth=server_auth["id"],
        hold=hold["id"],
        recording=recording["id"],
        finished=finished["id"],
        server_recording=server_recording["id"],
        meeting=meeting,
        notification=entry.id,
    )


def matrix(w: World) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(method, path, body) for every route that takes someone's id, with Ada's ids."""
    rows: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/v1/accounts", {"kind": "personal", "owner_ref": w.ada}),
        ("POST", "/v1/accounts", {"kind": "server", "owner_ref": w.guild}),
        ("POST", "/v1/accounts", {"kind": "organization", "owner_ref": w.org}),
        (
            "POST",
            "/v1/usage/quote",
            {
                "context": "personal",
                "capture_source": "desktop",
                "requested_minutes": 5,
                "funding_source": w.auth,
            },
        ),
        ("POST", f"/v1/holds/{w.hold}/extend", {"amount": 1}),
        ("POST", f"/v1/holds/{w.hold}/capture", {"amount": 1}),
        ("POST", f"/v1/holds/{w.hold}/release", {}),
        ("GET", f"/v1/holds/{w.hold}", None),
        ("GET", f"/v1/notifications/{w.notification}", None),
        ("GET", f"/v1/orgs/{w.org}", None),
        ("GET", f"/v1/orgs/{w.org}/members", None),
        ("POST", f"/v1/orgs/{w.org}/members", {"user_id": snowflake()}),
        ("PATCH", f"/v1/orgs/{w.org}/members/{w.ada}", {"role": "member"}),
        ("DELETE", f"/v1/orgs/{w.org}/members/{w.ada}", None),
        ("GET", f"/v1/orgs/{w.org}/servers", None),
        ("POST", f"/v1/orgs/{w.org}/servers", {"guild_id": snowflake()}),
        ("DELETE", f"/v1/orgs/{w.org}/servers/{w.guild}", None),
        ("GET", f"/v1/orgs/{w.org}/authorizations", None),
        ("POST", f"/v1/orgs/{w.org}/authorizations", {"subject_type": "member", "subject_id": w.ada}),
        ("PATCH", f"/v1/authorizations/{w.auth}", {"monthly_cap_credits": 1}),
        ("POST", f"/v1/authorizations/{w.auth}/revoke", None),
        ("GET", f"/v1/orgs/{w.org}/audit", None),
        ("GET", f"/v1/recordings/{w.recording}", None),
        ("POST", f"/v1/recordings/{w.recording}/extend", {"additional_minutes": 100}),
        ("POST", f"/v1/recordings/{w.recording}/finish", {"seconds_by_source": {"desktop": 6000}}),
        ("POST", f"/v1/recordings/{w.recording}/cancel", None),
        ("POST", f"/v1/recordings/{w.recording}/fail", None),
        ("GET", f"/v1/recordings/{w.server_recording}", None),
        ("POST", f"/v1/recordings/{w.server_recording}/finish", {"seconds_by_source": {"voice": 60}}),
        ("POST", f"/v1/recordings/{w.finished}/finish", {"seconds_by_source": {"web": 3000}}),
        ("POST", f"/v1/meetings/{w.meeting}/shares", {"guild_id": snowflake()}),
        ("GET", f"/v1/meetings/{w.meeting}/attribution", None),
        ("GET", f"/v1/people/{w.ada}/export", None),
    ]
    for account in (w.personal, w.server, w.org_account):
        rows += [
            ("GET", f"/v1/accounts/{account}", None),
            ("GET", f"/v1/accounts/{account}/balance", None),
            ("GET", f"/v1/accounts/{account}/ledger", None),
            ("GET", f"/v1/accounts/{account}/grants", None),
            ("POST", f"/v1/accounts/{account}/grants", {"amount": 1_000}),
            ("POST", f"/v1/accounts/{account}/holds", {"amount": 1_000, "ttl_seconds": 60}),
            ("GET", f"/v1/accounts/{account}/subscription", None),
            ("POST", f"/v1/accounts/{account}/subscription", {"plan": "server_pro"}),
            ("DELETE", f"/v1/accounts/{account}/subscription", None),
            ("POST", f"/v1/accounts/{account}/checkout", {"pack": "credits_1000"}),
            ("POST", f"/v1/accounts/{account}/portal-session", {}),
            ("GET", f"/v1/accounts/{account}/alert-settings", None),
            ("PUT", f"/v1/accounts/{account}/alert-settings", {"low_balance_threshold_credits": 10}),
            ("GET", f"/v1/accounts/{account}/auto-recharge", None),
            (
                "PUT",
                f"/v1/accounts/{account}/auto-recharge",
                {
                    "enabled": True,
                    "threshold_credits": 10,
                    "pack_id": "credits_1000",
                    "monthly_limit_count": 1,
                },
            ),
            ("GET", f"/v1/accounts/{account}/usage", None),
            ("GET", f"/v1/accounts/{account}/usage.csv", None),
            ("GET", f"/v1/accounts/{account}/invoices", None),
            ("GET", f"/v1/accounts/{account}/runway", None),
        ]
    return rows


def _template(path: str, templates: list[tuple[str, re.Pattern[str]]]) -> str | None:
    for template, pattern in templates:
        if pattern.fullmatch(path):
            return template
    return None


def test_every_route_refuses_another_users_ids_and_requests_for_nobody(c, client, world):  # type: ignore[no-untyped-def]
    ben = snowflake()
    every = api_key(c, *(set(SCOPES) - OPERATOR_SCOPES), label="matrix")
    rows = matrix(world)

    # Which routes the matrix reaches: every /v1 route must be reached or be listed as id-free.
    routes = [
        (m, r.path)
        for r in create_app(c).routes
        if isinstance(r, APIRoute) and r.path.startswith("/v1")
        for m in r.methods
    ]
    templates = [(p, re.compile(re.sub(r"\{[^}]+\}", r"[^/]+", p))) for _, p in routes]
    reached = {(method, _template(path, templates)) for method, path, _ in rows}
    missing = [(m, p) for m, p in routes if (m, p) not in reached and (m, p) not in NO_ID_ROUTES]
    assert not missing, f"routes with no row in the authorization matrix: {missing}"

    before = _money(c)
    failures = []
    for method, path, body in rows:
        for label, headers in (
            ("another user", api_headers(every, ben, snowflake(), idem=True)),
            ("no acting user", api_headers(every, idem=True)),
        ):
            response = client.request(method, path, json=body, headers=headers)
            if response.status_code not in (401, 403, 404):
                failures.append(f"{label}: {method} {path} -> {response.status_code} {response.text[:160]}")
            elif response.headers["content-type"] != "application/problem+json":
                failures.append(f"{label}: {method} {path} answered without problem+json")
    assert not failures, "\n".join(failures)
    assert _money(c) == before, "a refused request wrote something"


def _money(c: Container) -> tuple[int, ...]:
    from sqlalchemy import func, select

    from chronote_billing.core.idempotency import IdempotencyRecord
    from chronote_billing.ledger.models import Grant, Hold, Transfer
    from chronote_billing.orgs.models import OrgAuditEntry
    from chronote_billing.usage.models import MeetingShare, UsageRecord

    return c.db.read(
        lambda s: tuple(
            s.execute(select(func.count()).select_from(t)).scalar() or 0
            for t in (Transfer, Grant, Hold, UsageRecord, MeetingShare, OrgAuditEntry, IdempotencyRecord)
        )
    )


def test_the_owner_and_the_servers_managers_may_act_on_a_recording(c, client, world):  # type: ignore[no-untyped-def]
    bot = api_key(c, "holds:write", "accounts:read", label="matrix")
    manager = snowflake()
    assert (
        client.get(
            f"/v1/recordings/{world.recording}", headers=api_headers(bot, world.ada, idem=True)
        ).status_code
        == 200
    )
    # A manager of the server (not the starter) may settle its meeting; not a personal one.
    assert (
        client.get(
            f"/v1/recordings/{world.server_recording}",
            headers=api_headers(bot, manager, world.guild, idem=True),
        ).status_code
        == 200
    )
    denied = client.get(
        f"/v1/recordings/{world.recording}", headers=api_headers(bot, manager, world.guild, idem=True)
    )
    assert denied.status_code == 403
    assert (
        denied.json()["missing_permission"]
        == "the user who started this recording, or Manage Server on its server"
    )
    nobody = client.get(f"/v1/recordings/{world.recording}", headers=api_headers(bot, idem=True))
    assert (
        nobody.status_code == 403
        and nobody.json()["missing_permission"] == "an acting user (Chronote-Acting-User)"
    )
    done = client.post(
        f"/v1/recordings/{world.server_recording}/finish",
        json={"seconds_by_source": {"voice": 90}},
        headers=api_headers(bot, manager, world.guild, idem=True),
    )
    assert done.status_code == 200 and done.json()["charged"] == 2_000


def test_server_credits_are_shown_to_its_managers_only(c, client, world):  # type: ignore[no-untyped-def]
    reader = api_key(c, "accounts:read", label="matrix")
    params = {"context": "server", "guild_id": world.guild}
    member = client.get(
        "/v1/entitlements", params=params, headers=api_headers(reader, snowflake(), idem=True)
    )
    assert member.status_code == 200 and member.json()["max_recording_minutes"] == 90
    assert member.json()["funding_sources"] == []
    manager = client.get(
        "/v1/entitlements", params=params, headers=api_headers(reader, snowflake(), world.guild, idem=True)
    )
    assert [s["id"] for s in manager.json()["funding_sources"]] == ["server", world.server_auth]


def test_auto_record_starts_and_settles_server_meetings_without_a_person(c, client, world):  # type: ignore[no-untyped-def]
    auto = api_key(c, "recordings:auto", label="matrix")
    body = {
        "context": "server",
        "capture_source": "discord_voice",
        "guild_id": world.guild,
        "requested_minutes": 10,
    }
    started = client.post("/v1/recordings", json=body, headers=api_headers(auto, idem=True))
    assert started.status_code == 201, started.text
    rec = started.json()
    assert rec["user_id"] is None and rec["payer_kind"] == "server"
    extended = client.post(
        f"/v1/recordings/{rec['id']}/extend",
        json={"additional_minutes": 5},
        headers=api_headers(auto, idem=True),
    )
    assert extended.status_code == 200 and extended.json()["approved_minutes"] == 15
    # It cannot start personal work, nor touch a meeting someone started.
    personal = client.post(
        "/v1/recordings",
        json={"context": "personal", "capture_source": "desktop", "requested_minutes": 5},
        headers=api_headers(auto, idem=True),
    )
    assert personal.status_code == 403
    assert (
        client.get(
            f"/v1/recordings/{world.server_recording}", headers=api_headers(auto, idem=True)
        ).status_code
        == 403
    )
    # The server's managers see and settle it like any of their meetings.
    bot = api_key(c, "holds:write", "accounts:read", label="matrix")
    done = client.post(
        f"/v1/recordings/{rec['id']}/finish",
        json={"seconds_by_source": {"voice": 600}},
        headers=api_headers(bot, snowflake(), world.guild, idem=True),
    )
    assert done.status_code == 200 and done.json()["charged"] == 10_000
