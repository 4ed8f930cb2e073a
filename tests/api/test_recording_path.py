"""The recording path over HTTP: settling exactly once (decision 0032), every refusal with a
stable code and nothing written, and idempotency on the request as the client sent it (0033)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from chronote_billing.api.app import create_app
from chronote_billing.container import Container
from chronote_billing.core.idempotency import IdempotencyRecord
from chronote_billing.core.ids import new_id
from chronote_billing.ledger.models import Hold, Transfer
from chronote_billing.usage.models import UsageRecord
from tests.conftest import snowflake


@pytest.fixture
def c(db, clock) -> Container:
    return Container(db=db, clock=clock)


@pytest.fixture
def client(c: Container) -> Iterator[TestClient]:
    with TestClient(create_app(c)) as client:
        yield client


class Person:
    def __init__(self, c: Container, client: TestClient, credits: int = 500) -> None:
        self.c, self.client, self.user = c, client, snowflake()
        self.key = c.db.write(
            lambda s: c.api_keys.create(s, "bot", ["holds:write", "accounts:read", "usage:write"]).secret
        )
        self.account = c.db.write(lambda s: c.accounts.get_or_create(s, "personal", self.user).id)
        if credits:
            c.db.write(
                lambda s: c.ledger.issue_grant(
                    s,
                    account_id=self.account,
                    amount=credits * 1000,
                    source="promotional",
                    idempotency_key="f",
                    cause_type="t",
                )
            )

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, key: str | None = None) -> Any:
        headers = {
            "Authorization": f"Bearer {self.key}",
            "Chronote-Acting-User": self.user,
            "Idempotency-Key": key or "k-" + secrets.token_hex(6),
        }
        return self.client.request(method, path, json=body, headers=headers)

    def start(self, minutes: int = 30, **body: Any) -> dict[str, Any]:
        body = {"context": "personal", "capture_source": "desktop", "requested_minutes": minutes, **body}
        response = self.call("POST", "/v1/recordings", body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    def state(self) -> tuple[Any, ...]:
        """Everything a refused request must leave as it was: balance, holds, statement, records."""
        c = self.c

        def read(s: Any) -> tuple[Any, ...]:
            balance = c.ledger.balance(s, self.account)
            return (
                balance.available,
                balance.held,
                balance.posted,
                s.execute(select(func.count()).select_from(Transfer)).scalar(),
                tuple(s.execute(select(Hold.id, Hold.status, Hold.amount_held).order_by(Hold.id)).all()),
                tuple(
                    s.execute(
                        select(UsageRecord.id, UsageRecord.status, UsageRecord.charged).where(
                            UsageRecord.payer_account_id == self.account
                        )
                    ).all()
                ),
                s.execute(select(func.count()).select_from(IdempotencyRecord)).scalar(),
            )

        return c.db.read(read)


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


def test_a_finish_with_the_settled_figures_returns_the_record_other_figures_are_a_conflict(c, client):  # type: ignore[no-untyped-def]
    ada = Person(c, client)
    rec = ada.start(30)
    path = f"/v1/recordings/{rec['id']}/finish"
    done = ada.call("POST", path, {"seconds_by_source": {"desktop": 25 * 60, "mic": 60}}, key="finish-1")
    assert done.status_code == 200 and done.json()["charged"] == 25_000
    # A processing retry under a new key, same figures (in any order): the settled record.
    again = ada.call("POST", path, {"seconds_by_source": {"mic": 60, "desktop": 25 * 60}})
    assert again.status_code == 200 and again.json() == done.json()
    before = ada.state()
    other = problem(
        ada.call("POST", path, {"seconds_by_source": {"desktop": 50 * 60}}), 409, "recording_already_settled"
    )
    assert other["settled_seconds_by_source"] == {"desktop": 1500, "mic": 60} and other["charged"] == 25_000
    assert ada.state() == before
    # The first finish's own key with other figures is that key's conflict, as on every write.
    problem(
        ada.call("POST", path, {"seconds_by_source": {"desktop": 5}}, key="finish-1"),
        409,
        "idempotency_conflict",
    )
    assert ada.state() == before


def test_refusals_on_the_recording_path_have_stable_codes_and_write_nothing(c, client, clock):  # type: ignore[no-untyped-def]
    ada, ben = Person(c, client), Person(c, client)
    rec = ada.start(30)
    finished = ada.start(5)
    assert (
        ada.call(
            "POST", f"/v1/recordings/{finished['id']}/finish", {"seconds_by_source": {"desktop": 60}}
        ).status_code
        == 200
    )
    before = ada.state()
    for response, status, code in [
        (
            ben.call("POST", f"/v1/recordings/{rec['id']}/extend", {"additional_minutes": 100}),
            403,
            "permission_denied",
        ),
        (
            ben.call("POST", f"/v1/recordings/{rec['id']}/finish", {"seconds_by_source": {"desktop": 60}}),
            403,
            "permission_denied",
        ),
        (ben.call("GET", f"/v1/recordings/{rec['id']}"), 403, "permission_denied"),
        (
            ada.call("POST", f"/v1/recordings/{new_id('rec')}/extend", {"additional_minutes": 5}),
            404,
            "not_found",
        ),
        # Something that cannot be an id of ours is refused at the edge (decision 0034).
        (
            ada.call("POST", "/v1/recordings/rec_unknown/extend", {"additional_minutes": 5}),
            422,
            "validation_error",
        ),
        (
            ada.call("POST", f"/v1/recordings/{finished['id']}/extend", {"additional_minutes": 5}),
            409,
            "recording_not_open",
        ),
        (ada.call("POST", f"/v1/recordings/{finished['id']}/cancel"), 409, "recording_not_open"),
        (
            ada.call(
                "POST",
                "/v1/recordings",
                {
                    "context": "personal",
                    "capture_source": "desktop",
                    "requested_minutes": 5,
                    "funding_source": new_id("auth"),
                },
            ),
            403,
            "funding_source_not_held",
        ),
    ]:
        problem(response, status, code)
    assert ada.state() == before

    # Nobody extended it in time: the hold lapsed, nothing can be charged any more.
    clock.advance(timedelta(hours=2))
    before = ada.state()
    problem(
        ada.call("POST", f"/v1/recordings/{rec['id']}/extend", {"additional_minutes": 5}),
        409,
        "recording_expired",
    )
    problem(
        ada.call("POST", f"/v1/recordings/{rec['id']}/finish", {"seconds_by_source": {"desktop": 60}}),
        409,
        "recording_expired",
    )
    assert ada.state() == before


def test_an_upload_settles_once_at_its_probed_duration(c, client):  # type: ignore[no-untyped-def]
    ada = Person(c, client)
    body = {"context": "personal", "capture_source": "upload", "declared_duration_seconds": 600}
    upload = ada.call("POST", "/v1/recordings", body).json()
    path = f"/v1/recordings/{upload['id']}/finish"
    first = ada.call("POST", path, {"seconds_by_source": {"upload": 590}})
    assert first.status_code == 200 and first.json()["charged"] == 10_000
    assert ada.call("POST", path, {"seconds_by_source": {"upload": 590}}).json() == first.json()
    problem(ada.call("POST", path, {"seconds_by_source": {"upload": 610}}), 409, "recording_already_settled")


def test_a_hold_placed_with_a_ttl_is_the_same_request_when_retried_later(c, client, clock):  # type: ignore[no-untyped-def]
    ada = Person(c, client)
    body = {"amount": 1_000, "ttl_seconds": 600}
    first = ada.call("POST", f"/v1/accounts/{ada.account}/holds", body, key="hold-after-crash")
    assert first.status_code == 201
    clock.advance(timedelta(seconds=1, milliseconds=100))
    retry = ada.call("POST", f"/v1/accounts/{ada.account}/holds", body, key="hold-after-crash")
    assert retry.status_code == 201 and retry.json() == first.json()
    problem(
        ada.call(
            "POST", f"/v1/accounts/{ada.account}/holds", {**body, "ttl_seconds": 601}, key="hold-after-crash"
        ),
        409,
        "idempotency_conflict",
    )


def test_any_key_and_meeting_id_a_client_may_send_works_everywhere(c, client):  # type: ignore[no-untyped-def]
    ada = Person(c, client)
    longest = "k" * 255
    meeting = "m" * 128
    rec = ada.start(10, meeting_id=meeting)
    extended = ada.call("POST", f"/v1/recordings/{rec['id']}/extend", {"additional_minutes": 5}, key=longest)
    assert extended.status_code == 200 and extended.json()["approved_minutes"] == 15
    assert extended.json()["partial"] is False
    assert (
        ada.call("POST", f"/v1/recordings/{rec['id']}/extend", {"additional_minutes": 5}, key=longest).json()
        == extended.json()
    )
    ada.call(
        "POST", f"/v1/recordings/{rec['id']}/finish", {"seconds_by_source": {"desktop": 60}}, key=longest
    )
    shared = ada.call("POST", f"/v1/meetings/{meeting}/shares", {"guild_id": snowflake()}, key=longest)
    assert shared.status_code == 201, shared.text
