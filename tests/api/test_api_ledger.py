"""The ledger's HTTP edge: balances, statements, grants and holds, and every error as
problem+json with a stable code."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.api.app import create_app
from chronote_billing.container import Container
from chronote_billing.core.clock import ManualClock
from chronote_billing.core.db import Database
from chronote_billing.core.ids import new_id
from chronote_billing.ledger.models import Hold


@dataclass
class Api:
    client: TestClient
    container: Container
    clock: ManualClock
    reader: str  # accounts:read, holds:write
    operator: str  # accounts:read, grants:write

    def key(self, *scopes: str) -> str:
        c = self.container
        return c.db.write(lambda s: c.api_keys.create(s, "test", list(scopes)).secret)

    def call(
        self, method: str, path: str, secret: str | None = None, idem: str | None = None, **kw: Any
    ) -> Any:
        headers = kw.pop("headers", {})
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
            owner = self._owner(path)
            if owner and secret == self.reader:
                # The reader acts for whoever owns the account or hold in the path (decision 0029).
                headers.setdefault("Chronote-Acting-User", owner)
        if idem:
            headers["Idempotency-Key"] = idem
        return self.client.request(method, path, headers=headers, **kw)

    def _owner(self, path: str) -> str | None:
        """The Discord user who owns the personal account or hold a path names, if any."""
        c = self.container
        match = re.search(r"/(acct_[0-9a-z]+|hold_[0-9a-z]+)", path)
        if match is None:
            return None
        found = match.group(1)

        def read(s: Any) -> str | None:
            account_id = found
            if found.startswith("hold_"):
                hold = s.get(Hold, found)
                if hold is None:
                    return None
                account_id = hold.billing_account_id
            account = s.get(BillingAccount, account_id)
            return account.owner_ref if account is not None else None

        return c.db.read(read)

    def grant(self, account: str, amount: int, idem: str, **body: Any) -> Any:
        return self.call(
            "POST", f"/v1/accounts/{account}/grants", self.operator, idem, json={"amount": amount, **body}
        )

    def hold(self, account: str, amount: int, idem: str, **body: Any) -> Any:
        body.setdefault("ttl_seconds", 600)
        return self.call(
            "POST", f"/v1/accounts/{account}/holds", self.reader, idem, json={"amount": amount, **body}
        )


@pytest.fixture
def api(db: Database, clock: ManualClock) -> Iterator[Api]:
    container = Container(db=db, clock=clock)
    with TestClient(create_app(container)) as client:
        a = Api(client, container, clock, "", "")
        a.reader = a.key("accounts:read", "holds:write")
        a.operator = a.key("accounts:read", "grants:write")
        yield a


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"].endswith("/" + code) and body["title"] and body["detail"]
    return body


def test_balance_grants_and_holds_flow(api: Api, make_account) -> None:  # type: ignore[no-untyped-def]
    acct = make_account()
    created = api.grant(acct, 10_000, "g1", description="welcome")
    assert created.status_code == 201 and created.json()["remaining"] == 10_000
    assert api.grant(acct, 10_000, "g1", description="welcome").json() == created.json()

    hold = api.hold(acct, 4_000, "h1", reason="meeting")
    assert hold.status_code == 201, hold.text
    h = hold.json()
    assert (h["status"], h["amount_held"], h["partial"]) == ("open", 4_000, False)

    extended = api.call("POST", f"/v1/holds/{h['id']}/extend", api.reader, "e1", json={"amount": 1_000})
    assert extended.status_code == 200 and extended.json()["amount_held"] == 5_000

    balance = api.call("GET", f"/v1/accounts/{acct}/balance", api.reader).json()
    # This month's free allowance is counted though not issued yet (decision 0039).
    assert balance["allowance_due"] == 120_000
    assert (balance["available"] - 120_000, balance["held"], balance["posted"]) == (5_000, 5_000, 10_000)
    assert [g["id"] for g in balance["grants"]] == [created.json()["id"]]

    captured = api.call("POST", f"/v1/holds/{h['id']}/capture", api.reader, "c1", json={"amount": 3_500})
    assert captured.status_code == 200 and captured.json()["amount_captured"] == 3_500
    assert api.call("GET", f"/v1/holds/{h['id']}", api.reader).json()["status"] == "captured"

    other = api.hold(acct, 1_000, "h2").json()
    released = api.call("POST", f"/v1/holds/{other['id']}/release", api.reader, "r1")
    assert released.status_code == 200 and released.json()["status"] == "released"

    balance = api.call("GET", f"/v1/accounts/{acct}/balance", api.reader).json()
    assert (balance["available"] - balance["allowance_due"], balance["held"], balance["posted"]) == (
        6_500,
        0,
        6_500,
    )
    grants = api.call("GET", f"/v1/accounts/{acct}/grants", api.reader).json()
    assert [g["remaining"] for g in grants] == [6_500]


def test_statement_pages_with_a_cursor(api: Api, make_account) -> None:  # type: ignore[no-untyped-def]
    acct = make_account()
    api.grant(acct, 10_000, "g")
    for n in range(6):
        h = api.hold(acct, 100 + n, f"h{n}").json()
        api.call("POST", f"/v1/holds/{h['id']}/capture", api.reader, f"c{n}", json={"amount": 50})
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor is not None:
            params["starting_after"] = cursor
        page = api.call("GET", f"/v1/accounts/{acct}/ledger", api.reader, params=params).json()
        pages += 1
        seen += [line["id"] for line in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
        assert cursor == page["data"][-1]["id"]
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen) == 13  # 1 + 6 * 2
    assert pages == 4
    last = api.call("GET", f"/v1/accounts/{acct}/ledger", api.reader, params={"limit": 1}).json()
    assert last["data"][0]["kind"] == "capture" and last["data"][0]["amount"] == -50
    problem(
        api.call("GET", f"/v1/accounts/{acct}/ledger", api.reader, params={"limit": 0}),
        422,
        "validation_error",
    )


def test_grants_need_the_operator_scope(api: Api, make_account) -> None:  # type: ignore[no-untyped-def]
    acct = make_account()
    denied = api.call("POST", f"/v1/accounts/{acct}/grants", api.reader, "g", json={"amount": 1_000})
    body = problem(denied, 403, "permission_denied")
    assert body["missing_permission"] == "scope:grants:write"
    assert api.call("GET", f"/v1/accounts/{acct}/balance", api.reader).json()["posted"] == 0


def test_decline_and_state_errors(api: Api, make_account) -> None:  # type: ignore[no-untyped-def]
    acct = make_account()
    api.grant(acct, 2_000, "g")
    body = problem(api.hold(acct, 5_000, "too-much"), 402, "insufficient_credits")
    assert body["available"] == 2_000 and body["requested"] == 5_000

    h = api.hold(acct, 1_000, "h").json()
    body = problem(
        api.call("POST", f"/v1/holds/{h['id']}/capture", api.reader, "c-over", json={"amount": 1_001}),
        422,
        "capture_exceeds_hold",
    )
    assert body["amount_held"] == 1_000
    api.call("POST", f"/v1/holds/{h['id']}/capture", api.reader, "c", json={"amount": 10})
    problem(
        api.call("POST", f"/v1/holds/{h['id']}/capture", api.reader, "c2", json={"amount": 10}),
        409,
        "hold_already_settled",
    )
    problem(api.call("POST", f"/v1/holds/{h['id']}/release", api.reader, "r"), 409, "hold_already_settled")
    problem(
        api.call("POST", f"/v1/holds/{h['id']}/capture", api.reader, "c", json={"amount": 11}),
        409,
        "idempotency_conflict",
    )

    short = api.hold(acct, 500, "short", ttl_seconds=60).json()
    api.clock.advance(timedelta(minutes=2))
    problem(
        api.call("POST", f"/v1/holds/{short['id']}/capture", api.reader, "cs", json={"amount": 1}),
        409,
        "hold_expired",
    )
    problem(
        api.call("POST", f"/v1/holds/{short['id']}/extend", api.reader, "es", json={"ttl_seconds": 60}),
        409,
        "hold_expired",
    )


def test_not_found_and_unauthenticated(api: Api, make_account) -> None:  # type: ignore[no-untyped-def]
    missing_account, missing_hold = new_id("acct"), new_id("hold")
    problem(api.call("GET", f"/v1/accounts/{missing_account}/balance", api.reader), 404, "not_found")
    problem(api.call("GET", f"/v1/holds/{missing_hold}", api.reader), 404, "not_found")
    problem(
        api.call("POST", f"/v1/holds/{missing_hold}/capture", api.reader, "x", json={"amount": 1}),
        404,
        "not_found",
    )
    # Something that cannot be an id of ours is bad input, named as such (decision 0034).
    body = problem(api.call("GET", "/v1/holds/hold_missing", api.reader), 422, "validation_error")
    assert body["field"] == "hold_id"
    problem(api.call("GET", "/v1/nowhere", api.reader), 404, "not_found")
    acct = make_account()
    problem(api.call("GET", f"/v1/accounts/{acct}/balance"), 401, "unauthenticated")
    problem(api.call("GET", f"/v1/accounts/{acct}/balance", "cbk_not_a_key"), 401, "unauthenticated")
    revoked = api.key("accounts:read")
    key_id = api.container.db.read(
        lambda s: next(
            k.id
            for k in api.container.api_keys.list(s)
            if api.container.api_keys.authenticate(s, revoked) is k
        )
    )
    api.container.db.write(lambda s: api.container.api_keys.revoke(s, key_id).id)
    problem(api.call("GET", f"/v1/accounts/{acct}/balance", revoked), 401, "unauthenticated")


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 0},
        {"amount": -5},
        {"amount": 1.5},
        {"amount": "100"},
        {"amount": 10**16},
        {},
        {"amount": 100, "unknown": 1},
    ],
)
def test_invalid_grants(api: Api, make_account, body) -> None:  # type: ignore[no-untyped-def]
    acct = make_account()
    response = api.call("POST", f"/v1/accounts/{acct}/grants", api.operator, "g", json=body)
    problem(response, 422, "validation_error")
    assert api.call("GET", f"/v1/accounts/{acct}/balance", api.reader).json()["posted"] == 0


def test_other_validation_errors(api: Api, make_account) -> None:  # type: ignore[no-untyped-def]
    acct = make_account()
    now = api.clock.now()
    # A grant that would expire before it starts, or in the past.
    body = problem(
        api.grant(
            acct,
            100,
            "g1",
            effective_at=(now + timedelta(days=2)).isoformat(),
            expires_at=(now + timedelta(days=1)).isoformat(),
        ),
        422,
        "validation_error",
    )
    assert body["field"] == "expires_at"
    problem(
        api.grant(acct, 100, "g2", expires_at=(now - timedelta(days=1)).isoformat()), 422, "validation_error"
    )
    # Missing Idempotency-Key.
    body = problem(
        api.call("POST", f"/v1/accounts/{acct}/grants", api.operator, json={"amount": 100}),
        422,
        "validation_error",
    )
    assert body["field"] == "Idempotency-Key"
    # Bad JSON.
    problem(
        api.call(
            "POST",
            f"/v1/accounts/{acct}/holds",
            api.reader,
            "h",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        ),
        422,
        "validation_error",
    )
    # A body that is not even UTF-8.
    problem(
        api.call(
            "POST",
            f"/v1/accounts/{acct}/holds",
            api.reader,
            "h-bytes",
            content=b"\xff\xfe",
            headers={"Content-Type": "application/json"},
        ),
        422,
        "validation_error",
    )
    # Holds: zero, negative, no expiry, both expiries, an expiry in the past.
    api.grant(acct, 1_000, "g3")
    for n, hold_body in enumerate(
        [
            {"amount": 0, "ttl_seconds": 60},
            {"amount": -1, "ttl_seconds": 60},
            {"amount": 10},
            {"amount": 10, "ttl_seconds": 60, "expires_at": (now + timedelta(hours=1)).isoformat()},
            {"amount": 10, "expires_at": (now - timedelta(hours=1)).isoformat()},
        ]
    ):
        problem(
            api.call("POST", f"/v1/accounts/{acct}/holds", api.reader, f"bad{n}", json=hold_body),
            422,
            "validation_error",
        )
    h = api.hold(acct, 100, "ok").json()
    problem(
        api.call("POST", f"/v1/holds/{h['id']}/capture", api.reader, "neg", json={"amount": -1}),
        422,
        "validation_error",
    )
    problem(
        api.call("POST", f"/v1/holds/{h['id']}/extend", api.reader, "none", json={}), 422, "validation_error"
    )
    balance = api.call("GET", f"/v1/accounts/{acct}/balance", api.reader).json()
    assert (balance["posted"], balance["held"]) == (1_000, 100)


def test_a_new_free_account_shows_its_allowance_on_every_read(api: Api, make_account) -> None:  # type: ignore[no-untyped-def]
    """Decision 0039: the allowance due but not issued yet counts on the balance as it does on
    funding sources and entitlements."""
    user = "100000000000000777"
    acct = make_account("personal", user)
    balance = api.call("GET", f"/v1/accounts/{acct}/balance", api.reader).json()
    assert (balance["available"], balance["allowance_due"], balance["posted"]) == (120_000, 120_000, 0)
    c = api.container
    sources = c.db.read(lambda s: c.usage.funding_sources(s, user))
    entitlements = c.db.read(lambda s: c.usage.entitlements(s, user, None, "personal"))
    assert sources[0].left == entitlements.funding_sources[0].left == balance["available"]
    statement = api.call("GET", f"/v1/accounts/{acct}/statement", api.reader).json()
    assert statement["available"] == 120_000 and statement["data"] == []


def test_statement_is_one_line_per_event_and_the_log_signs_by_phase(api: Api, make_account) -> None:  # type: ignore[no-untyped-def]
    acct = make_account()
    api.grant(acct, 100_000, "s-g", description="Credits for the team")
    h = api.hold(acct, 30_000, "s-h", reason="Desktop recording").json()
    api.call("POST", f"/v1/holds/{h['id']}/extend", api.reader, "s-e", json={"amount": 15_000})
    running = api.hold(acct, 10_000, "s-h2", reason="Discord meeting").json()
    statement = api.call("GET", f"/v1/accounts/{acct}/statement", api.reader).json()
    assert [line["type"] for line in statement["data"]] == ["credits_added"]
    assert statement["reserved"] == 55_000 and statement["available"] == 45_000 + 120_000  # + allowance due
    assert {r["hold_id"] for r in statement["in_progress"]} == {h["id"], running["id"]}

    api.call("POST", f"/v1/holds/{h['id']}/capture", api.reader, "s-c", json={"amount": 25_000})
    api.call("POST", f"/v1/holds/{running['id']}/release", api.reader, "s-r")
    statement = api.call("GET", f"/v1/accounts/{acct}/statement", api.reader).json()
    lines = [(line["type"], line["amount"], line["balance_after"]) for line in statement["data"]]
    # One line for the recording at its final amount; the release and the returned part add none.
    assert lines == [("usage", -25_000, 75_000), ("credits_added", 100_000, 100_000)]
    assert statement["data"][0]["description"] == "Desktop recording"
    assert statement["reserved"] == 0 and statement["in_progress"] == []

    log = api.call("GET", f"/v1/accounts/{acct}/ledger", api.reader).json()["data"]
    moves = [(t["phase"], t["amount"]) for t in reversed(log) if t["hold_id"] == h["id"]]
    assert moves == [("pending", -30_000), ("pending", -15_000), ("post", -25_000), ("void", 15_000)]


def test_statement_pages_never_split_an_event_and_show_freezes(api: Api, make_account) -> None:  # type: ignore[no-untyped-def]
    acct = make_account()
    c = api.container
    # Two grants, so one capture posts on both: one event of two transfers.
    first = api.grant(acct, 2_000, "p-g1", priority=10).json()
    api.grant(acct, 50_000, "p-g2", priority=20)
    for i in range(5):
        h = api.hold(acct, 3_000, f"p-h{i}").json()
        api.call("POST", f"/v1/holds/{h['id']}/capture", api.reader, f"p-c{i}", json={"amount": 3_000})
    c.db.write(
        lambda s: c.ledger.set_grant_frozen(
            s, grant_id=first["id"], frozen=True, idempotency_key="p-f", reason="Payment disputed"
        )
    )
    seen: list[dict] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"starting_after": cursor} if cursor else {})
        page = api.call("GET", f"/v1/accounts/{acct}/statement", api.reader, params=params).json()
        seen.extend(page["data"])
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert [line["type"] for line in seen] == ["frozen"] + ["usage"] * 5 + ["credits_added"] * 2
    assert [line["amount"] for line in seen[1:6]] == [-3_000] * 5
    assert seen[0]["frozen_amount"] == 0 and seen[0]["description"] == "Payment disputed"
    assert len({line["id"] for line in seen}) == len(seen)
    bad = api.call("GET", f"/v1/accounts/{acct}/statement", api.reader, params={"starting_after": "x"})
    problem(bad, 422, "validation_error")
