"""The problem responses each operation declares in the OpenAPI document (decision 0034).

Routes list the domain errors they can raise, ``responses=problems(NotFound, RecordingNotOpen)``;
what every operation of a kind can answer is added to the document from the operation itself
(:func:`declare_common_problems`): 401 and 403 where an API key is required, 422 where there is
input, 409 ``idempotency_conflict`` and a required ``Idempotency-Key`` where the route takes one,
413 where there is a body. Each status carries the problem+json schema, one example per code, and
its codes in the description and in an ``x-problem-codes`` extension, which the tests read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chronote_billing.core.errors import (
    BillingError,
    IdempotencyConflict,
    PermissionDenied,
    Unauthenticated,
    ValidationFailed,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
CODES_KEY = "x-problem-codes"


class Problem(BaseModel):
    """An RFC 9457 problem; errors may add members such as ``field`` or ``available``."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable error code, e.g. insufficient_credits.")
    instance: str


@dataclass(frozen=True)
class ProblemCode:
    """One code a route can answer, with its status and title."""

    status: int
    code: str
    title: str

    @classmethod
    def of(cls, error: type[BillingError]) -> ProblemCode:
        return cls(error.status, error.code, error.title)


Declared = type[BillingError] | ProblemCode | Iterable[type[BillingError] | ProblemCode]

# Codes that are not error classes of their own: chosen at run time, or made at the edge.
PAYLOAD_TOO_LARGE = ProblemCode(413, "payload_too_large", "Request body too large")
NOT_READY = ProblemCode(503, "not_ready", "Not ready")
# A database failing over, restarting or too busy to take the change (decision 0050).
DATABASE_UNAVAILABLE = ProblemCode(503, "database_unavailable", "Database unavailable")
DATABASE_BUSY = ProblemCode(503, "database_busy", "Database busy")
PAYMENT_PROVIDER_ERROR = ProblemCode(502, "payment_provider_error", "Payment provider error")

# The usage engine declines with the one reason all payers shared, or `usage_declined` when they
# differ (usage.service.UsageDeclined); plan gates are bad input (422).
USAGE_DECLINES: tuple[ProblemCode, ...] = (
    ProblemCode(402, "usage_declined", "Usage declined"),
    ProblemCode(402, "insufficient_credits", "Usage declined"),
    ProblemCode(402, "cap_reached", "Usage declined"),
    ProblemCode(402, "feature_limit_reached", "Usage declined"),
    ProblemCode(402, "authorization_revoked", "Usage declined"),
    ProblemCode(402, "authorization_expired", "Usage declined"),
    ProblemCode(402, "authorization_not_yet_valid", "Usage declined"),
    ProblemCode(422, "recording_too_long", "Not allowed by the plan"),
    ProblemCode(422, "capture_source_not_allowed", "Not allowed by the plan"),
)


def _codes(declared: Iterable[Any]) -> list[ProblemCode]:
    out: list[ProblemCode] = []
    for item in declared:
        if isinstance(item, ProblemCode):
            out.append(item)
        elif isinstance(item, type) and issubclass(item, BillingError):
            out.append(ProblemCode.of(item))
        else:
            out.extend(_codes(item))
    return out


def render(status: int, codes: Iterable[ProblemCode]) -> dict[str, Any]:
    """The response object of one status: schema, examples and codes."""
    unique: dict[str, ProblemCode] = {}
    for code in sorted(codes, key=lambda c: c.code):
        unique.setdefault(code.code, code)
    names = list(unique)
    examples = {
        name: {
            "summary": code.title,
            "value": {
                "type": "https://billing.chronote.gg/problems/" + name,
                "title": code.title,
                "status": status,
                "detail": f"{code.title}.",
                "code": name,
                "instance": "/v1/...",
            },
        }
        for name, code in unique.items()
    }
    return {
        "description": "Problem codes: " + ", ".join(f"`{n}`" for n in names),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}, "examples": examples}},
        CODES_KEY: names,
    }


def problems(*declared: Declared) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the problems its own rules can answer, grouped by status."""
    by_status: dict[int, list[ProblemCode]] = {}
    for code in _codes(declared):
        by_status.setdefault(code.status, []).append(code)
    return {status: render(status, codes) for status, codes in sorted(by_status.items())}


# ---------------------------------------------------------------------------- the document

UNAUTHENTICATED = ProblemCode.of(Unauthenticated)
PERMISSION_DENIED = ProblemCode.of(PermissionDenied)
VALIDATION_ERROR = ProblemCode.of(ValidationFailed)
IDEMPOTENCY_CONFLICT = ProblemCode.of(IdempotencyConflict)
IDEMPOTENCY_HEADER = "Idempotency-Key"


def declare_common_problems(document: dict[str, Any]) -> dict[str, Any]:
    """Add what every operation of its kind answers, and the Problem schema, to ``document``."""
    document.setdefault("components", {}).setdefault("schemas", {})["Problem"] = Problem.model_json_schema()
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            _declare_common(operation)
    # FastAPI's validation error shapes are no longer referenced: every 422 is a problem.
    for unused in ("HTTPValidationError", "ValidationError"):
        document["components"]["schemas"].pop(unused, None)
    return document


def _declare_common(operation: dict[str, Any]) -> None:
    params = operation.get("parameters", [])
    added: list[ProblemCode] = []
    if operation.get("security"):
        # Every operation behind a key reads the database, at least for the key (decision 0050).
        added += [UNAUTHENTICATED, PERMISSION_DENIED, DATABASE_UNAVAILABLE, DATABASE_BUSY]
    if params or "requestBody" in operation:
        added.append(VALIDATION_ERROR)
    if "requestBody" in operation:
        added.append(PAYLOAD_TOO_LARGE)
    for param in params:
        if param.get("in") == "header" and param.get("name") == IDEMPOTENCY_HEADER:
            param["required"] = True
            added.append(IDEMPOTENCY_CONFLICT)
    responses = operation["responses"]
    by_status: dict[int, list[ProblemCode]] = {}
    for status_key, response in responses.items():
        for name in response.get(CODES_KEY, []):
            title = response["content"][PROBLEM_MEDIA_TYPE]["examples"][name]["summary"]
            by_status.setdefault(int(status_key), []).append(ProblemCode(int(status_key), name, title))
    for code in added:
        by_status.setdefault(code.status, []).append(code)
    for status, codes in by_status.items():
        key = str(status)
        if key in responses and CODES_KEY not in responses[key]:
            # FastAPI's own 422 (HTTPValidationError) is replaced: our 422 is a problem.
            responses.pop(key)
        responses[key] = render(status, codes)
