"""The ASGI application: API under /v1, Stripe webhooks, the portal under /portal, and the
operator's health, readiness and metrics endpoints."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import fastapi_offline
from alembic.script import ScriptDirectory
from fastapi import FastAPI, Header, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp

from chronote_billing import __version__
from chronote_billing.api import metrics, problems
from chronote_billing.api.observe import RequestObserver
from chronote_billing.api.responses import NOT_READY, declare_common_problems
from chronote_billing.api.responses import problems as declare
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
from chronote_billing.core import migrate
from chronote_billing.core.logs import configure_logging
from chronote_billing.portal import routes as portal_routes

DESCRIPTION = """
Chronote's billing service. Amounts are integers: credits in **millicredits** (1 credit =
1,000 = one minute of recorded meeting audio), money in the currency's minor unit.

Service clients authenticate with a scoped API key (`Authorization: Bearer cbk_...`) and may
act for a Discord user (`Chronote-Acting-User`), stating the guilds on which that user has
Manage Server (`Chronote-Manage-Guilds`). Every write takes an `Idempotency-Key` header: a
retry returns the first result; the same key with other parameters is `idempotency_conflict`.
Errors are `application/problem+json` (RFC 9457) with a stable `code`; each operation lists the
codes it can answer per status (`x-problem-codes`). Every response carries `X-Request-Id` (yours,
when you send one).
"""

MAX_BODY_BYTES = 1024 * 1024  # decision 0034
READINESS_TIMEOUT_SECONDS = 2.0


class ChronoteAPI(FastAPI):
    """FastAPI with the request observer outside Starlette's error middleware, so it sees and
    times every response, 500s included (decision 0035)."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestObserver(super().build_middleware_stack())


# Swagger UI's files as the fastapi-offline package ships them: /docs works without a CDN.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"


def _serve_docs_offline(app: FastAPI) -> None:
    app.mount("/docs/static", StaticFiles(directory=DOCS_ASSETS), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon.png",
        )


def create_app(container: Container | None = None) -> FastAPI:
    configure_logging()
    container = container or Container()
    sampler = metrics.ProcessSampler(container.db)

    def current(request: Request) -> Container:
        # Tests point a built app at another container; the routes follow app.state.
        found: Container = request.app.state.container
        return found

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Several workers: each keeps its own samples fresh for whichever worker is scraped.
        if metrics.multiprocess_mode():
            sampler.start()
        try:
            yield
        finally:
            sampler.stop()
            metrics.mark_this_process_exited()

    app = ChronoteAPI(
        title="Chronote Billing",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url=None,  # served below from local files
        redoc_url=None,
        max_body_size=MAX_BODY_BYTES,
        lifespan=lifespan,
    )
    app.state.container = container
    _serve_docs_offline(app)
    problems.install(app, page_errors=portal_routes.validation_page)

    @app.get("/healthz", tags=["health"], summary="Liveness: the process serves (no database)")
    async def healthz() -> dict[str, Any]:
        # On the event loop, touching nothing: it answers exactly when the loop is free.
        return {"status": "ok", "version": __version__}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Readiness: the database answers and its schema is at the migrations' head",
        responses=declare(NOT_READY),
    )
    async def readyz(request: Request) -> Response:
        ready_container = current(request)
        try:
            revisions = await asyncio.wait_for(
                run_in_threadpool(_schema_revisions, ready_container), READINESS_TIMEOUT_SECONDS
            )
        except TimeoutError:
            return _not_ready(f"the database did not answer within {READINESS_TIMEOUT_SECONDS:g} s")
        except Exception as exc:  # noqa: BLE001 - any failure to reach the database is "not ready"
            return _not_ready(f"the database is unreachable ({type(exc).__name__})")
        heads = _migration_heads()
        if revisions != heads:
            return _not_ready(
                f"the schema is at {', '.join(sorted(revisions)) or 'nothing'}, "
                f"the migrations at {', '.join(sorted(heads))}"
            )
        return JSONResponse(
            {"status": "ready", "version": __version__, "database": ready_container.db.dialect}
        )

    @app.get("/metrics", include_in_schema=False)
    def metrics_endpoint(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
        nonlocal sampler
        scraped = current(request)
        token = scraped.settings.metrics_token
        if not token:
            return problems.problem(
                404, "not_found", "Not found", "Metrics are off: set CHRONOTE_METRICS_TOKEN.", "/metrics"
            )
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return problems.problem(
                401,
                "unauthenticated",
                "Authentication required",
                "Send the metrics token as a bearer token.",
                "/metrics",
            )
        if sampler.db is not scraped.db:
            sampler = metrics.ProcessSampler(scraped.db)
        return Response(metrics.render(scraped, sampler), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/portal")

    for module in (ledger, usage, orgs, billing, receipts, runway, people, webhooks, notifications):
        app.include_router(module.router)
    portal_routes.install(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            app.openapi_schema = declare_common_problems(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _schema_revisions(container: Container) -> frozenset[str]:
    def read(session: Any) -> frozenset[str]:
        session.execute(text("select 1"))
        rows = session.execute(text("select version_num from alembic_version")).scalars()
        return frozenset(rows)

    return container.db.read(read)


@cache
def _migration_heads() -> frozenset[str]:
    return frozenset(ScriptDirectory(str(migrate.MIGRATIONS_DIR)).get_heads())


def _not_ready(detail: str) -> Response:
    return problems.problem(503, NOT_READY.code, NOT_READY.title, detail, "/readyz")
