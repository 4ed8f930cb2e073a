"""Generated requests against every operation: never a 5xx, and every response (errors
included, with their statuses) matches the published OpenAPI document."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from chronote_billing.api.app import create_app
from chronote_billing.config import Settings
from chronote_billing.container import Container
from chronote_billing.core.db import Database
from chronote_billing.notifications.models import OutboxEntry
from chronote_billing.stripe_sync.catalog_sync import sync_catalog
from chronote_billing.usage.schemas import UsageRequest
from chronote_stripe_local.server import TEST_SECRET_KEY
from tests.conftest import snowflake

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def ledger_api(db, clock, make_account):  # type: ignore[no-untyped-def]
    container = Container(db=db, clock=clock)
    secret = db.write(
        lambda s: (
            container.api_keys.create(s, "schema", ["accounts:read", "holds:write", "grants:write"]).secret
        )
    )
    account = make_account()
    db.write(
        lambda s: container.ledger.issue_grant(
            s,
            account_id=account,
            amount=50_000,
            idempotency_key="seed",
            source="promotional",
            cause_type="admin",
        )
    )
    hold = db.write(
        lambda s: container.ledger.place_hold(
            s,
            account_id=account,
            amount=1_000,
            expires_at=clock.now() + timedelta(hours=1),
            idempotency_key="seed-hold",
        )
    )
    APP.state.container = container
    return secret, account, hold.id


# The document is read once; each test points the app at the test database and clock.
APP = create_app(Container(db=Database("sqlite://")))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).include(tag="ledger")


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_ledger_endpoints_match_their_schema(case, ledger_api) -> None:  # type: ignore[no-untyped-def]
    secret, account, hold_id = ledger_api
    # Half the time aim at a real account or hold, so requests get past the lookups.
    if case.path_parameters and random.random() < 0.5:
        if "account_id" in case.path_parameters:
            case.path_parameters["account_id"] = account
        if "hold_id" in case.path_parameters:
            case.path_parameters["hold_id"] = hold_id
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": f"k{random.randrange(10**9)}"}
    case.call_and_validate(headers=headers, checks=CHECKS)


# Every other operation, against a small world: a funded person, an organization with a member,
# a linked server and an authorization, a hold, a recording and an outbox entry.
OTHERS_APP = create_app(Container(db=Database("sqlite://")))
others = schemathesis.openapi.from_asgi("/openapi.json", OTHERS_APP).exclude(tag="ledger")


@pytest.fixture
def whole_api(db, stripe_local):  # type: ignore[no-untyped-def]
    settings = replace(
        Settings(),
        stripe_api_base=stripe_local.url,
        stripe_secret_key=TEST_SECRET_KEY,
        stripe_webhook_secret=stripe_local.webhook_secret,
    )
    c = Container(db=db, settings=settings)
    sync_catalog(c.billing.client)
    user, member, guild = snowflake(), snowflake(), snowflake()

    def seed(s):  # type: ignore[no-untyped-def]
        account = c.accounts.get_or_create(s, "personal", user).id
        c.ledger.issue_grant(
            s,
            account_id=account,
            amount=100_000,
            idempotency_key="seed",
            source="promotional",
            cause_type="test",
        )
        org = c.orgs.create_org(s, actor_user_id=user, name="Acme", idempotency_key="o")
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
            monthly_cap_credits=None,
            capture_sources=None,
            valid_from=None,
            valid_until=None,
            idempotency_key="a",
        )
        hold = c.ledger.place_hold(
            s,
            account_id=account,
            amount=1_000,
            expires_at=c.clock.now() + timedelta(hours=1),
            idempotency_key="h",
        )
        c.notifications.emit(
            s, "wallet.balance_low", account, {"threshold_credits": 1}, dedupe_key="evt-" + user
        )
        return {
            "account_id": account,
            "org_id": org.id,
            "user_id": member,
            "guild_id": guild,
            "authorization_id": auth.id,
            "hold_id": hold.id,
        }

    ids = db.write(seed)
    meeting = "meeting-" + user
    rec = db.write(
        lambda s: c.usage.start_recording(
            s,
            UsageRequest(
                context="personal",
                capture_source="desktop",
                user_id=user,
                requested_minutes=5,
                meeting_id=meeting,
            ),
            "rec-" + user,
        )
    )
    ids |= {"recording_id": rec.id, "meeting_id": meeting}
    ids["notification_id"] = db.read(
        lambda s: s.execute(
            select(OutboxEntry.id).where(OutboxEntry.dedupe_key == "evt-" + user)
        ).scalar_one()
    )
    secret = db.write(lambda s: c.api_keys.create(s, "schema", ["operator"]).secret)
    OTHERS_APP.state.container = c
    return secret, user, ids


@others.parametrize()
@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_every_operation_answers_only_what_it_declares(case, whole_api) -> None:  # type: ignore[no-untyped-def]
    secret, user, ids = whole_api
    if case.path_parameters and random.random() < 0.6:
        for name in case.path_parameters:
            if ids.get(name):
                case.path_parameters[name] = ids[name]
    headers = {
        "Authorization": f"Bearer {secret}",
        "Chronote-Acting-User": user,
        "Idempotency-Key": f"k{random.randrange(10**9)}",
    }
    case.call_and_validate(headers=headers, checks=CHECKS)


def test_the_api_documentation_works_offline() -> None:
    """/docs loads Swagger UI from files the service serves itself, never from a CDN."""
    import re

    from fastapi.testclient import TestClient

    from chronote_billing.api.app import create_app

    with TestClient(create_app()) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        scripts = [a for a in assets if a.endswith((".js", ".css"))]
        assert scripts and all(a.startswith("/docs/static/") for a in scripts), assets
        for asset in scripts:
            response = client.get(asset)
            assert response.status_code == 200 and len(response.content) > 10_000, asset
        assert "https://" not in page.text.split("<body>")[0].replace("https://fastapi.tiangolo.com", "")
