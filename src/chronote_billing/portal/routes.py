"""The portal under /portal: its session cookie, static files and routers, in the order they
match, and the pages for addresses that do not exist.

The routes themselves live by area: ``sign_in_routes``, ``personal_routes``, ``server_routes``,
``org_routes`` and ``billing_extras``; what they share is in ``responses`` (pages, error pages,
form actions), ``billed_accounts`` (which account a page bills) and ``purchases`` (Stripe).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.middleware.sessions import SessionMiddleware
from starlette.staticfiles import StaticFiles

from chronote_billing.core.errors import BillingError, NotFound, ValidationFailed
from chronote_billing.core.validation import printable

from . import auth, billing_extras, org_routes, personal_routes, server_routes, sign_in_routes
from .auth import current_user
from .responses import HERE, error_fragment, error_page, is_htmx

router = APIRouter(prefix="/portal", include_in_schema=False)

SESSION_MAX_AGE = 14 * 24 * 3600


def install(app: FastAPI) -> None:
    """Mount the portal's static files and pages on the application."""
    settings = app.state.container.settings
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.session_secret,
        session_cookie="chronote_portal",
        max_age=SESSION_MAX_AGE,
        same_site="lax",
        https_only=settings.public_base_url.startswith("https://"),
    )
    app.mount("/portal/static", StaticFiles(directory=HERE / "static"), name="portal_static")
    app.include_router(auth.router)
    app.include_router(billing_extras.router)
    app.include_router(sign_in_routes.router)
    app.include_router(personal_routes.router)
    app.include_router(server_routes.router)
    app.include_router(org_routes.router)
    app.include_router(router)  # last: its catch-all answers every other /portal address


def validation_page(request: Request, exc: RequestValidationError) -> Response | None:
    """Portal addresses whose ids are malformed are pages that do not exist (decision 0034);
    other bad input is a readable error. None for requests that are not the portal's."""
    if not request.url.path.startswith("/portal"):
        return None
    in_path = any(tuple(err.get("loc", ()))[:1] == ("path",) for err in exc.errors())
    error: BillingError = (
        NotFound("There is no such page: the address does not name a server, organization or member.")
        if in_path
        else ValidationFailed("Some of what was sent could not be read. Go back and check the form.")
    )
    user = current_user(request)
    if is_htmx(request) and not in_path:
        return error_fragment(request, error)
    return error_page(request, user, error)


@router.get("/{path:path}")
def portal_not_found(request: Request, path: str) -> Response:
    return error_page(
        request, current_user(request), NotFound(f"There is no portal page '/portal/{printable(path)}'.")
    )
