"""Errors cost nothing (decision 0035): one JSON line per request with its id, route, status,
duration and API key id; unexpected errors logged once, off the event loop, with a bounded
traceback and no local variables; a burst of failing requests leaves /healthz fast, measured
over a real socket."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from chronote_billing.api.app import create_app
from chronote_billing.container import Container
from chronote_billing.core.db import Database
from chronote_billing.core.logs import TRACEBACK_MAX_CHARS, bounded_traceback

SECRET_LOCAL = "this-local-must-never-be-logged-" * 1000  # 32 KB in every failing frame


def fail_deeply(depth: int) -> None:
    payload = SECRET_LOCAL  # noqa: F841 - a large local in every frame, as real code has
    if depth == 0:
        raise RuntimeError("deliberate failure at the bottom of a deep stack")
    fail_deeply(depth - 1)


def app_with_a_failing_route(db: Database) -> FastAPI:
    app = create_app(Container(db=db))

    @app.get("/boom/{n}")
    def boom(n: int) -> dict[str, Any]:
        fail_deeply(120)
        return {}

    return app


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def server(db: Database) -> Iterator[str]:
    """The app served by uvicorn in a thread, on a free port of its own."""
    app = app_with_a_failing_route(db)
    sock = socket.socket()
    # uvicorn sets no TCP_NODELAY on sockets handed to it (it does on those it binds): without
    # it, every response waits 40 ms for the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_bounded_traceback_has_no_locals_and_keeps_the_error() -> None:
    try:
        fail_deeply(500)
    except RuntimeError as exc:
        text = bounded_traceback(exc)
    assert len(text) <= TRACEBACK_MAX_CHARS + 20
    assert "deliberate failure" in text and "this-local-must-never" not in text
    assert text.count("fail_deeply") <= 31


BURST = """
import json, sys, threading, httpx
server = sys.argv[1]
lock = threading.Lock()

def burst(worker):
    with httpx.Client(base_url=server, timeout=30) as client:
        for i in range(25):
            r = client.get(f"/boom/{i}", headers={"X-Request-Id": f"burst-{worker}-{i}"})
            body = r.json()
            line = json.dumps({"status": r.status_code, "code": body.get("code"),
                               "request_id": body.get("request_id"), "header": r.headers.get("x-request-id")})
            with lock:
                print(line, flush=True)

threads = [threading.Thread(target=burst, args=(w,)) for w in range(8)]
for t in threads: t.start()
for t in threads: t.join()
"""


POLL = """
import json, os, sys, time, httpx
server, stop_file = sys.argv[1], sys.argv[2]
latencies = []
with httpx.Client(base_url=server, timeout=10) as client:
    client.get("/healthz")
    print("ready", flush=True)
    while not os.path.exists(stop_file):
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        latencies.append(time.perf_counter() - started)
        time.sleep(0.005)
print(json.dumps(latencies), flush=True)
"""


def burst_with_health_checks(server: str, stop_file: Path) -> tuple[float, int, list[dict[str, Any]]]:
    """One burst of 200 failing requests (8 clients) while /healthz is polled; (p99 seconds,
    health checks made, the burst's answers). Both come from processes of their own, as they would
    from other machines: their clients do not compete with the server for its interpreter's lock."""
    poller = subprocess.Popen(
        [sys.executable, "-c", POLL, server, str(stop_file)], stdout=subprocess.PIPE, text=True
    )
    assert poller.stdout is not None and poller.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    burst = subprocess.run(
        [sys.executable, "-c", BURST, server], capture_output=True, text=True, timeout=120, check=True
    )
    stop_file.write_text("done")
    latencies = sorted(json.loads(poller.communicate(timeout=30)[0]))
    answers = [json.loads(line) for line in burst.stdout.splitlines()]
    return latencies[int(len(latencies) * 0.99) - 1], len(latencies), answers


def test_a_burst_of_200_failures_leaves_healthz_p99_under_50ms(server: str, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The machine is shared: another process's work can stall any one run by tens of
    # milliseconds, so a run is tried up to three times. What this guards against, errors rendered
    # on the event loop (seconds each), fails every run.
    runs: list[tuple[float, int]] = []
    for attempt in range(3):
        capsys.readouterr()
        p99, checks, answers = burst_with_health_checks(server, tmp_path / f"stop-{attempt}")
        runs.append((p99, checks))
        assert len(answers) == 200 and checks >= 20
        assert all(a["status"] == 500 for a in answers)
        assert all(a["code"] == "internal_error" and a["request_id"].startswith("burst-") for a in answers)
        assert all(a["header"] == a["request_id"] for a in answers)

        logged = lines(capsys.readouterr().err)
        errors = [line for line in logged if line["event"] == "unhandled_error"]
        assert len(errors) == 200  # once each: the re-raise after the 500 is not logged again
        assert all(len(json.dumps(line)) < TRACEBACK_MAX_CHARS + 2_000 for line in errors)
        assert not any("this-local-must-never" in json.dumps(line) for line in logged)
        requests = [line for line in logged if line["event"] == "request" and line["route"] == "/boom/{n}"]
        assert len(requests) == 200 and {line["status"] for line in requests} == {500}
        assert {line["request_id"] for line in errors} == {line["request_id"] for line in requests}
        if p99 < 0.050:
            return
    pytest.fail(
        "/healthz p99 during each burst: " + ", ".join(f"{p * 1000:.1f} ms over {n}" for p, n in runs)
    )


def test_one_line_per_request_with_its_id_route_status_duration_and_key_id(db: Database, capsys) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    container = Container(db=db)
    key = db.write(lambda s: container.api_keys.create(s, "log", ["accounts:read"]))
    client = TestClient(create_app(container))
    capsys.readouterr()
    kept = client.get("/v1/catalog", headers={"X-Request-Id": "client-chosen.id:1"})
    replaced = client.get(
        "/v1/holds/hold_nope", headers={"X-Request-Id": "has spaces", "Authorization": f"Bearer {key.secret}"}
    )
    assert kept.headers["x-request-id"] == "client-chosen.id:1"
    assert replaced.headers["x-request-id"].startswith("req_")
    logged = [line for line in lines(capsys.readouterr().err) if line["event"] == "request"]
    assert [line["route"] for line in logged] == ["/v1/catalog", "/v1/holds/{hold_id}"]
    first, second = logged
    assert first["request_id"] == "client-chosen.id:1" and first["status"] == 200 and first["method"] == "GET"
    assert first["api_key_id"] is None and isinstance(first["duration_ms"], float)
    assert second["status"] == 422 and second["code"] == "validation_error"
    assert second["api_key_id"] == key.id
    assert key.secret not in json.dumps(logged)
    assert {"timestamp", "level", "logger"} <= set(first)
