"""Health, readiness and metrics (decision 0036): /healthz without the database, /readyz with it
and the migrations, /metrics behind its token with requests, ledger operations and declines,
combined commits, pools, the outbox and Stripe webhooks; correct across several workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, text

from chronote_billing.api.app import create_app
from chronote_billing.config import Settings
from chronote_billing.container import Container
from chronote_billing.core.clock import ManualClock
from chronote_billing.core.db import Database
from chronote_billing.core.ids import new_id
from chronote_billing.notifications.models import OutboxEntry
from chronote_billing.stripe_sync.models import StripeEvent
from tests.factories import free_port

TOKEN = "metrics-token-for-tests"


def scrape(client: TestClient | httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def app_for(
    db: Database, clock: ManualClock | None = None, token: str = TOKEN
) -> tuple[TestClient, Container]:
    container = Container(
        db=db, clock=clock or ManualClock(), settings=replace(Settings(), metrics_token=token)
    )
    return TestClient(create_app(container)), container


def test_metrics_need_their_token_and_are_off_without_one(db: Database) -> None:
    off, _ = app_for(db, token="")
    assert off.get("/metrics").status_code == 404
    client, _ = app_for(db)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        client.get(
            "/metrics", headers={"Authorization": "Bearer \xc3\xa9-not-ascii".encode("latin-1")}
        ).status_code
        == 401
    )
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]
    scrape(client)


def test_healthz_needs_no_database_and_readyz_checks_it_and_the_migrations(scratch_db: Database) -> None:
    broken = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")  # nothing listens on port 1
    down = TestClient(create_app(Container(db=broken)))
    assert down.get("/healthz").json()["status"] == "ok"
    not_ready = down.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["code"] == "not_ready"
    assert "unreachable" in not_ready.json()["detail"]

    client, _ = app_for(scratch_db)
    assert client.get("/readyz").json()["status"] == "ready"
    scratch_db.write(lambda s: s.execute(text("UPDATE alembic_version SET version_num = '0001'")))
    behind = client.get("/readyz")
    assert behind.status_code == 503 and "the schema is at 0001" in behind.json()["detail"]


def test_requests_ledger_operations_and_declines_are_counted(db: Database, make_account) -> None:  # type: ignore[no-untyped-def]
    client, c = app_for(db)
    secret = db.write(lambda s: c.api_keys.create(s, "m", ["operator"]).secret)
    account = make_account()
    headers = {"Authorization": f"Bearer {secret}"}
    before = scrape(client)
    grant = client.post(
        f"/v1/accounts/{account}/grants",
        json={"amount": 5_000},
        headers={**headers, "Idempotency-Key": new_id("k")},
    )
    assert grant.status_code == 201
    for amount, status in ((1_000, 201), (100_000, 402)):
        hold = client.post(
            f"/v1/accounts/{account}/holds",
            json={"amount": amount, "ttl_seconds": 60},
            headers={**headers, "Idempotency-Key": new_id("k")},
        )
        assert hold.status_code == status
    assert client.get("/v1/holds/hold_nope", headers=headers).status_code == 422
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v1/accounts/{account_id}/holds"
    assert delta("chronote_http_requests_total", method="POST", route=route, status="201") == 1
    assert delta("chronote_http_requests_total", method="POST", route=route, status="402") == 1
    assert delta("chronote_http_request_duration_seconds_count", method="POST", route=route) == 2
    assert delta("chronote_http_problems_total", route=route, code="insufficient_credits") == 1
    assert delta("chronote_http_problems_total", route="/v1/holds/{hold_id}", code="validation_error") == 1
    assert delta("chronote_ledger_operations_total", operation="hold.place", result="ok") == 1
    assert delta("chronote_ledger_operations_total", operation="hold.place", result="declined") == 1
    assert delta("chronote_ledger_declines_total", operation="hold.place", code="insufficient_credits") == 1
    assert delta("chronote_ledger_operations_total", operation="grant.issue", result="ok") == 1
    assert value(after, "chronote_db_pool_connections", pool="engine", state="idle") >= 1
    assert value(after, "chronote_database_up") == 1
    # Labels are templates: no id of an account or hold appears anywhere.
    assert not any(account in str(key) for key in after)


def test_the_outbox_and_stripe_webhooks_as_the_database_sees_them(scratch_db: Database) -> None:
    clock = ManualClock()
    client, _ = app_for(scratch_db, clock)
    now = clock.now()

    def outbox(state: str, age: timedelta, attempts: int) -> dict[str, Any]:
        entry_id = new_id("evt")
        at = now - age
        return {
            "id": entry_id,
            "kind": "event",
            "type": "wallet.balance_low",
            "account_id": None,
            "data": {},
            "dedupe_key": entry_id,
            "created_at": at,
            "attempts": attempts,
            "next_attempt_at": now if state == "pending" else None,
            "delivered_at": at if state == "delivered" else None,
            "dead_at": at if state == "dead" else None,
        }

    def event(lag_seconds: int, outcome: str) -> dict[str, Any]:
        return {
            "id": "evt_" + new_id("s"),
            "type": "invoice.paid",
            "created": int(now.timestamp()) - lag_seconds,
            "livemode": False,
            "object_id": None,
            "account_id": None,
            "outcome": outcome,
            "note": "",
            "payload": {},
            "received_at": now,
        }

    def seed(s: Any) -> None:
        s.execute(
            insert(OutboxEntry),
            [
                outbox("pending", timedelta(minutes=10), 0),
                outbox("pending", timedelta(minutes=3), 2),
                outbox("delivered", timedelta(hours=1), 1),
                outbox("dead", timedelta(hours=2), 8),
            ],
        )
        s.execute(
            insert(StripeEvent), [event(4, "applied"), event(95, "applied"), event(2, "unknown_account")]
        )

    scratch_db.write(seed)
    samples = scrape(client)
    assert value(samples, "chronote_outbox_pending") == 2
    assert value(samples, "chronote_outbox_failing") == 1
    assert value(samples, "chronote_outbox_dead") == 1
    assert value(samples, "chronote_outbox_oldest_pending_age_seconds") == pytest.approx(600, abs=2)
    assert value(samples, "chronote_stripe_webhook_lag_seconds") == pytest.approx(95, abs=2)
    assert value(samples, "chronote_stripe_events_unapplied") == 1


def test_a_stripe_event_stored_and_not_applied_for_five_minutes_is_unapplied(scratch_db: Database) -> None:
    """Decision 0056: an event whose application failed stays `received` until Stripe delivers
    it again; one still waiting five minutes on counts among the unapplied."""
    clock = ManualClock()
    client, _ = app_for(scratch_db, clock)
    now = clock.now()

    def received(age: timedelta) -> dict[str, Any]:
        return {
            "id": "evt_" + new_id("s"),
            "type": "invoice.paid",
            "created": int((now - age).timestamp()),
            "livemode": False,
            "object_id": None,
            "account_id": None,
            "outcome": "received",
            "note": "",
            "payload": {},
            "received_at": now - age,
        }

    scratch_db.write(lambda s: s.execute(insert(StripeEvent), [received(timedelta(seconds=30))]))
    assert value(scrape(client), "chronote_stripe_events_unapplied") == 0  # being applied, maybe
    scratch_db.write(lambda s: s.execute(insert(StripeEvent), [received(timedelta(minutes=6))]))
    assert value(scrape(client), "chronote_stripe_events_unapplied") == 1


@pytest.mark.postgres
def test_combined_commits_are_the_combiners_own_counters(scratch_db: Database) -> None:
    from tests.core.test_write_combiner import TXID, behind_a_slow_write

    client, _ = app_for(scratch_db)
    before = scrape(client)
    behind_a_slow_write(scratch_db, "metrics", [(TXID, ["a"]), (TXID, ["b"]), (TXID, ["c"])])
    after = scrape(client)
    combiner = scratch_db._combiner
    assert combiner.combined_transactions >= 1
    for name, count in (
        ("chronote_db_combined_transactions_total", combiner.combined_transactions),
        ("chronote_db_combined_writes_total", combiner.combined_writes),
    ):
        assert value(after, name) - value(before, name) == count
    assert value(after, "chronote_db_pool_connections", pool="autocommit", state="idle") >= 1


def test_metrics_are_the_sum_over_several_worker_processes(scratch_db: Database, tmp_path: Path) -> None:
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "CHRONOTE_DATABASE_URL": scratch_db.url,
        "CHRONOTE_METRICS_TOKEN": TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "chronote_billing.api.app:create_app",
            "--workers",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the workers did not start"
            time.sleep(0.2)
        # A new connection each time, so the kernel hands them to both workers.
        for _ in range(60):
            assert httpx.get(base + "/healthz", timeout=5).status_code == 200
        pids = {m.group(1) for p in metrics_dir.iterdir() if (m := re.search(r"counter_(\d+)\.db$", p.name))}
        assert len(pids) == 2, f"requests reached {len(pids)} worker(s)"
        for _ in range(6):
            with httpx.Client(base_url=base, timeout=5) as client:
                samples = scrape(client)
            assert (
                value(samples, "chronote_http_requests_total", method="GET", route="/healthz", status="200")
                == 60
            )
    finally:
        server.terminate()
        server.wait(timeout=20)
