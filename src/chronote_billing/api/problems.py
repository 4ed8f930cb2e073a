"""RFC 9457 problem details for every error the API returns, with a stable ``code``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from chronote_billing.core.db import classify_database_failure
from chronote_billing.core.errors import BillingError
from chronote_billing.core.validation import scrub

from .observe import PROBLEM_CODE

log = structlog.get_logger(__name__)

PROBLEM_BASE = "https://billing.chronote.gg/problems/"
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}
# What a missing header means, in words (the header is required by the OpenAPI document).
_MISSING_HEADER = {"Idempotency-Key": "Send an Idempotency-Key header with every write."}
_LOCATIONS = ("body", "header", "query", "path", "cookie")

# A request the pages answer themselves (the portal renders its own error pages).
PageErrors = Callable[[Request, RequestValidationError], Response | None]


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    instance: str,
    extra: Mapping[str, Any] | None = None,
    **more: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": instance,
    }
    # Details never overwrite the standard members (an error's own `status` detail, say).
    body.update({k: v for k, v in {**(extra or {}), **more}.items() if k not in body})
    # Messages may quote what the client sent; NUL and lone surrogates cannot be rendered.
    return JSONResponse(
        scrub(jsonable_encoder(body)), status_code=status, media_type="application/problem+json"
    )


def _noted(request: Request, response: JSONResponse, code: str) -> JSONResponse:
    setattr(request.state, PROBLEM_CODE, code)
    return response


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    return ".".join(parts)


def validation_problem(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        field = _field(loc)
        message = str(err.get("msg", ""))
        if loc[:1] == ("header",) and err.get("type") == "missing" and field in _MISSING_HEADER:
            message = _MISSING_HEADER[field]
        errors.append({"field": field, "message": message})
    first = errors[0] if errors else {"field": "", "message": "invalid request"}
    if first["message"] in _MISSING_HEADER.values():
        detail = first["message"]
    else:
        detail = f"{first['field'] or 'request'}: {first['message']}"
    return _noted(
        request,
        problem(
            422,
            "validation_error",
            "Invalid request",
            detail,
            request.url.path,
            field=first["field"],
            errors=errors,
        ),
        "validation_error",
    )


def install(app: FastAPI, page_errors: PageErrors | None = None) -> None:
    @app.exception_handler(BillingError)
    async def _billing_error(request: Request, exc: BillingError) -> JSONResponse:
        return _noted(
            request,
            problem(exc.status, exc.code, exc.title, exc.message, request.url.path, exc.details),
            exc.code,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        if page_errors is not None:
            page = page_errors(request, exc)
            if page is not None:
                return page
        return validation_problem(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            # A body that is not even text (bad UTF-8) is bad JSON like any other.
            return _noted(
                request,
                problem(
                    422,
                    "validation_error",
                    "Invalid request",
                    "body: the request body is not valid JSON",
                    request.url.path,
                    errors=[{"field": "", "message": "the request body is not valid JSON"}],
                ),
                "validation_error",
            )
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return _noted(
            request,
            problem(
                exc.status_code, code, code.replace("_", " ").capitalize(), str(exc.detail), request.url.path
            ),
            code,
        )

    @app.exception_handler(DBAPIError)
    @app.exception_handler(psycopg.Error)
    def _database_unavailable(request: Request, exc: Exception) -> HTMLResponse | JSONResponse:
        """A failover, restart or lock storm answers 503 with Retry-After, never a 500: the
        client retries the same request with the same key (decision 0050). Synchronous, as the
        handler of unexpected errors, for the same reason (0035)."""
        code = classify_database_failure(exc)
        if code is None:
            return _unexpected_error(request, exc)  # any other database error is unexpected
        log.warning(
            code,
            path=request.url.path,
            error=(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300],
        )
        headers = {"Retry-After": "1"}
        if request.url.path.startswith("/portal"):
            page = "<!doctype html><title>Chronote Billing</title><p>Billing is briefly unavailable; please try again in a few seconds.</p>"
            return HTMLResponse(page, status_code=503, headers=headers)
        if code == "database_busy":
            title, detail = "Database busy", "Too many concurrent changes to the same records."
        else:
            title, detail = "Database unavailable", "The database is failing over or restarting."
        response = problem(
            503,
            code,
            title,
            detail + " Retry the same request with the same Idempotency-Key after Retry-After seconds.",
            request.url.path,
        )
        response.headers.update(headers)
        return _noted(request, response, code)

    # Synchronous on purpose: Starlette runs it on the thread pool, so rendering the traceback
    # never holds the event loop (decision 0035). The traceback is bounded and has no locals.
    @app.exception_handler(Exception)
    def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _unexpected_error(request, exc)


def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A 500 with a bounded log line; called on the thread pool, never on the event loop."""
    request_id = request.scope.get("state", {}).get("request_id")
    log.error("unhandled_error", path_template=_template(request), exc_info=exc)
    return _noted(
        request,
        problem(
            500,
            "internal_error",
            "Internal error",
            "Something went wrong on our side; it was logged.",
            request.url.path,
            request_id=request_id,
        ),
        "internal_error",
    )


def _template(request: Request) -> str | None:
    route = request.scope.get("route")
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) else None
