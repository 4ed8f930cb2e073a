"""Delivery of outbox events to a real HTTP receiver on a loopback port: signatures, retries,
at-least-once redelivery, dead entries, and the auto-recharge job's bookkeeping."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select, update

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.config import get_settings
from chronote_billing.container import Container
from chronote_billing.notifications.delivery import DeliveryWorker, start_delivery_thread
from chronote_billing.notifications.models import OutboxEntry
from chronote_billing.notifications.service import NotificationService
from chronote_billing.notifications.signing import InvalidSignature, sign, verify_signature

SECRET = "whsec_test_outbound"


class Receiver:
    """A tiny HTTP server answering each POST with the next scripted status (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append((dict(self.headers.items()), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"receiver unhappy")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/billing"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def ids(self) -> list[str]:
        return [json.loads(body)["id"] for _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def make_container(db, clock, url: str) -> Container:
    settings = dataclasses.replace(get_settings(), chronote_webhook_url=url, chronote_webhook_secret=SECRET)
    return Container(db=db, clock=clock, settings=settings)


def make_worker(container: Container, account: str, **kw) -> DeliveryWorker:
    kw.setdefault("max_attempts", 4)
    kw.setdefault("base_delay", timedelta(seconds=10))
    kw.setdefault("max_delay", timedelta(minutes=10))
    kw.setdefault("lease", timedelta(minutes=1))
    kw.setdefault("timeout", 5.0)
    return DeliveryWorker(container, account_ids=[account], **kw)


def emit(db, container: Container, account: str, n: int, type_: str = "hold.declined") -> list[str]:
    def work(s):
        for i in range(n):
            container.notifications.emit(s, type_, account, {"i": i}, dedupe_key=f"test:{account}:{i}")

    db.write(work)
    return [e.id for e in rows(db, account)]


def rows(db, account: str) -> list[OutboxEntry]:
    return db.read(
        lambda s: list(
            s.execute(
                select(OutboxEntry).where(OutboxEntry.account_id == account).order_by(OutboxEntry.id)
            ).scalars()
        )
    )


def test_delivers_signed_events_with_unique_ids(db, clock, make_account, receiver):
    acct = make_account()
    container = make_container(db, clock, receiver.url)
    ids = emit(db, container, acct, 3)
    worker = make_worker(container, acct)
    report = worker.run_once()
    assert (report.delivered, report.retrying, report.dead) == (3, 0, 0)
    assert sorted(receiver.ids()) == sorted(ids) and len(set(ids)) == 3
    for headers, body in receiver.requests:
        verify_signature(body, headers["Chronote-Signature"], SECRET)
        event = json.loads(body)
        assert set(event) == {"id", "type", "created", "account_id", "data"}
        assert event["type"] == "hold.declined" and event["account_id"] == acct
        assert event["created"] == int(clock.now().timestamp())
        assert headers["Content-Type"] == "application/json"
        assert headers["Chronote-Event-Id"] == event["id"]
    assert all(r.delivered_at == clock.now() and r.attempts == 1 for r in rows(db, acct))
    assert worker.run_once().attempted == 0  # nothing is sent twice once delivered
    assert len(receiver.requests) == 3

    headers, body = receiver.requests[0]
    with pytest.raises(InvalidSignature):
        verify_signature(
            body.replace(b'"hold.declined"', b'"payment.failed"'), headers["Chronote-Signature"], SECRET
        )
    with pytest.raises(InvalidSignature):
        verify_signature(body, headers["Chronote-Signature"], "whsec_wrong")
    with pytest.raises(InvalidSignature):
        verify_signature(body, headers["Chronote-Signature"], SECRET, now=time.time() + 301)
    worker.close()


def test_retries_on_server_errors_then_succeeds(db, clock, make_account, receiver):
    acct = make_account()
    container = make_container(db, clock, receiver.url)
    [event_id] = emit(db, container, acct, 1)
    receiver.statuses = [500, 503]
    worker = make_worker(container, acct)

    assert worker.run_once().retrying == 1
    [row] = rows(db, acct)
    assert row.delivered_at is None and row.attempts == 1 and row.last_error.startswith("HTTP 500")
    # backoff with jitter: due between half and all of the 10 s step
    assert clock.now() + timedelta(seconds=5) <= row.next_attempt_at <= clock.now() + timedelta(seconds=10)
    assert worker.run_once().attempted == 0  # not due yet

    clock.advance(timedelta(seconds=10))
    assert worker.run_once().retrying == 1
    [row] = rows(db, acct)
    assert row.attempts == 2 and row.last_error.startswith("HTTP 503")
    assert row.next_attempt_at >= clock.now() + timedelta(seconds=10)  # the step doubled

    clock.advance(timedelta(seconds=20))
    assert worker.run_once().delivered == 1
    [row] = rows(db, acct)
    assert row.delivered_at is not None and row.attempts == 3 and row.next_attempt_at is None
    assert receiver.ids() == [event_id] * 3  # the same id every time: receivers dedupe by it
    worker.close()


def test_dead_after_max_attempts_and_visible(db, clock, make_account, receiver):
    acct = make_account()
    container = make_container(db, clock, receiver.url)
    emit(db, container, acct, 1)
    receiver.statuses = [500] * 10
    worker = make_worker(container, acct, max_attempts=3)
    outcomes = []
    for _ in range(4):
        report = worker.run_once()
        outcomes.append((report.retrying, report.dead))
        clock.advance(timedelta(minutes=10))
    assert outcomes == [(1, 0), (1, 0), (0, 1), (0, 0)]
    [row] = rows(db, acct)
    assert row.dead_at is not None and row.attempts == 3 and row.next_attempt_at is None
    assert len(receiver.requests) == 3
    dead = db.read(lambda s: container.notifications.list_outbox(s, status="dead", account_id=acct))
    assert [e.id for e in dead.data] == [row.id] and dead.data[0].status == "dead"
    pending = db.read(lambda s: container.notifications.list_outbox(s, status="pending", account_id=acct))
    assert pending.data == []
    worker.close()


def test_unreachable_receiver_is_retried(db, clock, make_account):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    acct = make_account()
    container = make_container(db, clock, f"http://127.0.0.1:{port}/hook")
    emit(db, container, acct, 1)
    worker = make_worker(container, acct)
    assert worker.run_once().retrying == 1
    [row] = rows(db, acct)
    assert "ConnectError" in (row.last_error or "") and row.delivered_at is None
    worker.close()


def test_redelivered_when_the_worker_dies_after_sending(db, clock, make_account, receiver):
    """At least once: a send whose outcome was never recorded is sent again after the lease."""
    acct = make_account()
    container = make_container(db, clock, receiver.url)
    [event_id] = emit(db, container, acct, 1)
    worker = make_worker(container, acct)
    [claimed] = db.write(worker._claim)
    assert worker._attempt(claimed).ok  # sent; the worker "dies" before recording it
    assert worker.run_once().attempted == 0  # leased: no other pass takes it meanwhile
    clock.advance(timedelta(minutes=1))
    assert worker.run_once().delivered == 1
    assert receiver.ids() == [event_id, event_id]
    worker.close()


def test_events_wait_while_no_url_is_configured(db, clock, make_account, receiver):
    acct = make_account()
    container = make_container(db, clock, "")
    emit(db, container, acct, 1)
    worker = make_worker(container, acct)
    assert worker.run_once().attempted == 0
    [row] = rows(db, acct)
    assert row.attempts == 0 and row.delivered_at is None
    worker.close()


def test_background_thread_delivers_and_stops(db, clock, make_account, receiver):
    acct = make_account()
    container = make_container(db, clock, receiver.url)
    [event_id] = emit(db, container, acct, 1)
    stop = threading.Event()
    thread = start_delivery_thread(container, stop, poll_interval=0.05, account_ids=[acct])
    deadline = time.monotonic() + 10
    while event_id not in receiver.ids() and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert event_id in receiver.ids()
    verify_signature(receiver.requests[0][1], receiver.requests[0][0]["Chronote-Signature"], SECRET)


def test_auto_recharge_job_turned_off_before_purchase(db, clock, ledger, make_account, receiver):
    org = make_account("organization")
    container = make_container(db, clock, receiver.url)
    notifications: NotificationService = container.notifications
    db.write(
        lambda s: ledger.issue_grant(
            s, account_id=org, amount=10_000, source="promotional", cause_type="admin", idempotency_key="g"
        )
    )
    db.write(
        lambda s: notifications.set_auto_recharge(
            s,
            account_id=org,
            enabled=True,
            threshold_credits=50,
            pack_id="credits_1000",
            idempotency_key="on",
            monthly_limit_count=3,
        )
    )
    db.write(lambda s: notifications.after_balance_change(s, org))
    db.write(
        lambda s: notifications.set_auto_recharge(
            s,
            account_id=org,
            enabled=False,
            threshold_credits=50,
            pack_id="credits_1000",
            idempotency_key="off",
        )
    )
    worker = make_worker(container, org)
    worker.run_once()
    by_type = {r.type: r for r in rows(db, org)}
    job = by_type["auto_recharge.purchase"]
    assert job.delivered_at is not None and "turned off" in (job.last_error or "")
    failed = by_type["auto_recharge.failed"]
    assert failed.data == {
        "account_id": org,
        "recharge_id": job.id,
        "pack_id": "credits_1000",
        "reason": "auto_recharge_disabled",
    }
    sent = {json.loads(body)["type"] for _, body in receiver.requests}
    assert sent == {"auto_recharge.started", "auto_recharge.failed"}  # jobs are not sent to Chronote
    worker.close()


def test_signature_header_parsing():
    body = b'{"id":"evt_1"}'
    header = sign(body, SECRET, timestamp=1_700_000_000)
    verify_signature(body, header, SECRET, now=1_700_000_100)
    rotated = f"{header},v1={'0' * 64}"
    verify_signature(body.decode(), rotated, SECRET, now=1_700_000_000)
    for bad in (None, "", "t=abc,v1=00", "v1=00", f"t=1700000000,v0={'0' * 64}"):
        with pytest.raises(InvalidSignature):
            verify_signature(body, bad, SECRET, now=1_700_000_000)
    with pytest.raises(InvalidSignature):
        verify_signature(body, header, SECRET, now=1_700_000_000 - 301)


def start_recharge(db, ledger, notifications: NotificationService, org: str) -> None:
    db.write(
        lambda s: ledger.issue_grant(
            s, account_id=org, amount=10_000, source="promotional", cause_type="admin", idempotency_key="g"
        )
    )
    db.write(
        lambda s: notifications.set_auto_recharge(
            s,
            account_id=org,
            enabled=True,
            threshold_credits=50,
            pack_id="credits_1000",
            idempotency_key="on",
            monthly_limit_count=3,
        )
    )
    db.write(lambda s: notifications.after_balance_change(s, org))


def test_auto_recharge_refused_by_billing_is_final(db, clock, ledger, make_account, receiver):
    """The real billing service refuses an account that never bought anything (no saved card)."""
    org = make_account("organization")
    container = make_container(db, clock, receiver.url)
    start_recharge(db, ledger, container.notifications, org)
    worker = make_worker(container, org)
    worker.run_once()
    by_type = {r.type: r for r in rows(db, org)}
    job = by_type["auto_recharge.purchase"]
    assert job.delivered_at is not None and job.attempts == 1
    assert (job.last_error or "").startswith("no_stripe_customer")
    failed = by_type["auto_recharge.failed"]
    assert failed.data["reason"] == "no_stripe_customer" and failed.data["recharge_id"] == job.id
    assert failed.delivered_at is not None  # and Chronote was told
    assert db.read(lambda s: ledger.balance(s, org)).available == 10_000
    worker.close()


def test_auto_recharge_retried_while_stripe_is_unreachable(db, clock, ledger, make_account, receiver):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    org = make_account("organization")
    db.write(
        lambda s: s.execute(
            update(BillingAccount)
            .where(BillingAccount.id == org)
            .values(stripe_customer_id=f"cus_{org[-12:]}")
        )
    )
    settings = dataclasses.replace(
        get_settings(),
        chronote_webhook_url=receiver.url,
        chronote_webhook_secret=SECRET,
        stripe_api_base=f"http://127.0.0.1:{port}",
    )
    container = Container(db=db, clock=clock, settings=settings)
    start_recharge(db, ledger, container.notifications, org)
    worker = make_worker(container, org, max_attempts=2)
    worker.run_once()
    job = next(r for r in rows(db, org) if r.kind == "job")
    assert job.delivered_at is None and job.dead_at is None and job.attempts == 1
    assert "auto_recharge.failed" not in {r.type for r in rows(db, org)}

    clock.advance(timedelta(minutes=10))
    worker.run_once()
    by_type = {r.type: r for r in rows(db, org)}
    assert by_type["auto_recharge.purchase"].dead_at is not None
    assert by_type["auto_recharge.failed"].data["reason"] == "payment_provider_unavailable"
    assert by_type["auto_recharge.failed"].delivered_at is not None
    worker.close()
