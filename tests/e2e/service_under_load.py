"""A real `chronote-billing serve` process under load over HTTP, and the checks that every
operation it acknowledged exists exactly once afterwards.

The crash test kills the process under this load; the failover test takes its database away.
Clients behave as decision 0050 asks of them: an unanswered request (no connection, a dropped
connection, a timeout) or a 503 is sent again with the same Idempotency-Key and the same body
until it gets an answer. They retry every 0.1 s rather than after Retry-After, so that the
figures measure the service's gap and not the client's patience.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from chronote_billing.container import Container
from chronote_billing.core.db import Database
from chronote_billing.ledger.models import Grant, Hold, Transfer
from chronote_billing.usage.models import UsageRecord
from tests.factories import free_port

CLI = Path(sys.executable).parent / "chronote-billing"
RETRY_EVERY = 0.1
GRANT = 50_000_000  # millicredits per payer: no operation of the load is ever declined


class ServiceProcess:
    """`chronote-billing serve` on a free port, logging to a file; kill -9 and start again."""

    def __init__(self, database_url: str, log_path: Path, workers: int = 1) -> None:
        self.database_url = database_url
        self.workers = workers
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> float:
        """Start and wait until it answers HTTP; the seconds that took."""
        began = time.monotonic()
        env = {**os.environ, "CHRONOTE_DATABASE_URL": self.database_url}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(CLI), "serve", "--workers", str(self.workers), "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        while time.monotonic() - began < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}: {self.log_tail()}")
            try:
                httpx.get(self.base_url + "/healthz", timeout=1)
                return time.monotonic() - began
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the service did not answer within {timeout} s: {self.log_tail()}")

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Payer:
    user_id: str
    account_id: str
    secret: str  # holds:write, usage:write, accounts:read


def prepare_payers(db: Database, count: int) -> list[Payer]:
    """``count`` people with a funded personal wallet each, and an API key for the load."""
    c = Container(db=db)
    secret = db.write(
        lambda s: c.api_keys.create(s, "load", ["holds:write", "usage:write", "accounts:read"]).secret
    )
    payers = []
    for _ in range(count):
        user = str(10**17 + secrets.randbelow(9 * 10**17))
        account = db.write(lambda s, user=user: c.accounts.get_or_create(s, "personal", user).id)
        db.write(
            lambda s, account=account: c.ledger.issue_grant(
                s,
                account_id=account,
                amount=GRANT,
                source="promotional",
                idempotency_key="load-funding",
                cause_type="test",
            )
        )
        payers.append(Payer(user, account, secret))
    return payers


@dataclass
class Acked:
    """An operation the service acknowledged, with what it answered."""

    op: str
    key: str
    body: dict[str, Any]
    answer: dict[str, Any]
    at: float


@dataclass
class Tally:
    """What one client saw."""

    acked: list[Acked] = field(default_factory=list)
    ok_times: list[float] = field(default_factory=list)  # every answered request
    failures: list[tuple[float, str]] = field(default_factory=list)  # (when, "503" or "unanswered")
    unexpected: list[str] = field(default_factory=list)  # any other 5xx, a 4xx, a bad 503


class LoadClient(threading.Thread):
    """Runs flows on one payer until stopped, finishing the flow it is in: a ledger hold placed
    then captured or released, or a recording started, extended and finished."""

    def __init__(
        self,
        name: str,
        base_url: str,
        payer: Payer,
        stop: threading.Event,
        abandon: threading.Event,
        seed: int,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.base_url = base_url
        self.payer = payer
        self.stop_event = stop
        self.abandon = abandon  # the test failed: stop retrying
        self.random = random.Random(seed)
        self.tally = Tally()
        self.flows = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, timeout=15) as http:
                while not self.stop_event.is_set():
                    self.flows += 1
                    if self.flows % 2:
                        self._hold_flow(http)
                    else:
                        self._recording_flow(http)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _hold_flow(self, http: httpx.Client) -> None:
        base = f"{self.name}-h{self.flows}"
        amount = self.random.randrange(1_000, 5_000)
        # A TTL, as a client sends it: its retry seconds later must still find the first hold.
        hold = self.send(
            http,
            "hold",
            f"/v1/accounts/{self.payer.account_id}/holds",
            base + "-place",
            {"amount": amount, "ttl_seconds": 7200, "reason": "load"},
        )
        if hold is None:
            return
        if self.random.random() < 0.8:
            captured = self.random.randrange(0, amount + 1)
            self.send(
                http, "capture", f"/v1/holds/{hold['id']}/capture", base + "-capture", {"amount": captured}
            )
        else:
            self.send(http, "release", f"/v1/holds/{hold['id']}/release", base + "-release", {})

    def _recording_flow(self, http: httpx.Client) -> None:
        base = f"{self.name}-r{self.flows}"
        started = self.send(
            http,
            "start",
            "/v1/recordings",
            base + "-start",
            {
                "context": "personal",
                "capture_source": "desktop",
                "requested_minutes": 3,
                "meeting_id": base,
            },
        )
        if started is None:
            return
        rec = started["id"]
        self.send(http, "extend", f"/v1/recordings/{rec}/extend", base + "-extend", {"additional_minutes": 2})
        seconds = self.random.randrange(1, 5 * 60)
        self.send(
            http,
            "finish",
            f"/v1/recordings/{rec}/finish",
            base + "-finish",
            {"seconds_by_source": {"mic": seconds}},
        )

    def send(
        self, http: httpx.Client, op: str, path: str, key: str, body: dict[str, Any]
    ) -> dict[str, Any] | None:
        """POST until answered; the answer's JSON when it is a success, None otherwise."""
        headers = {
            "Authorization": f"Bearer {self.payer.secret}",
            "Chronote-Acting-User": self.payer.user_id,
            "Idempotency-Key": key,
        }
        while not self.abandon.is_set():
            try:
                response = http.post(path, json=body, headers=headers)
            except httpx.TransportError:
                self.tally.failures.append((time.monotonic(), "unanswered"))
                time.sleep(RETRY_EVERY)
                continue
            now = time.monotonic()
            if response.status_code == 503:
                self.tally.failures.append((now, "503"))
                problem = _problem(response)
                if (
                    problem is None
                    or problem.get("code") not in ("database_unavailable", "database_busy")
                    or not response.headers.get("retry-after", "").isdigit()
                ):
                    self.tally.unexpected.append(
                        f"{op} {key}: bad 503 {response.headers} {response.text[:300]}"
                    )
                time.sleep(RETRY_EVERY)
                continue
            self.tally.ok_times.append(now)
            if response.status_code not in (200, 201):
                self.tally.unexpected.append(f"{op} {key}: {response.status_code} {response.text[:300]}")
                return None
            answer: dict[str, Any] = response.json()
            self.tally.acked.append(Acked(op, key, body, answer, now))
            return answer
        return None


def _problem(response: httpx.Response) -> dict[str, Any] | None:
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class Load:
    """``clients`` LoadClients on ``payers`` (several clients share a payer, so writes to one
    wallet overlap and share commits)."""

    def __init__(self, base_url: str, payers: list[Payer], clients: int = 8) -> None:
        self.stop_event = threading.Event()
        self.abandon = threading.Event()
        self.clients = [
            LoadClient(f"c{i}", base_url, payers[i % len(payers)], self.stop_event, self.abandon, seed=i)
            for i in range(clients)
        ]

    def __enter__(self) -> Load:
        for client in self.clients:
            client.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abandon.set()
        self.stop()

    def stop(self, timeout: float = 60) -> None:
        """Let every client finish the flow it is in, then stop; give up after ``timeout``."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for client in self.clients:
            client.join(timeout=max(0.0, deadline - time.monotonic()))
        self.abandon.set()

    def acked_since(self, moment: float) -> int:
        return sum(1 for c in self.clients for a in c.tally.acked if a.at > moment)

    def wait_for_answers(self, after: float, count: int = 8, timeout: float = 30) -> float:
        """Wait until ``count`` operations were acknowledged after ``after``; the first one's time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            times = sorted(a.at for c in self.clients for a in list(c.tally.acked) if a.at > after)
            if len(times) >= count:
                return times[0]
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count} operations were answered within {timeout} s of the fault")

    def problems(self) -> list[str]:
        found = [f"{c.name}: {c.error!r}" for c in self.clients if c.error is not None]
        found += [f"{c.name}: still running" for c in self.clients if c.is_alive()]
        found += [line for c in self.clients for line in c.tally.unexpected]
        return found

    def acked(self) -> list[Acked]:
        return [a for c in self.clients for a in c.tally.acked]


@dataclass
class Disturbance:
    """One fault and what the clients saw of it."""

    label: str
    answered_503: int  # attempts answered 503
    unanswered: int  # attempts with no answer (refused, dropped, timed out)
    seconds_unavailable: float  # first failed attempt to the first answer after the last one
    seconds_to_recover: float  # the fault's start to the first answer after the last failure

    @property
    def requests_failed(self) -> int:
        return self.answered_503 + self.unanswered


def measure(load: Load, label: str, began: float, ended: float) -> Disturbance:
    """The failures clients saw between ``began`` and ``ended`` (monotonic times)."""
    failed = sorted((t, kind) for c in load.clients for t, kind in c.tally.failures if began <= t < ended)
    if not failed:
        return Disturbance(label, 0, 0, 0.0, 0.0)
    last = failed[-1][0]
    answered_after = [t for c in load.clients for t in c.tally.ok_times if last < t < ended]
    back = min(answered_after) if answered_after else last
    return Disturbance(
        label,
        sum(1 for _, kind in failed if kind == "503"),
        sum(1 for _, kind in failed if kind == "unanswered"),
        round(back - failed[0][0], 2),
        round(back - began, 2),
    )


def check_exactly_once(db: Database, payers: list[Payer], acked: list[Acked]) -> dict[str, int]:
    """Every acknowledged operation exists exactly once, nothing else exists, and nothing is left
    open: the wallets' holds are exactly the acknowledged ones (captured or released as
    answered), the payers' recordings are exactly the acknowledged ones (extended once,
    charged as answered), and each wallet was charged exactly the sum of what was answered.
    Returns counts of what was checked."""
    by_op: dict[str, list[Acked]] = {}
    for a in acked:
        by_op.setdefault(a.op, []).append(a)
    # The hold each acknowledged operation names, and what it should have captured.
    placed = {a.answer["id"]: a for a in by_op.get("hold", [])}
    expected_capture = dict.fromkeys(placed, 0)
    for a in by_op.get("capture", []):
        expected_capture[a.answer["id"]] = a.body["amount"]
    started = {a.answer["id"]: a for a in by_op.get("start", [])}
    finished = {a.answer["id"]: a for a in by_op.get("finish", [])}
    extended = [a.answer["id"] for a in by_op.get("extend", [])]
    for a in by_op.get("capture", []) + by_op.get("release", []):
        assert a.answer["id"] in placed, f"{a.op} {a.key} settled a hold no placement answered"
    assert len(set(extended)) == len(extended) == len(started), "one extension per recording"
    assert set(finished) == set(started), "every started recording was finished"
    for rec_id, a in finished.items():
        expected_capture[started[rec_id].answer["hold_id"]] = a.answer["charged"]
    assert len(placed) == len(by_op.get("hold", [])), "two placements answered with one hold"

    accounts = {p.account_id for p in payers}
    users = {p.user_id for p in payers}
    with db.session(readonly=True) as s:
        holds = {
            row.id: row
            for row in s.execute(
                select(
                    Hold.id, Hold.billing_account_id.label("account"), Hold.status, Hold.amount_captured
                ).where(Hold.billing_account_id.in_(accounts))
            )
        }
        # What the transfer log posted for each hold: a capture posted twice would show here.
        posted = dict(
            s.execute(
                select(Transfer.hold_id, func.sum(Transfer.amount))
                .where(Transfer.hold_id.in_(list(holds)), Transfer.phase == "post")
                .group_by(Transfer.hold_id)
            ).all()
        )
        records = {
            row.id: row
            for row in s.execute(
                select(UsageRecord.id, UsageRecord.status, UsageRecord.held, UsageRecord.charged).where(
                    UsageRecord.user_id.in_(users)
                )
            )
        }
    missing = set(expected_capture) - set(holds)
    extra = set(holds) - set(expected_capture)
    assert not missing, f"acknowledged holds missing from the database: {sorted(missing)[:5]}"
    assert not extra, f"holds no client was told about (orphaned or duplicated): {sorted(extra)[:5]}"
    wrong = {
        hold_id: (row.status, row.amount_captured, expected_capture[hold_id])
        for hold_id, row in holds.items()
        if row.status not in ("captured", "released") or row.amount_captured != expected_capture[hold_id]
    }
    assert not wrong, f"holds not settled as answered (status, captured, answered): {list(wrong.items())[:5]}"
    wrong_log = {
        h: (int(posted.get(h) or 0), want)
        for h, want in expected_capture.items()
        if int(posted.get(h) or 0) != want
    }
    assert not wrong_log, f"transfers posted per hold differ from the answers: {list(wrong_log.items())[:5]}"
    assert set(records) == set(started), "the payers' recordings are exactly the acknowledged ones"
    for rec_id, row in records.items():
        answer = finished[rec_id].answer
        assert row.status == answer["status"] and row.charged == answer["charged"], (rec_id, row)
        assert row.held == 5_000, f"recording {rec_id} held {row.held}: extended more or less than once"
    # The money: each wallet holds exactly its grants less what the answers said was charged.
    ledger = Container(db=db).ledger
    for account in accounts:
        charged = sum(expected_capture[h] for h, row in holds.items() if row.account == account)
        with db.session(readonly=True) as s:
            balance = ledger.balance(s, account)
            granted = s.execute(
                select(func.sum(Grant.amount)).where(Grant.billing_account_id == account)
            ).scalar()
        assert balance.held == 0, f"{account} still holds {balance.held}"
        assert balance.posted == int(granted or 0) - charged, (account, balance.posted, granted, charged)
    return {
        "holds": len(placed),
        "captures": len(by_op.get("capture", [])),
        "releases": len(by_op.get("release", [])),
        "recordings": len(started),
        "extends": len(extended),
    }


def run_verify(database_url: str) -> subprocess.CompletedProcess[str]:
    """`chronote-billing verify` against ``database_url``, as an operator runs it."""
    return subprocess.run(
        [str(CLI), "verify"],
        env={**os.environ, "CHRONOTE_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
