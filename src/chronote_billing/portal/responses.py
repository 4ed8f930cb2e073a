"""How the portal answers: pages, error pages, HTMX fragments, redirects, and the two shapes every
route takes (a page built in one transaction; a form action run once per nonce).

The portal only translates: a form becomes a service call, a service result becomes a page.
Every page builds the signed-in person's principal and goes through the access rules; every
POST checks the session's CSRF token and derives its idempotency key from the form's nonce, so a
form submitted twice acts once. Errors become readable pages (403 naming the missing
permission, 404) or, for HTMX requests, an error fragment inside the form.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from chronote_billing.container import Container
from chronote_billing.core.errors import BillingError, PermissionDenied
from chronote_billing.core.validation import printable

from . import auth, forms, views
from .auth import SignedIn, check_csrf, container_of, csrf_token, current_user
from .presenters import FILTERS

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(FILTERS)
templates.env.globals["new_nonce"] = lambda: secrets.token_urlsafe(16)

PageBuilder = Callable[[Container, Session, SignedIn], dict[str, Any]]
Work = Callable[[Container, Session, SignedIn, forms.Form], Any]


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    user: SignedIn | None,
    status_code: int = 200,
) -> HTMLResponse:
    ctx = {
        "user": user,
        "csrf": csrf_token(request),
        "flash": request.session.pop("flash", None),
        "active": context.get("active", ""),
        **context,
    }
    if user is not None and "switcher" not in ctx:
        ctx["switcher"] = switcher_safely(request, user)
    return templates.TemplateResponse(request, template, ctx, status_code=status_code)


def switcher(c: Container, session: Session, user: SignedIn) -> dict[str, Any]:
    """Personal, the servers the person manages (from Discord), the organizations they administer."""
    return {"servers": list(user.guilds), "orgs": views.administered_orgs(c, session, user)}


def switcher_safely(request: Request, user: SignedIn) -> dict[str, Any]:
    c = container_of(request)
    try:
        return c.db.read(lambda s: switcher(c, s, user))
    except BillingError:
        return {"servers": list(user.guilds), "orgs": []}


def readable_error(
    request: Request, exc: BillingError, form: forms.Form | None = None
) -> tuple[str, str | None]:
    """The message and the missing permission in a person's words (decision 0041): accounts,
    servers and organizations by name, roles as the portal says them, fields by their labels."""
    message = form.readable(exc) if form is not None else exc.message
    missing = exc.details.get("missing_permission")
    if isinstance(exc, PermissionDenied) and missing is not None:
        c = container_of(request)
        try:
            worded = c.db.read(lambda s: views.denial(c, s, exc))
        except BillingError:
            worded = None
        if worded is not None:
            message, missing = worded
    if missing:
        missing = str(missing).replace("billing_admin", "billing admin")
    return message, missing


def error_page(request: Request, user: SignedIn | None, exc: BillingError) -> HTMLResponse:
    status = exc.status if exc.status >= 400 else 400
    template = {403: "403.html", 404: "404.html"}.get(status, "error.html")
    message, missing = readable_error(request, exc)
    # Messages may quote what was sent (an address, a field); never a control character.
    context = {"error": exc, "message": printable(message, limit=500), "missing": missing, "title": exc.title}
    return render(request, template, context, user, status_code=status)


def error_fragment(request: Request, exc: BillingError, form: forms.Form | None = None) -> HTMLResponse:
    """What an HTMX form swaps into its error box, or (``X-Error-Field``) beside the field it is
    about; an earlier success notice is cleared. The status stays the error's own."""
    message, missing = readable_error(request, exc, form)
    context = {"message": printable(message, limit=500), "missing": missing, "title": exc.title}
    response = templates.TemplateResponse(
        request, "partials/form_error.html", context, status_code=exc.status if exc.status >= 400 else 400
    )
    field = exc.details.get("field")
    if isinstance(field, str) and field.replace("_", "").isalnum():
        response.headers["X-Error-Field"] = field
    return response


def go(request: Request, url: str) -> Response:
    """After a successful action: HTMX follows HX-Redirect, a plain form a 303."""
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def login_redirect(request: Request) -> Response:
    target = "/portal/login?next=" + quote(request.url.path)
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def page(request: Request, template: str, build: PageBuilder, active: str) -> Response:
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    c = container_of(request)

    def work(session: Session) -> dict[str, Any]:
        return {**build(c, session, user), "switcher": switcher(c, session, user), "active": active}

    try:
        context = c.db.write(work)
    except BillingError as exc:
        return error_page(request, user, exc)
    return render(request, template, context, user)


Flash = str | dict[str, str]


async def act(
    request: Request,
    action: str,
    work: Work,
    done: Callable[[Any], str],
    flash: Flash | Callable[[Any], Flash] | None = None,
    refresh_guilds: bool = False,
) -> Response:
    """Run one form action: CSRF, nonce-derived idempotency key, one transaction, then redirect."""
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    c = container_of(request)
    form: forms.Form | None = None
    try:
        data: FormData = await request.form()
        check_csrf(request, str(data.get("csrf_token") or "") or None)
        if refresh_guilds:
            await auth.refresh_guilds_if_stale(request)
            user = current_user(request) or user
        form = forms.Form(data, action, user.user_id)
        signed_in, this_form = user, form
        result = await run_in_threadpool(c.db.write, lambda s: work(c, s, signed_in, this_form))
    except BillingError as exc:
        if is_htmx(request):
            return error_fragment(request, exc, form)
        return error_page(request, user, exc)
    if flash:
        request.session["flash"] = flash(result) if callable(flash) else flash
    return go(request, done(result))
