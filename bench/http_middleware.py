"""What the request middleware (request id, log line, metrics; decisions 0035 and 0036) costs
per request, on /healthz, with and without it.

Two measures, in alternating rounds (the fastest round and the median are printed: on a shared
machine the fastest round is the one least disturbed by other work):
- in process: the ASGI application called directly, no network; the middleware's own CPU time;
- over a socket: uvicorn serving on a free port, one keep-alive client in another process.

    .venv/bin/python bench/http_middleware.py --requests 3000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import uvicorn

from chronote_billing.api.app import ChronoteAPI, create_app
from chronote_billing.container import Container
from chronote_billing.core.db import Database

CLIENT = """
import sys, time, httpx
url, n = sys.argv[1], int(sys.argv[2])
with httpx.Client(base_url=url) as c:
    for _ in range(200): c.get("/healthz")
    t = time.perf_counter()
    for _ in range(n): c.get("/healthz")
    print((time.perf_counter() - t) / n)
"""


def app(observed: bool) -> Any:
    application = create_app(Container(db=Database("sqlite://")))
    if not observed:
        # The same application with the stack FastAPI builds on its own.
        application.build_middleware_stack = lambda: super(ChronoteAPI, application).build_middleware_stack()  # type: ignore[method-assign]
    return application


async def in_process(application: Any, n: int) -> float:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "root_path": "",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: dict[str, Any]) -> None:
        return None

    for _ in range(200):
        await application(dict(scope), receive, send)
    started = time.perf_counter()
    for _ in range(n):
        await application(dict(scope), receive, send)
    return (time.perf_counter() - started) / n


def over_socket(application: Any, n: int) -> float:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            application, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        out = subprocess.run(
            [sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}", str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        return float(out.stdout.strip())
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.stderr = io.StringIO()  # the request lines themselves are part of the cost, not the output
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for observed in (False, True):
            label = "with" if observed else "without"
            application = app(observed)
            results.setdefault(f"in_process_{label}", []).append(
                asyncio.run(in_process(application, args.requests))
            )
            results.setdefault(f"socket_{label}", []).append(over_socket(app(observed), args.requests))
    for measure in ("in_process", "socket"):
        for summary, pick in (("min", min), ("median", statistics.median)):
            without = pick(results[f"{measure}_without"]) * 1e6
            with_ = pick(results[f"{measure}_with"]) * 1e6
            print(
                f"case={measure} rounds={summary} healthz_us_without={without:.1f} healthz_us_with={with_:.1f} "
                f"middleware_us={with_ - without:.1f}",
                file=sys.__stdout__,
            )


if __name__ == "__main__":
    main()
