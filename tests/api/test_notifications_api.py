"""HTTP edge of notification settings and the outbox: problem+json errors with stable codes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from chronote_billing.api.app import create_app
from chronote_billing.apikeys.service import ApiKeyService
from chronote_billing.container import Container
from chronote_billing.core.ids import new_id
from tests.factories import api_headers

PROBLEM = "application/problem+json"


@pytest.fixture
def client(db, clock):
    with TestClient(create_app(Container(db=db, clock=clock))) as c:
        yield c


@pytest.fixture
def keys(db, clock):
    service = ApiKeyService(clock)

    def make(*scopes: str) -> str:
        return db.write(lambda s: service.create(s, "notifications test", list(scopes))).secret

    return make


def owner_of(db, accounts, account_id: str) -> str:
    return db.read(lambda s: accounts.get(s, account_id).owner_ref)


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["code"] == code and body["status"] == status and body["detail"]
    return body


def test_alert_settings_round_trip_for_the_owner(client, keys, db, accounts, make_account):
    acct = make_account()
    user = owner_of(db, accounts, acct)
    secret = keys("accounts:read", "billing:write")
    url = f"/v1/accounts/{acct}/alert-settings"

    initial = client.get(url, headers=api_headers(secret, user))
    assert initial.status_code == 200
    assert initial.json()["low_balance_threshold_credits"] is None

    put = client.put(
        url,
        json={"low_balance_threshold_credits": 100},
        headers=api_headers(secret, user, **{"Idempotency-Key": "alerts-1"}),
    )
    assert put.status_code == 200, put.text
    assert put.json()["low_balance_threshold_credits"] == 100 and put.json()["armed"] is True
    retry = client.put(
        url,
        json={"low_balance_threshold_credits": 100},
        headers=api_headers(secret, user, **{"Idempotency-Key": "alerts-1"}),
    )
    assert retry.json() == put.json()
    assert client.get(url, headers=api_headers(secret, user)).json()["low_balance_threshold_credits"] == 100

    conflict = client.put(
        url,
        json={"low_balance_threshold_credits": 5},
        headers=api_headers(secret, user, **{"Idempotency-Key": "alerts-1"}),
    )
    assert_problem(conflict, 409, "idempotency_conflict")
    off = client.put(
        url,
        json={"low_balance_threshold_credits": None},
        headers=api_headers(secret, user, **{"Idempotency-Key": "alerts-off"}),
    )
    assert off.status_code == 200 and off.json()["low_balance_threshold_credits"] is None


def test_alert_settings_errors(client, keys, db, accounts, make_account):
    acct = make_account()
    user = owner_of(db, accounts, acct)
    secret = keys("accounts:read", "billing:write")
    url = f"/v1/accounts/{acct}/alert-settings"
    for bad in (0, -10, 10**13):
        body = assert_problem(
            client.put(
                url,
                json={"low_balance_threshold_credits": bad},
                headers=api_headers(secret, user, **{"Idempotency-Key": f"bad-{bad}"}),
            ),
            422,
            "invalid_threshold",
        )
        assert body["field"] == "low_balance_threshold_credits"
    assert_problem(
        client.put(
            url,
            json={"low_balance_threshold_credits": "lots"},
            headers=api_headers(secret, user, **{"Idempotency-Key": "s"}),
        ),
        422,
        "validation_error",
    )
    assert_problem(
        client.put(url, json={"low_balance_threshold_credits": 10}, headers=api_headers(secret, user)),
        422,
        "validation_error",
    )
    stranger = make_account()
    denied = assert_problem(
        client.get(url, headers=api_headers(secret, owner_of(db, accounts, stranger))),
        403,
        "permission_denied",
    )
    assert denied["missing_permission"] == "owner of this personal account"
    read_only = keys("accounts:read")
    assert_problem(
        client.put(
            url,
            json={"low_balance_threshold_credits": 10},
            headers=api_headers(read_only, user, **{"Idempotency-Key": "ro"}),
        ),
        403,
        "permission_denied",
    )
    assert_problem(
        client.get(f"/v1/accounts/{new_id('acct')}/alert-settings", headers=api_headers(keys("operator"))),
        404,
        "not_found",
    )
    assert client.get(url, headers=api_headers(secret, user)).json()["low_balance_threshold_credits"] is None


def test_auto_recharge_endpoints(client, keys, db, accounts, make_account):
    org = make_account("organization")
    operator = keys("operator")
    url = f"/v1/accounts/{org}/auto-recharge"
    body = {"enabled": True, "threshold_credits": 500, "pack_id": "credits_5000", "monthly_limit_count": 2}

    assert client.get(url, headers=api_headers(operator)).json()["enabled"] is False
    unknown = assert_problem(
        client.put(
            url,
            json={**body, "pack_id": "credits_3"},
            headers=api_headers(operator, **{"Idempotency-Key": "u"}),
        ),
        422,
        "unknown_pack",
    )
    assert unknown["field"] == "pack_id"
    assert_problem(
        client.put(
            url,
            json={**body, "threshold_credits": -1},
            headers=api_headers(operator, **{"Idempotency-Key": "t"}),
        ),
        422,
        "invalid_threshold",
    )
    ok = client.put(url, json=body, headers=api_headers(operator, **{"Idempotency-Key": "on"}))
    assert ok.status_code == 200, ok.text
    assert ok.json() | {"updated_at": None} == {
        "object": "auto_recharge_settings",
        "account_id": org,
        "enabled": True,
        "threshold_credits": 500,
        "pack_id": "credits_5000",
        "monthly_limit_count": 2,
        "monthly_limit_amount": None,
        "currency": "usd",
        "purchases_this_month": 0,
        "amount_this_month": 0,
        "stopped_reason": None,
        "stopped_at": None,
        "armed": True,
        "recharges_started": 0,
        "last_started_at": None,
        "updated_at": None,
    }
    assert client.get(url, headers=api_headers(operator)).json() == ok.json()

    # Every payer may turn it on (decision 0045), for its own account only.
    personal = make_account()
    user = owner_of(db, accounts, personal)
    writer = keys("billing:write")
    mine = client.put(
        f"/v1/accounts/{personal}/auto-recharge",
        json=body,
        headers=api_headers(writer, user, **{"Idempotency-Key": "p"}),
    )
    assert mine.status_code == 200 and mine.json()["enabled"] is True
    assert_problem(
        client.put(
            f"/v1/accounts/{org}/auto-recharge",
            json=body,
            headers=api_headers(writer, user, **{"Idempotency-Key": "q"}),
        ),
        403,
        "permission_denied",
    )


def test_outbox_listing_is_for_operators(client, keys, db, clock, make_account):
    acct = make_account()
    notifications = Container(db=db, clock=clock).notifications
    db.write(
        lambda s: notifications.emit(s, "payment.failed", acct, {"invoice": "in_1"}, dedupe_key=f"api:{acct}")
    )
    operator = keys("operator")
    listed = client.get(
        "/v1/notifications", params={"status": "pending", "account_id": acct}, headers=api_headers(operator)
    )
    assert listed.status_code == 200
    [entry] = listed.json()["data"]
    assert entry["id"].startswith("evt_") and entry["type"] == "payment.failed"
    assert entry["status"] == "pending" and entry["data"] == {"invoice": "in_1"}
    assert client.get(f"/v1/notifications/{entry['id']}", headers=api_headers(operator)).json() == entry
    delivered = client.get(
        "/v1/notifications", params={"status": "delivered", "account_id": acct}, headers=api_headers(operator)
    )
    assert delivered.json()["data"] == []

    assert_problem(
        client.get("/v1/notifications", headers=api_headers(keys("accounts:read", "billing:write"))),
        403,
        "permission_denied",
    )
    assert_problem(
        client.get("/v1/notifications", params={"status": "lost"}, headers=api_headers(operator)),
        422,
        "validation_error",
    )
    assert_problem(
        client.get(f"/v1/notifications/{new_id('evt')}", headers=api_headers(operator)), 404, "not_found"
    )
    assert_problem(
        client.get("/v1/notifications/evt_missing", headers=api_headers(operator)), 422, "validation_error"
    )
    assert_problem(client.get("/v1/notifications"), 401, "unauthenticated")
