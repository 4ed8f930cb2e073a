"""The ASGI application: API under /v1, Stripe webhooks, the portal under /portal."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from sqlalchemy import text

from chronote_billing import __version__
from chronote_billing.api import problems
from chronote_billing.api.routes import (
    billing,
    ledger,
    notifications,
    orgs,
    people,
    receipts,
    runway,
    usage,
    webhooks,
)
from chronote_billing.container import Container
from chronote_billing.portal import routes as portal_routes

DESCRIPTION = """
Chronote's billing service. Amounts are integers: credits in **millicredits** (1 credit =
1,000 = one minute of recorded meeting audio), money in the currency's minor unit.

Service clients authenticate with a scoped API key (`Authorization: Bearer cbk_...`) and may
act for a Discord user (`Chronote-Acting-User`), stating the guilds on which that user has
Manage Server (`Chronote-Manage-Guilds`). Every write takes an `Idempotency-Key` header: a
retry returns the first result; the same key with other parameters is `idempotency_conflict`.
Errors are `application/problem+json` (RFC 9457) with a stable `code`.
"""


def create_app(container: Container | None = None) -> FastAPI:
    app = FastAPI(
        title="Chronote Billing",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.container = container or Container()
    problems.install(app)

    @app.get("/healthz", tags=["health"], summary="Liveness and database reachability")
    def healthz() -> dict[str, Any]:
        app.state.container.db.read(lambda s: s.execute(text("select 1")).scalar())
        return {"status": "ok", "version": __version__, "database": app.state.container.db.dialect}

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/portal")

    for module in (ledger, usage, orgs, billing, receipts, runway, people, webhooks, notifications):
        app.include_router(module.router)
    portal_routes.install(app)
    return app
