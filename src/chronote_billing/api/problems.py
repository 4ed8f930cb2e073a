"""RFC 9457 problem details for every error the API returns, with a stable ``code``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from chronote_billing.core.db import classify_database_failure
from chronote_billing.core.errors import BillingError

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
    return JSONResponse(jsonable_encoder(body), status_code=status, media_type="application/problem+json")


def install(app: FastAPI) -> None:
    @app.exception_handler(BillingError)
    async def _billing_error(request: Request, exc: BillingError) -> JSONResponse:
        return problem(exc.status, exc.code, exc.title, exc.message, request.url.path, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"),
                "message": err.get("msg", ""),
            }
            for err in exc.errors()
        ]
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        detail = f"{first['field'] or 'request'}: {first['message']}"
        return problem(422, "validation_error", "Invalid request", detail, request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            # A body that is not even text (bad UTF-8) is bad JSON like any other.
            return problem(
                422,
                "validation_error",
                "Invalid request",
                "body: the request body is not valid JSON",
                request.url.path,
                errors=[{"field": "", "message": "the request body is not valid JSON"}],
            )
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return problem(
            exc.status_code, code, code.replace("_", " ").capitalize(), str(exc.detail), request.url.path
        )

    @app.exception_handler(DBAPIError)
    @app.exception_handler(psycopg.Error)
    async def _database_unavailable(request: Request, exc: Exception) -> HTMLResponse | JSONResponse:
        """A failover, restart or lock storm answers 503 with Retry-After, never a 500: the
        client retries the same request with the same key (decision 0050)."""
        code = classify_database_failure(exc)
        if code is None:
            raise exc  # any other database error is unexpected: the handler below answers
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
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path)
        return problem(
            500,
            "internal_error",
            "Internal error",
            "Something went wrong on our side; it was logged.",
            request.url.path,
        )
