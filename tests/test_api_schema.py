"""Generated requests against the ledger endpoints: never a 5xx, and every response (errors
included) matches the published OpenAPI document."""

from __future__ import annotations

import random
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

from chronote_billing.api.app import create_app
from chronote_billing.container import Container
from chronote_billing.core.db import Database

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
