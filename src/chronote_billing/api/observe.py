"""The outermost ASGI middleware: request ids, one log line and the metrics of every request
(decisions 0035 and 0036).

It wraps Starlette's error middleware, so it sees every response, 500s included, and it is where
the error that Starlette re-raises after answering 500 ends: that error was logged once, with a
bounded traceback, by the API's handler for unexpected errors.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics

log = structlog.get_logger("chronote_billing.request")

REQUEST_ID_HEADER = b"x-request-id"
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")

# Keys the app sets in the request's state for this middleware to read.
API_KEY_ID = "api_key_id"
PROBLEM_CODE = "problem_code"


def request_id_of(scope: Scope) -> str:
    """The client's `X-Request-Id` when it is a sane token, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            if _REQUEST_ID.match(value):
                return value.decode("ascii")
            break
    return "req_" + secrets.token_hex(12)


def route_of(scope: Scope, status: int) -> str:
    """The matched route's template; never the raw path (bounded label and log values)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str):
        return template
    if str(scope.get("path", "")).startswith("/portal/static/"):
        return "/portal/static/{path}"
    return "unmatched" if status in (404, 405) else "other"


class RequestObserver:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_of(scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if not response_started:
                raise
            # Starlette answered 500 and re-raised for the server to log; the API's handler has
            # logged it already, with a bounded traceback.
        finally:
            seconds = time.perf_counter() - started
            route = route_of(scope, status)
            method = scope.get("method", "")
            problem_code = state.get(PROBLEM_CODE)
            metrics.observe_request(method, route, status, seconds, problem_code)
            log.info(
                "request",
                method=method,
                route=route,
                status=status,
                duration_ms=round(seconds * 1000, 2),
                api_key_id=state.get(API_KEY_ID),
                code=problem_code,
            )
            structlog.contextvars.reset_contextvars(**bound)
