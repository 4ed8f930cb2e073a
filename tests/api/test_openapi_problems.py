"""The OpenAPI document declares, for every operation, the problems it can answer (decision 0034):
401 and 403 where an API key is needed, 422 where there is input, 409 and a required
`Idempotency-Key` where the route takes one; each problem status with its codes and examples."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import routing
from fastapi.dependencies.models import Dependant

from chronote_billing.api import deps
from chronote_billing.api.app import create_app
from chronote_billing.api.responses import CODES_KEY, PROBLEM_MEDIA_TYPE, PROBLEM_REF
from chronote_billing.container import Container
from chronote_billing.core.db import Database

APP = create_app(Container(db=Database("sqlite://")))
DOCUMENT = APP.openapi()


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def calls(dependant: Dependant) -> set[Any]:
    found = {dependant.call}
    for child in dependant.dependencies:
        found |= calls(child)
    return found


def routes() -> Iterator[tuple[str, str, set[Any]]]:
    for context in routing.iter_route_contexts(APP.routes):
        route = context.route
        if isinstance(route, routing.APIRoute) and route.include_in_schema:
            for method in route.methods:
                yield method, context.path_format, calls(route.dependant)


def codes(operation: dict[str, Any], status: int) -> list[str]:
    return operation["responses"].get(str(status), {}).get(CODES_KEY, [])


@pytest.mark.parametrize(("method", "path", "operation"), list(operations()), ids=lambda v: str(v)[:60])
def test_each_operation_declares_the_problems_of_its_kind(
    method: str, path: str, operation: dict[str, Any]
) -> None:
    responses = operation["responses"]
    assert "500" not in responses, "a 500 is a bug, never part of the contract"
    if operation.get("security"):
        assert "unauthenticated" in codes(operation, 401)
        assert "permission_denied" in codes(operation, 403)
    if operation.get("parameters") or "requestBody" in operation:
        assert "validation_error" in codes(operation, 422)
    if "requestBody" in operation:
        assert "payload_too_large" in codes(operation, 413)
    for status, response in responses.items():
        if int(status) < 400:
            continue
        names = response[CODES_KEY]
        content = response["content"][PROBLEM_MEDIA_TYPE]
        assert content["schema"] == {"$ref": PROBLEM_REF}
        assert set(content["examples"]) == set(names)
        assert all(content["examples"][n]["value"]["status"] == int(status) for n in names)
        assert all(f"`{n}`" in response["description"] for n in names)


def test_routes_that_take_a_key_or_an_idempotency_key_declare_them() -> None:
    checked = 0
    for method, path, used in routes():
        operation = DOCUMENT["paths"][path][method.lower()]
        headers = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "header"}
        if deps.get_principal in used:
            assert operation.get("security"), (method, path)
            assert "unauthenticated" in codes(operation, 401)
            assert "permission_denied" in codes(operation, 403)
        if deps.idempotency_key in used:
            checked += 1
            assert headers["Idempotency-Key"]["required"] is True, (method, path)
            assert "idempotency_conflict" in codes(operation, 409), (method, path)
        else:
            assert "Idempotency-Key" not in headers, (method, path)
    assert checked >= 25  # every write


def test_the_validation_shapes_of_fastapi_are_gone_and_problem_is_a_component() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    assert "Problem" in schemas and "HTTPValidationError" not in schemas
    assert "HTTPValidationError" not in str(DOCUMENT)


def test_a_missing_idempotency_key_is_the_same_readable_problem(db: Database) -> None:
    from fastapi.testclient import TestClient

    container = Container(db=db)
    secret = db.write(lambda s: container.api_keys.create(s, "t", ["orgs:write"]).secret)
    response = TestClient(create_app(container)).post(
        "/v1/orgs",
        json={"name": "Acme"},
        headers={"Authorization": f"Bearer {secret}", "Chronote-Acting-User": "100000000000000009"},
    )
    body = response.json()
    assert response.status_code == 422 and body["code"] == "validation_error"
    assert (
        body["field"] == "Idempotency-Key"
        and body["detail"] == "Send an Idempotency-Key header with every write."
    )
