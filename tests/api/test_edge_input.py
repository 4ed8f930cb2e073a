"""Bad input at the edge (decision 0034): NUL, lone surrogates, control characters, over-long
strings and loose numbers sent to every operation of the OpenAPI document and to every portal
route. None may answer 5xx, answer a status or problem code its operation does not declare, or
write a row anywhere.

Each operation is first called once with a valid request (which may write, and must pass the
edge's validation), the row counts of every table are taken, then one field, parameter or
header at a time is replaced by a bad value, and the counts must not move.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import routing
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from chronote_billing.api.app import create_app
from chronote_billing.api.responses import CODES_KEY
from chronote_billing.config import Settings
from chronote_billing.container import Container
from chronote_billing.core.db import Database
from chronote_billing.core.ids import new_id
from chronote_billing.models import metadata
from chronote_billing.stripe_sync.catalog_sync import sync_catalog
from chronote_billing.usage.schemas import UsageRequest
from chronote_demo.seed import DEMO_SERVERS, DEMO_USERS
from chronote_stripe_local.server import TEST_SECRET_KEY
from tests.conftest import snowflake

# ---------------------------------------------------------------------------- bad values

# What goes into a JSON string (lone surrogates travel as the JSON escape "\ud800").
BAD_STRINGS = {
    "nul": "ab\x00cd",
    "surrogate": "\ud800",
    "surrogate_inside": "ab\udfffcd",
    "control": "ab\x01cd",
}
LOOSE_INTEGERS = {"true": True, "string": "100", "float": 1.0, "huge": 10**30}
# What goes into a URL path segment or a query value, percent-encoded as sent.
BAD_URL_TEXT = {"nul": "%00", "nul_inside": "ab%00cd", "surrogate_bytes": "%ED%A0%80", "control": "%01"}
BAD_QUERY_INTEGERS = {"true": "true", "exponent": "1e3", "huge": "9" * 30}
# What goes into a header (must be ASCII to be sent at all).
BAD_HEADERS = {"nul": "ab\x00cd", "control": "ab\x01cd", "long": "1" * 5000}


def overlong(schema: dict[str, Any]) -> str:
    return "7" * (int(schema.get("maxLength", 5000)) + 1)


def raw_json(document: Any) -> bytes:
    """JSON text; ASCII, so lone surrogates are written as escapes, as an attacker would."""
    return json.dumps(document, ensure_ascii=True).encode()


# ---------------------------------------------------------------------------- the world


@dataclass
class World:
    client: TestClient
    container: Container
    document: dict[str, Any]
    headers: dict[str, str]
    ids: dict[str, str]


def table_counts(db: Database) -> dict[str, int]:
    def count(session: Any) -> dict[str, int]:
        return {
            name: session.execute(select(func.count()).select_from(table)).scalar_one()
            for name, table in metadata.tables.items()
        }

    return db.read(count)


@pytest.fixture
def world(scratch_db: Database, stripe_local: Any) -> Iterator[World]:
    settings = replace(
        Settings(),
        stripe_api_base=stripe_local.url,
        stripe_secret_key=TEST_SECRET_KEY,
        stripe_webhook_secret=stripe_local.webhook_secret,
        demo_mode=True,
        discord_client_id="",
        session_secret="edge-" + secrets.token_hex(8),
    )
    c = Container(db=scratch_db, settings=settings)  # the system clock, as Stripe's side runs on it
    sync_catalog(c.billing.client)
    client = TestClient(create_app(c), follow_redirects=False)
    user, member, guild = DEMO_USERS["ada"][0], snowflake(), DEMO_SERVERS["study"][0]
    db = scratch_db

    def seed(s: Any) -> dict[str, str]:
        account = c.accounts.get_or_create(s, "personal", user, "Ada").id
        c.ledger.issue_grant(
            s,
            account_id=account,
            amount=500_000,
            idempotency_key="seed",
            source="promotional",
            cause_type="test",
        )
        org = c.orgs.create_org(s, actor_user_id=user, name="Acme", idempotency_key="seed-org")
        c.orgs.add_member(
            s, actor_user_id=user, org_id=org.id, user_id=member, role="member", idempotency_key="m"
        )
        c.orgs.link_server(
            s,
            actor_user_id=user,
            actor_manages_guild=True,
            org_id=org.id,
            guild_id=guild,
            idempotency_key="l",
        )
        auth = c.orgs.create_authorization(
            s,
            actor_user_id=user,
            org_id=org.id,
            subject_type="member",
            subject_id=member,
            monthly_cap_credits=100,
            capture_sources=None,
            valid_from=None,
            valid_until=None,
            idempotency_key="a",
        )
        hold = c.ledger.place_hold(
            s,
            account_id=account,
            amount=1_000,
            expires_at=c.clock.now() + timedelta(hours=2),
            idempotency_key="h",
        )
        c.notifications.emit(
            s, "wallet.balance_low", account, {"threshold_credits": 1}, dedupe_key="seed-evt"
        )
        return {
            "account_id": account,
            "org_id": org.id,
            "org_account_id": org.billing_account_id,
            "user_id": member,
            "member_id": member,
            "guild_id": guild,
            "authorization_id": auth.id,
            "hold_id": hold.id,
            "session_id": "cs_test_" + secrets.token_hex(12),  # a Checkout Session nobody made
            "kind": "json",  # the format of a person's data export
        }

    ids = db.write(seed)
    meeting = "meeting-" + secrets.token_hex(4)
    recording = db.write(
        lambda s: c.usage.start_recording(
            s,
            UsageRequest(
                context="personal",
                capture_source="desktop",
                user_id=user,
                requested_minutes=5,
                meeting_id=meeting,
            ),
            "seed-rec",
        )
    )
    ids |= {"recording_id": recording.id, "meeting_id": meeting}
    ids["notification_id"] = db.read(
        lambda s: s.execute(select(metadata.tables["notification_outbox"].c.id).limit(1)).scalar_one()
    )
    secret = db.write(lambda s: c.api_keys.create(s, "edge", ["operator"]).secret)
    headers = {
        "Authorization": f"Bearer {secret}",
        "Chronote-Acting-User": user,
        "Chronote-Manage-Guilds": guild,
    }
    yield World(client, c, client.app.openapi(), headers, ids)  # type: ignore[attr-defined]
    client.close()


# ---------------------------------------------------------------------------- valid requests

NOW_PLUS_HOUR = "2999-01-01T00:00:00Z"


def base_bodies(ids: dict[str, str]) -> dict[str, Any]:
    """A valid body for every operation that takes one ("METHOD path")."""
    start = {
        "context": "personal",
        "capture_source": "desktop",
        "requested_minutes": 3,
        "meeting_id": "m-" + secrets.token_hex(4),
        "funding_source": "personal",
        "allow_partial": False,
    }
    return {
        "POST /v1/accounts": {"kind": "personal", "owner_ref": snowflake(), "display_name": "Someone"},
        "POST /v1/accounts/{account_id}/grants": {
            "amount": 1_000,
            "source": "promotional",
            "expires_at": NOW_PLUS_HOUR,
            "priority": 10,
            "description": "welcome",
        },
        "POST /v1/accounts/{account_id}/holds": {
            "amount": 1_000,
            "ttl_seconds": 600,
            "allow_partial": False,
            "reason": "a hold",
            "metadata": {"meeting": "m1", "nested": {"list": ["a", 1]}},
        },
        "POST /v1/holds/{hold_id}/extend": {"amount": 10, "ttl_seconds": 600, "allow_partial": False},
        "POST /v1/holds/{hold_id}/capture": {"amount": 10, "reason": "used"},
        "POST /v1/holds/{hold_id}/release": {"reason": "not used"},
        "POST /v1/usage/quote": start,
        "POST /v1/recordings": start,
        "POST /v1/recordings/{recording_id}/extend": {"additional_minutes": 1, "allow_partial": False},
        "POST /v1/recordings/{recording_id}/finish": {"seconds_by_source": {"desktop": 60}},
        "POST /v1/usage/events": {
            "event_id": "e-" + secrets.token_hex(4),
            "event_type": "ask_question",
            "context": "personal",
            "meeting_id": "m1",
            "funding_source": "personal",
        },
        "POST /v1/meetings/{meeting_id}/shares": {"guild_id": ids["guild_id"]},
        "PUT /v1/funding-sources/order": {"order": [ids["authorization_id"]]},
        "POST /v1/orgs": {"name": "Globex"},
        "POST /v1/orgs/{org_id}/members": {"user_id": snowflake(), "role": "member"},
        "PATCH /v1/orgs/{org_id}/members/{user_id}": {"role": "billing_admin"},
        "POST /v1/orgs/{org_id}/servers": {"guild_id": ids["guild_id"]},
        "POST /v1/orgs/{org_id}/authorizations": {
            "subject_type": "server",
            "subject_id": ids["guild_id"],
            "monthly_cap_credits": 50,
            "capture_sources": ["discord_voice"],
            "valid_from": "2026-01-01T00:00:00Z",
            "valid_until": NOW_PLUS_HOUR,
        },
        "PATCH /v1/authorizations/{authorization_id}": {
            "monthly_cap_credits": 60,
            "capture_sources": ["desktop"],
            "valid_until": NOW_PLUS_HOUR,
        },
        "POST /v1/accounts/{account_id}/subscription": {"plan": "personal_pro", "interval": "month"},
        "POST /v1/accounts/{account_id}/checkout": {
            "pack": "credits_1000",
            "success_url": "https://chronote.gg/done",
            "cancel_url": "https://chronote.gg/back",
        },
        "POST /v1/accounts/{account_id}/portal-session": {"return_url": "https://chronote.gg/back"},
        "PUT /v1/accounts/{account_id}/alert-settings": {"low_balance_threshold_credits": 10},
        "PUT /v1/accounts/{account_id}/auto-recharge": {
            "enabled": False,
            "threshold_credits": 100,
            "pack_id": "credits_1000",
        },
    }


BASE_QUERIES: dict[str, dict[str, str]] = {
    "GET /v1/accounts/{account_id}/ledger": {"limit": "10", "starting_after": "0"},
    "GET /v1/entitlements": {"context": "personal", "guild_id": DEMO_SERVERS["study"][0]},
    "GET /v1/accounts/{account_id}/usage": {
        "group_by": "day",
        "since": "2026-01-01T00:00:00Z",
        "until": NOW_PLUS_HOUR,
    },
    "GET /v1/accounts/{account_id}/usage.csv": {"group_by": "source", "since": "2026-01-01T00:00:00Z"},
    "GET /v1/orgs/{org_id}/audit": {"limit": "10"},
    "GET /v1/notifications": {"status": "pending", "kind": "event", "limit": "10"},
}


# ---------------------------------------------------------------------------- checking


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while True:
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        elif "anyOf" in schema:
            schema = next(s for s in schema["anyOf"] if s.get("type") != "null")
        else:
            return schema


class Checker:
    def __init__(self, world: World) -> None:
        self.world = world
        self.failures: list[str] = []
        self.sent = 0

    def declared(self, operation: dict[str, Any], response: httpx.Response, what: str) -> None:
        status = str(response.status_code)
        declared = operation["responses"].get(status)
        if declared is None:
            self.failures.append(f"{what}: {status} is not declared ({response.text[:200]})")
            return
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            code = response.json().get("code")
            if code not in declared.get(CODES_KEY, []):
                self.failures.append(f"{what}: {status} {code} is not among {declared.get(CODES_KEY)}")

    def rejected(self, operation: dict[str, Any], response: httpx.Response, what: str) -> None:
        self.sent += 1
        if not 400 <= response.status_code < 500:
            self.failures.append(f"{what}: answered {response.status_code}, not 4xx ({response.text[:200]})")
            return
        if not response.headers.get("content-type", "").startswith("application/problem+json"):
            self.failures.append(f"{what}: {response.status_code} is not problem+json")
        self.declared(operation, response, what)


def call(
    world: World,
    method: str,
    path: str,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    query: str | None = None,
) -> httpx.Response:
    url = path + (("?" + query) if query is not None else "")
    all_headers = {**world.headers, "Idempotency-Key": "k-" + secrets.token_hex(8), **(headers or {})}
    if body is not None:
        all_headers["Content-Type"] = "application/json"
    return world.client.request(method, url, params=params, headers=all_headers, content=body)


def fill(path: str, ids: dict[str, str], overrides: dict[str, str] | None = None) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if overrides and name in overrides:
            return overrides[name]
        return quote(ids[name], safe="")

    return re.sub(r"{([a-z_]+)}", value, path)


def test_every_operation_refuses_bad_input_without_5xx_undeclared_status_or_write(world: World) -> None:
    document, ids = world.document, world.ids
    bodies = base_bodies(ids)
    check = Checker(world)
    operations = [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "responses" in operation
    ]
    assert len(operations) >= 55
    for method, path, operation in operations:
        name = f"{method} {path}"
        body_schema = (
            operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        )
        base_body = bodies.get(name)
        assert (body_schema is None) == (base_body is None), f"{name}: write a valid body for it here"
        base_query = BASE_QUERIES.get(name, {})
        body_bytes = raw_json(base_body) if base_body is not None else None

        # The valid request passes the edge (it may still be refused by the service).
        base = call(world, method, fill(path, ids), params=base_query, body=body_bytes)
        assert base.status_code < 500, (name, base.status_code, base.text[:300])
        if base.headers.get("content-type", "").startswith("application/problem+json"):
            assert base.json()["code"] != "validation_error" or path == "/webhooks/stripe", (name, base.text)
        check.declared(operation, base, f"{name} (valid request)")
        before = table_counts(world.container.db)

        for param in operation.get("parameters", []):
            where, pname, schema = param["in"], param["name"], resolve(document, param.get("schema", {}))
            if where == "path":
                for label, bad in {**BAD_URL_TEXT, "long": "x" * 300}.items():
                    url = fill(path, ids, {pname: bad})
                    check.rejected(
                        operation,
                        call(world, method, url, base_query, body=body_bytes),
                        f"{name} path {pname}={label}",
                    )
                url = fill(path, ids, {pname: quote(ids[pname], safe="") + "%00"})
                check.rejected(
                    operation,
                    call(world, method, url, base_query, body=body_bytes),
                    f"{name} path {pname}+nul",
                )
            elif where == "query":
                bad_values = {**BAD_URL_TEXT, "long": "x" * 3000}
                if schema.get("type") == "integer":
                    bad_values |= BAD_QUERY_INTEGERS
                for label, bad in bad_values.items():
                    query = "&".join(
                        [f"{k}={quote(v)}" for k, v in base_query.items() if k != pname] + [f"{pname}={bad}"]
                    )
                    response = call(world, method, fill(path, ids), query=query, body=body_bytes)
                    check.rejected(operation, response, f"{name} query {pname}={label}")
            elif where == "header":
                for label, bad in BAD_HEADERS.items():
                    response = call(
                        world, method, fill(path, ids), base_query, headers={pname: bad}, body=body_bytes
                    )
                    check.rejected(operation, response, f"{name} header {pname}={label}")

        if base_body is not None:
            assert body_schema is not None
            for field, bad in body_mutations(document, resolve(document, body_schema), base_body):
                response = call(world, method, fill(path, ids), base_query, body=raw_json(bad))
                check.rejected(operation, response, f"{name} body {field}")
            response = call(world, method, fill(path, ids), base_query, body=b'{"a": "\xff\xfe"}')
            check.rejected(operation, response, f"{name} body not UTF-8")

        after = table_counts(world.container.db)
        changed = {t: (before[t], after[t]) for t in before if before[t] != after[t]}
        if changed:
            check.failures.append(f"{name}: bad input wrote rows: {changed}")
    assert not check.failures, f"{len(check.failures)} of {check.sent} bad requests:\n" + "\n".join(
        check.failures
    )
    assert check.sent > 1000


def body_mutations(
    document: dict[str, Any], schema: dict[str, Any], base: dict[str, Any]
) -> Iterator[tuple[str, Any]]:
    """(label, body) pairs: the valid body with one value made bad at a time."""
    properties = schema.get("properties", {})
    for field, field_schema in properties.items():
        field_schema = resolve(document, field_schema)
        kind = field_schema.get("type")
        for label, bad in bad_values_for(kind, field_schema):
            yield f"{field}={label}", {**base, field: bad}
        value = base.get(field)
        for path, bad in nested_mutations(value):
            yield f"{field}{path}", {**base, field: bad}
    yield "unknown member", {**base, "unexpected": 1}


def bad_values_for(kind: str | None, schema: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    if kind == "string":
        yield from BAD_STRINGS.items()
        if schema.get("format") != "date-time":
            yield "long", overlong(schema)
        else:
            yield "far_future", "9999-12-31T23:59:59Z"
            yield "year_one", "0001-01-01T00:00:00Z"
            yield "number", 1_700_000_000
        yield "number_for_text", 12345
    elif kind == "integer":
        yield from LOOSE_INTEGERS.items()
    elif kind == "boolean":
        yield "string", "true"
        yield "number", 1
    elif kind == "array":
        yield "items", ["\x00", "\ud800"]
        yield "many", ["x"] * 2000
    elif kind == "object":
        yield "nul_key", {"a\x00": 1}
        yield "surrogate_key", {"\ud800": 1}
        yield "control_value", {"k": "a\x01"}


def nested_mutations(value: Any) -> Iterator[tuple[str, Any]]:
    """Bad values inside lists and objects the valid body already has."""
    if isinstance(value, dict):
        for key, item in value.items():
            for label, bad in BAD_STRINGS.items():
                yield f".{key}={label}", {**value, key: bad}
            yield f".{key}=deep", {**value, key: [[[[["deep"]]]]]}
            if isinstance(item, int):
                yield f".{key}=loose", {**value, key: "60"}
                yield f".{key}=float", {**value, key: 60.0}
        yield ".big", {**value, "big": "x" * 10_000}
    elif isinstance(value, list) and value:
        for label, bad in BAD_STRINGS.items():
            yield f"[0]={label}", [bad, *value[1:]]


# ---------------------------------------------------------------------------- the portal

PORTAL_FORMS: dict[str, dict[str, str]] = {
    "/portal/login/demo": {"who": "ada"},
    "/portal/personal/billing/funding-order": {"order": "{authorization_id}"},
    "/portal/orgs/new": {"name": "Initech"},
    "/portal/org/{org_id}/billing/members/add": {"user_id": "{new_user}", "role": "member"},
    "/portal/org/{org_id}/billing/members/{member_id}/role": {"role": "member"},
    "/portal/org/{org_id}/billing/servers/link": {"guild_id": "{guild_id}"},
    "/portal/org/{org_id}/billing/authorizations/create": {
        "subject": "member:{ada}",
        "monthly_cap_credits": "10",
        "capture_sources": "desktop",
        "valid_from": "2026-01-01",
        "valid_until": "2999-01-01",
    },
    "/portal/org/{org_id}/billing/authorizations/{authorization_id}/cap": {"monthly_cap_credits": "20"},
    "/portal/org/{org_id}/billing/alerts": {"threshold_credits": "5"},
    "/portal/org/{org_id}/billing/auto-recharge": {"threshold_credits": "5", "pack": "credits_1000"},
    "/portal/personal/billing/plan": {"plan": "personal_pro", "interval": "month"},
    "/portal/personal/billing/packs": {"pack": "credits_1000"},
    "/portal/server/{guild_id}/billing/plan": {"plan": "server_basic", "interval": "month"},
    "/portal/server/{guild_id}/billing/packs": {"pack": "credits_1000"},
    "/portal/org/{org_id}/billing/packs": {"pack": "credits_1000"},
}
PORTAL_QUERIES = {
    "/portal/login": ["next", "error"],
    "/portal/login/discord": ["next"],
    "/portal/auth/callback": ["code", "state"],
    "/portal/org/{org_id}/billing/usage": ["group_by", "since", "until"],
    "/portal/org/{org_id}/billing/usage.csv": ["group_by", "since", "until"],
}
# Form values that are bad for any field, percent-encoded as a browser would send them (bytes
# that are not UTF-8 arrive as U+FFFD, a character a name may hold: not bad for every field).
BAD_FORM_VALUES = {"nul": "%00", "nul_inside": "ab%00cd", "control": "%01", "long": "x" * 5000}
BAD_FORM_NUMBERS = {"exponent": "1e3", "fraction": "1.5", "text": "lots"}
NUMBER_FIELDS = ("monthly_cap_credits", "threshold_credits")


def form_body(fields: dict[str, str]) -> bytes:
    return "&".join(f"{quote(k)}={v}" for k, v in fields.items()).encode()


def test_every_portal_route_refuses_bad_input_without_5xx_or_write(world: World) -> None:
    client, c = world.client, world.container
    login = client.get("/portal/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
    assert csrf, login.text[:500]
    signed_in = client.post("/portal/login/demo", data={"csrf_token": csrf.group(1), "who": "ada"})
    assert signed_in.status_code == 303
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/portal/personal/billing").text)
    assert token
    ids = {**world.ids, "new_user": snowflake(), "ada": DEMO_USERS["ada"][0]}
    routes = [
        r
        for r in routing.iter_route_contexts(client.app.routes)  # type: ignore[attr-defined]
        if r.methods and r.path.startswith("/portal")
    ]
    assert len(routes) >= 35
    failures: list[str] = []
    sent = 0

    def expect_refused(response: httpx.Response, what: str) -> None:
        """A readable refusal: an error page or fragment (HTMX swaps a form's own list with its
        error at 200); never a 5xx, and never the success of a form (204 or 303)."""
        nonlocal sent
        sent += 1
        if response.status_code >= 500 or response.status_code in (204, 303):
            failures.append(f"{what}: answered {response.status_code} ({response.text[:200]})")
        elif "text/html" not in response.headers.get("content-type", ""):
            failures.append(f"{what}: {response.status_code} is not a page")

    def fields_for(path: str) -> dict[str, str]:
        base = {"csrf_token": token.group(1), "nonce": secrets.token_urlsafe(12)}
        return base | {k: fill_value(v, ids) for k, v in PORTAL_FORMS.get(path, {}).items()}

    for route in routes:
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            name = f"{method} {route.path}"
            params = re.findall(r"{([a-z_]+)(?::path)?}", route.path)
            # Signing in again or out would replace the session and its form token.
            if route.path not in ("/portal/logout", "/portal/login/demo"):
                valid = portal_call(client, method, fill_portal(route.path, ids), fields_for(route.path))
                assert valid.status_code < 500, (name, valid.status_code, valid.text[:300])
            before = table_counts(c.db)
            for param in params:
                for label, bad in {**BAD_URL_TEXT, "long": "x" * 300}.items():
                    url = fill_portal(route.path, ids, {param: bad})
                    response = portal_call(client, method, url, fields_for(route.path))
                    if param == "path":
                        if response.status_code >= 500:
                            failures.append(f"{name} {param}={label}: {response.status_code}")
                        continue
                    expect_refused(response, f"{name} path {param}={label}")
            for query_name in PORTAL_QUERIES.get(route.path, []):
                for label, bad in BAD_FORM_VALUES.items():
                    response = client.get(fill_portal(route.path, ids) + f"?{query_name}={bad}")
                    sent += 1
                    if response.status_code >= 500:
                        failures.append(f"{name} query {query_name}={label}: {response.status_code}")
            if method == "POST":
                form = fields_for(route.path)
                for field in [f for f in form if f != "nonce"]:
                    bad_values = BAD_FORM_VALUES | (BAD_FORM_NUMBERS if field in NUMBER_FIELDS else {})
                    for label, bad in bad_values.items():
                        mutated = {
                            k: (bad if k == field else quote(v)) for k, v in fields_for(route.path).items()
                        }
                        response = client.post(
                            fill_portal(route.path, ids),
                            content=form_body(mutated),
                            headers={
                                "Content-Type": "application/x-www-form-urlencoded",
                                "HX-Request": "true",
                            },
                        )
                        expect_refused(response, f"{name} form {field}={label}")
            after = table_counts(c.db)
            changed = {t: (before[t], after[t]) for t in before if before[t] != after[t]}
            if changed:
                failures.append(f"{name}: bad input wrote rows: {changed}")
    assert not failures, f"{len(failures)} of {sent}:\n" + "\n".join(failures)
    assert sent > 300


def fill_value(template: str, ids: dict[str, str]) -> str:
    return re.sub(r"{([a-z_]+)}", lambda m: ids[m.group(1)], template)


def fill_portal(path: str, ids: dict[str, str], overrides: dict[str, str] | None = None) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if overrides and name in overrides:
            return overrides[name]
        return "no-such-page" if name == "path" else quote(ids[name], safe="")

    return re.sub(r"{([a-z_]+)(?::path)?}", value, path)


def portal_call(client: TestClient, method: str, url: str, form: dict[str, str]) -> httpx.Response:
    if method == "POST":
        return client.post(url, data=form, headers={"HX-Request": "true"})
    return client.request(method, url)


def test_a_new_id_is_well_formed_for_its_type() -> None:
    # The fixtures above rely on ids made by core/ids.py passing the edge's id types.
    from pydantic import TypeAdapter

    from chronote_billing.core.validation import AccountId, HoldId, NotificationId, OrgId, RecordingId

    for kind, prefix in (
        (AccountId, "acct"),
        (HoldId, "hold"),
        (OrgId, "org"),
        (RecordingId, "use"),
        (NotificationId, "job"),
    ):
        made = new_id(prefix)
        assert TypeAdapter(kind).validate_python(made) == made
