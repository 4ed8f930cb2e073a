"""Portal pages and form actions under /portal.

The portal only translates: a form becomes a service call, a service result becomes a page.
Every page builds the signed-in person's principal and goes through the access rules; every
POST checks the session's CSRF token and derives its idempotency key from the form's nonce, so a
form submitted twice acts once. Errors become readable pages (403 naming the missing
permission, 404) or, for HTMX requests, an error fragment inside the form.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware.sessions import SessionMiddleware
from starlette.staticfiles import StaticFiles

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.balances import service as balances
from chronote_billing.catalog.service import load_catalog
from chronote_billing.container import Container
from chronote_billing.core.errors import BillingError, NotFound, PermissionDenied, ValidationFailed
from chronote_billing.core.validation import AuthorizationId, CheckoutSessionId, DiscordId, OrgId, printable
from chronote_billing.orgs.models import ROLES
from chronote_billing.stripe_sync.errors import PlanChangeNotSupported
from chronote_billing.stripe_sync.schemas import CheckoutStatusView, PlanChangePreview

from . import auth, forms, presenters, views
from .auth import SignedIn, check_csrf, container_of, csrf_token, current_user, demo_available
from .extra_parts import auto_recharge_request
from .presenters import FILTERS

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(FILTERS)
templates.env.globals["new_nonce"] = lambda: secrets.token_urlsafe(16)

router = APIRouter(prefix="/portal", include_in_schema=False)

SESSION_MAX_AGE = 14 * 24 * 3600

PageBuilder = Callable[[Container, Session, SignedIn], dict[str, Any]]
Work = Callable[[Container, Session, SignedIn, forms.Form], Any]


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
    from . import billing_extras  # its routes come before this module's catch-all

    app.include_router(auth.router)
    app.include_router(billing_extras.router)
    app.include_router(router)


# ---------------------------------------------------------------------------- rendering


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


# ---------------------------------------------------------------------------- back from Checkout


def confirm_return(
    request: Request, user: SignedIn, session_id: str, resolve: Resolve
) -> CheckoutStatusView | None:
    """Ask the billing service how a checkout ended and apply it now (decision 0040). Stripe
    being slow or unreachable is not an error here: the page shows the payment as pending."""
    if not CHECKOUT_ID.match(session_id):
        return None
    c = container_of(request)
    account_id = c.db.write(lambda s: resolve(c, s, user).id)
    try:
        return c.billing.confirm_checkout(user.principal, account_id, session_id)
    except NotFound:
        return None
    except BillingError:
        return CheckoutStatusView(
            session_id=session_id,
            account_id=account_id,
            mode="",
            state="pending",
            plan=None,
            plan_name=None,
            pack=None,
            credits=None,
            message="Payment pending: Stripe has not confirmed it yet. This page updates by itself.",
        )


def billing_page(
    request: Request, template: str, build: PageBuilder, active: str, resolve: Resolve, page_path: str
) -> Response:
    """A billing page; back from Checkout (``?checkout=<session id>``) it first confirms the
    payment, and says so at the top."""
    user = current_user(request)
    session_id = request.query_params.get("checkout")
    if user is None or not session_id:
        return page(request, template, build, active)
    try:
        status = confirm_return(request, user, session_id, resolve)
    except BillingError as exc:
        return error_page(request, user, exc)
    extra = {"checkout": status, "checkout_poll": f"{page_path}/checkout/{session_id}?n=1"}
    return page(request, template, lambda c, s, u: {**build(c, s, u), **extra}, active)


def checkout_status(
    request: Request, session_id: str, build: PageBuilder, resolve: Resolve, page_path: str
) -> Response:
    """What the pending notice polls: the notice again while Stripe has not confirmed, then
    "Payment received" with the plan and credit panels swapped in place (no reload)."""
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    c = container_of(request)
    try:
        polls = max(1, min(POLL_LIMIT, int(request.query_params.get("n") or 1)))
    except ValueError:
        polls = 1
    try:
        status = confirm_return(request, user, session_id, resolve)
        signed_in = user
        context = (
            c.db.write(lambda s: build(c, s, signed_in)) if status and status.state == "complete" else {}
        )
    except BillingError as exc:
        return error_fragment(request, exc)
    context |= {
        "checkout": status,
        "checkout_poll": f"{page_path}/checkout/{session_id}?n={polls + 1}" if polls < POLL_LIMIT else None,
        "oob": True,
        "user": user,
        "csrf": csrf_token(request),
    }
    return templates.TemplateResponse(request, "partials/checkout_status.html", context)


# ---------------------------------------------------------------------------- sign-in


@router.get("")
@router.get("/")
def portal_home(request: Request) -> Response:
    if current_user(request) is None:
        return RedirectResponse("/portal/login", status_code=303)
    return RedirectResponse("/portal/personal/billing", status_code=303)


LOGIN_ERRORS = {
    "discord_failed": "Discord sign-in did not complete. Please try again.",
    "discord_not_configured": "Discord sign-in is not configured on this server.",
}


@router.get("/login")
def login_page(request: Request) -> Response:
    settings = container_of(request).settings
    if current_user(request) is not None:
        return RedirectResponse(auth.safe_next(request.query_params.get("next")), status_code=303)
    context = {
        "next": auth.safe_next(request.query_params.get("next")),
        "discord": bool(settings.discord_client_id),
        "demo": demo_available(settings),
        "demo_users": [
            (key, identity[1], [name for _, name in identity[2]])
            for key in auth.demo_keys()
            if (identity := auth.demo_identity(key))
        ]
        if demo_available(settings)
        else [],
        "login_error": LOGIN_ERRORS.get(request.query_params.get("error", "")),
    }
    return render(request, "login.html", context, None)


@router.post("/login/demo")
async def login_demo(request: Request) -> Response:
    if not demo_available(container_of(request).settings):
        return error_page(request, None, NotFound("Demo sign-in is not available on this server."))
    data = await request.form()
    try:
        check_csrf(request, str(data.get("csrf_token") or "") or None)
        identity = auth.demo_identity(str(data.get("who") or ""))
        if identity is None:
            raise ValidationFailed("Pick one of the demo people.", field="who")
    except BillingError as exc:
        return error_page(request, None, exc)
    user_id, name, guilds = identity
    target = auth.safe_next(str(data.get("next") or ""))
    await run_in_threadpool(auth.sign_in, request, user_id, name, guilds)
    return RedirectResponse(target, status_code=303)


@router.post("/logout")
async def logout(request: Request) -> Response:
    data = await request.form()
    try:
        check_csrf(request, str(data.get("csrf_token") or "") or None)
    except BillingError as exc:
        return error_page(request, current_user(request), exc)
    request.session.clear()
    return RedirectResponse("/portal/login", status_code=303)


# ---------------------------------------------------------------------------- personal


PERSONAL = "/portal/personal/billing"


@router.get("/personal/billing")
def personal_billing(request: Request) -> Response:
    return billing_page(
        request, "personal_billing.html", views.personal_billing, "personal", _personal, PERSONAL
    )


@router.get("/personal/billing/checkout/{session_id}")
def personal_checkout_status(request: Request, session_id: CheckoutSessionId) -> Response:
    return checkout_status(request, session_id, views.personal_billing, _personal, PERSONAL)


@router.post("/personal/billing/funding-order")
async def personal_funding_order(request: Request) -> Response:
    """Reorder funding sources; HTMX swaps the list in place (or shows why not inside it)."""
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    c = container_of(request)
    signed_in = user

    def work(s: Session, form: forms.Form) -> dict[str, Any]:
        views.personal_account(c, s, signed_in)
        c.usage.set_default_order(s, signed_in.user_id, form.values("order"), idempotency_key=form.key())
        return views.funding_part(c, s, signed_in)

    error: str | None = None
    try:
        data = await request.form()
        check_csrf(request, str(data.get("csrf_token") or "") or None)
        form = forms.Form(data, "funding.order", user.user_id)
        context = await run_in_threadpool(c.db.write, lambda s: work(s, form))
    except BillingError as exc:
        if not is_htmx(request):
            return error_page(request, user, exc)
        error = exc.message
        context = await run_in_threadpool(c.db.read, lambda s: views.funding_part(c, s, signed_in))
    if not is_htmx(request):
        request.session["flash"] = "Default order saved."
        return RedirectResponse(PERSONAL, status_code=303)
    context |= {"funding_error": error, "csrf": csrf_token(request)}
    return templates.TemplateResponse(request, "partials/funding.html", context)


# ---------------------------------------------------------------------------- servers


def server_url(guild_id: str) -> str:
    return f"/portal/server/{guild_id}/billing"


@router.get("/server/{guild_id}/billing")
def server_billing(request: Request, guild_id: DiscordId) -> Response:
    return billing_page(
        request,
        "server_billing.html",
        lambda c, s, u: views.server_billing(c, s, u, guild_id),
        f"server:{guild_id}",
        _server(guild_id),
        server_url(guild_id),
    )


@router.get("/server/{guild_id}/billing/checkout/{session_id}")
def server_checkout_status(request: Request, guild_id: DiscordId, session_id: CheckoutSessionId) -> Response:
    return checkout_status(
        request,
        session_id,
        lambda c, s, u: views.server_billing(c, s, u, guild_id),
        _server(guild_id),
        server_url(guild_id),
    )


# ---------------------------------------------------------------------------- organizations


def org_url(org_id: str, tab: str = "billing") -> str:
    base = f"/portal/org/{org_id}/billing"
    return base if tab == "billing" else f"{base}/{tab}"


@router.get("/orgs/new")
def org_new_page(request: Request) -> Response:
    return page(request, "org_new.html", views.new_org, "org:new")


@router.post("/orgs/new")
async def org_create(request: Request) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        name = form.text("name", "Organization name")
        return c.orgs.create_org(s, actor_user_id=user.user_id, name=name, idempotency_key=form.key())

    return await act(
        request,
        "org.create",
        work,
        lambda org: org_url(org.id),
        lambda org: f"Organization {org.name} created.",
    )


@router.get("/org/{org_id}/billing")
def org_billing(request: Request, org_id: OrgId) -> Response:
    return billing_page(
        request,
        "org_billing.html",
        lambda c, s, u: views.org_billing(c, s, u, org_id),
        f"org:{org_id}",
        _org(org_id),
        org_url(org_id),
    )


@router.get("/org/{org_id}/billing/checkout/{session_id}")
def org_checkout_status(request: Request, org_id: OrgId, session_id: CheckoutSessionId) -> Response:
    return checkout_status(
        request, session_id, lambda c, s, u: views.org_billing(c, s, u, org_id), _org(org_id), org_url(org_id)
    )


@router.get("/org/{org_id}/billing/members")
def org_members(request: Request, org_id: OrgId) -> Response:
    return page(
        request, "org_members.html", lambda c, s, u: views.org_members(c, s, u, org_id), f"org:{org_id}"
    )


@router.get("/org/{org_id}/billing/authorizations")
def org_authorizations(request: Request, org_id: OrgId) -> Response:
    return page(
        request,
        "org_authorizations.html",
        lambda c, s, u: views.org_authorizations(c, s, u, org_id),
        f"org:{org_id}",
    )


@router.post("/org/{org_id}/billing/members/add")
async def org_member_add(request: Request, org_id: OrgId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        member = c.orgs.add_member(
            s,
            actor_user_id=user.user_id,
            org_id=org_id,
            user_id=form.text("user_id", "Discord user id"),
            role=form.choice("role", ROLES, "Role"),
            idempotency_key=form.key(),
        )
        return member, c.orgs.subject_name(s, "member", member.user_id)

    return await act(
        request,
        "org.member_add",
        work,
        lambda _: org_url(org_id, "members"),
        lambda r: f"Added {r[1]} as {presenters.role_label(r[0].role).lower()}.",
    )


@router.post("/org/{org_id}/billing/members/{member_id}/role")
async def org_member_role(request: Request, org_id: OrgId, member_id: DiscordId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        member = c.orgs.set_role(
            s,
            actor_user_id=user.user_id,
            org_id=org_id,
            user_id=member_id,
            role=form.choice("role", ROLES, "Role"),
            idempotency_key=form.key(),
        )
        return member, c.orgs.subject_name(s, "member", member.user_id)

    return await act(
        request,
        "org.member_role",
        work,
        lambda _: org_url(org_id, "members"),
        lambda r: f"{r[1]} is now {presenters.role_label(r[0].role).lower()}.",
    )


@router.post("/org/{org_id}/billing/members/{member_id}/remove")
async def org_member_remove(request: Request, org_id: OrgId, member_id: DiscordId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        member = c.orgs.remove_member(
            s, actor_user_id=user.user_id, org_id=org_id, user_id=member_id, idempotency_key=form.key()
        )
        return member, c.orgs.subject_name(s, "member", member.user_id)

    return await act(
        request,
        "org.member_remove",
        work,
        lambda _: org_url(org_id, "members"),
        lambda r: f"Removed {r[1]}; their authorizations were revoked.",
    )


@router.post("/org/{org_id}/billing/servers/link")
async def org_server_link(request: Request, org_id: OrgId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        guild_id = form.text("guild_id", "Server")
        return c.orgs.link_server(
            s,
            actor_user_id=user.user_id,
            actor_manages_guild=guild_id in user.principal.managed_guilds,
            org_id=org_id,
            guild_id=guild_id,
            idempotency_key=form.key(),
        )

    return await act(
        request, "org.server_link", work, lambda _: org_url(org_id), "Server linked.", refresh_guilds=True
    )


@router.post("/org/{org_id}/billing/servers/{guild_id}/unlink")
async def org_server_unlink(request: Request, org_id: OrgId, guild_id: DiscordId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        return c.orgs.unlink_server(
            s, actor_user_id=user.user_id, org_id=org_id, guild_id=guild_id, idempotency_key=form.key()
        )

    return await act(
        request,
        "org.server_unlink",
        work,
        lambda _: org_url(org_id),
        "Server unlinked; its authorization was revoked.",
    )


def _sources(form: forms.Form) -> list[str] | None:
    """Ticked capture sources; none ticked means every source of the subject's kind."""
    return form.values("capture_sources") or None


@router.post("/org/{org_id}/billing/authorizations/create")
async def org_authorization_create(request: Request, org_id: OrgId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        subject = form.text("subject", "Who may spend")
        subject_type, _, subject_id = subject.partition(":")
        return c.orgs.create_authorization(
            s,
            actor_user_id=user.user_id,
            org_id=org_id,
            subject_type=subject_type,
            subject_id=subject_id,
            monthly_cap_credits=form.whole("monthly_cap_credits", "Monthly cap", required=False),
            capture_sources=_sources(form),
            valid_from=form.day("valid_from", "Valid from"),
            valid_until=form.day("valid_until", "Valid until", end_of_day=True),
            idempotency_key=form.key(),
        )

    return await act(
        request,
        "org.authorization_create",
        work,
        lambda _: org_url(org_id, "authorizations"),
        "Authorization created.",
    )


def _authorization_in(c: Container, s: Session, org_id: str, authorization_id: str) -> None:
    if c.orgs.get_authorization(s, authorization_id).org_id != org_id:
        raise NotFound(f"No authorization '{authorization_id}' in this organization.")


@router.post("/org/{org_id}/billing/authorizations/{authorization_id}/cap")
async def org_authorization_cap(
    request: Request, org_id: OrgId, authorization_id: AuthorizationId
) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        _authorization_in(c, s, org_id, authorization_id)
        view = c.orgs.update_authorization(
            s,
            actor_user_id=user.user_id,
            authorization_id=authorization_id,
            monthly_cap_credits=form.whole("monthly_cap_credits", "Monthly cap", required=False),
            idempotency_key=form.key(),
        )
        return presenters.cap_notice(view, c.orgs.subject_name(s, view.subject_type, view.subject_id))

    return await act(
        request,
        "org.authorization_cap",
        work,
        lambda _: org_url(org_id, "authorizations"),
        lambda notice: notice,
    )


@router.post("/org/{org_id}/billing/authorizations/{authorization_id}/revoke")
async def org_authorization_revoke(
    request: Request, org_id: OrgId, authorization_id: AuthorizationId
) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        views.org_account(c, s, user, org_id)
        _authorization_in(c, s, org_id, authorization_id)
        return c.orgs.revoke_authorization(
            s, actor_user_id=user.user_id, authorization_id=authorization_id, idempotency_key=form.key()
        )

    return await act(
        request,
        "org.authorization_revoke",
        work,
        lambda _: org_url(org_id, "authorizations"),
        "Authorization revoked.",
    )


@router.post("/org/{org_id}/billing/alerts")
async def org_alerts(request: Request, org_id: OrgId) -> Response:
    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        _, account = views.org_account(c, s, user, org_id)
        return c.notifications.set_alert_settings(
            s,
            account_id=account.id,
            low_balance_threshold_credits=form.whole("threshold_credits", "Alert threshold", required=False),
            idempotency_key=form.key(),
        )

    return await act(request, "org.alerts", work, lambda _: org_url(org_id), "Low-balance alert saved.")


@router.post("/org/{org_id}/billing/auto-recharge")
async def org_auto_recharge(request: Request, org_id: OrgId) -> Response:
    return await auto_recharge_action(
        request, "org.auto_recharge", lambda c, s, u: views.org_account(c, s, u, org_id)[1], org_url(org_id)
    )


async def auto_recharge_action(
    request: Request, action: str, resolve: Resolve, page_path: str, refresh_guilds: bool = False
) -> Response:
    """Save an account's auto-recharge. Switching it on needs a card saved with Stripe, asked of
    Stripe before the write, so the page says why instead of failing at the first purchase
    (decision 0041)."""

    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        account = resolve(c, s, user)
        arguments = auto_recharge_request(form, load_catalog().currency)
        return c.notifications.set_auto_recharge(
            s, account_id=account.id, idempotency_key=form.key(), **arguments
        )

    user = current_user(request)
    data = await request.form()
    if user is not None and data.get("enabled"):
        c = container_of(request)
        signed_in = user
        form: forms.Form | None = None
        try:
            check_csrf(request, str(data.get("csrf_token") or "") or None)
            form = forms.Form(data, action, user.user_id)
            c.notifications.check_auto_recharge(**auto_recharge_request(form, load_catalog().currency))
            account_id = await run_in_threadpool(c.db.read, lambda s: resolve(c, s, signed_in).id)
            await run_in_threadpool(c.billing.require_saved_card, account_id)
        except BillingError as exc:
            if is_htmx(request):
                return error_fragment(request, exc, form)
            return error_page(request, user, exc)
    return await act(request, action, work, lambda _: page_path, "Auto-recharge saved.", refresh_guilds)


# ---------------------------------------------------------------------------- purchases (Stripe)

Resolve = Callable[[Container, Session, SignedIn], BillingAccount]
# Stripe puts the session's id in the return address; the page confirms it (decision 0040).
RETURN_QUERY = "?checkout={CHECKOUT_SESSION_ID}"
CHECKOUT_ID = re.compile(r"^cs_[A-Za-z0-9_]{1,200}$")
POLL_LIMIT = 60  # two minutes at one poll every two seconds


def absolute(c: Container, path: str) -> str:
    return c.settings.public_base_url.rstrip("/") + path


async def pay(
    request: Request,
    action: str,
    resolve: Resolve,
    what: str,
    page_path: str,
    refresh_guilds: bool = False,
) -> Response:
    """Checkout, plan change or the customer portal for exactly the account this page bills.

    The account is resolved (and access checked) in one transaction; the billing service then
    talks to Stripe and checks access again on its side.
    """
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    c = container_of(request)
    form: forms.Form | None = None
    try:
        data = await request.form()
        check_csrf(request, str(data.get("csrf_token") or "") or None)
        if refresh_guilds:
            await auth.refresh_guilds_if_stale(request)
            user = current_user(request) or user
        form = checked = forms.Form(data, action, user.user_id)
        signed_in = user
        account_id = await run_in_threadpool(c.db.write, lambda s: resolve(c, s, signed_in).id)
        principal = user.principal
        if what == "portal":
            portal = await run_in_threadpool(
                lambda: c.billing.open_customer_portal(
                    principal, account_id, idempotency_key=checked.key(), return_url=absolute(c, page_path)
                )
            )
            return go(request, portal.url)
        code = form.text("promotion_code", "Promotion code", required=False, max_length=64) or None
        if what == "pack":
            pack_id = checked.text("pack", "Credit pack")
            checkout = await run_in_threadpool(
                lambda: c.billing.start_checkout(
                    principal,
                    account_id,
                    idempotency_key=checked.key(),
                    pack_id=pack_id,
                    success_url=absolute(c, page_path + RETURN_QUERY),
                    cancel_url=absolute(c, page_path),
                    promotion_code=code,
                )
            )
        else:
            plan_id = checked.text("plan", "Plan")
            interval = checked.choice("interval", ("month", "year"), "Billing interval")
            if checked.checked("change"):
                preview = await run_in_threadpool(
                    lambda: c.billing.preview_plan_change(
                        principal, account_id, plan_id=plan_id, interval=interval
                    )
                )
                if preview.effective == "refused":
                    raise PlanChangeNotSupported(preview.message, field="interval")
                if preview.amount_due > 0 and not checked.checked("confirmed"):
                    # An immediate charge is shown, with its amount, before it is made (0040).
                    return confirm_plan_change(request, user, preview, page_path, data)
                change = await run_in_threadpool(
                    lambda: c.billing.change_plan(
                        principal,
                        account_id,
                        plan_id=plan_id,
                        interval=interval,
                        idempotency_key=checked.key(),
                    )
                )
                request.session["flash"] = plan_change_notice(preview, change.effective_at)
                return go(request, page_path)
            trial = form.checked("trial")
            checkout = await run_in_threadpool(
                lambda: c.billing.start_checkout(
                    principal,
                    account_id,
                    idempotency_key=checked.key(),
                    plan_id=plan_id,
                    interval=interval,
                    success_url=absolute(c, page_path + RETURN_QUERY),
                    cancel_url=absolute(c, page_path),
                    promotion_code=code,
                    trial=trial,
                )
            )
        if not checkout.url:
            raise BillingError("Stripe did not return a checkout page; please try again.")
        return go(request, checkout.url)
    except BillingError as exc:
        if is_htmx(request):
            return error_fragment(request, exc, form)
        return error_page(request, user, exc)


def plan_change_notice(preview: PlanChangePreview, effective_at: Any) -> str:
    if preview.effective == "now":
        return f"{preview.to_plan_name} is now the plan in force."
    if preview.effective == "unchanged":
        return f"{preview.to_plan_name} is already the plan in force."
    if preview.kind == "cancel_pending":
        return f"{preview.from_plan_name} stays; the planned change is cancelled."
    return (
        f"{preview.from_plan_name} stays until {presenters.date(effective_at)}; "
        f"then {preview.to_plan_name} starts."
    )


def confirm_plan_change(
    request: Request, user: SignedIn, preview: PlanChangePreview, page_path: str, data: FormData
) -> Response:
    """The amount a plan change charges at once, with a button that makes it (inside the plan's
    form for HTMX; a page of its own otherwise)."""
    context = {
        "preview": preview,
        "page_path": page_path,
        "action": request.url.path,
        "fields": {k: str(v) for k, v in data.items() if k not in ("confirmed",)},
        "amount": presenters.money(preview.amount_due, preview.currency),
    }
    if is_htmx(request):
        return templates.TemplateResponse(request, "partials/plan_confirm.html", context)
    return render(request, "plan_confirm.html", context, user)


def _personal(c: Container, s: Session, u: SignedIn) -> BillingAccount:
    return views.personal_account(c, s, u)


@router.post("/personal/billing/plan")
async def personal_plan(request: Request) -> Response:
    return await pay(request, "personal.plan", _personal, "plan", PERSONAL)


@router.post("/personal/billing/packs")
async def personal_pack(request: Request) -> Response:
    return await pay(request, "personal.pack", _personal, "pack", PERSONAL)


@router.post("/personal/billing/manage")
async def personal_manage(request: Request) -> Response:
    return await pay(request, "personal.portal", _personal, "portal", PERSONAL)


def _server(guild_id: str) -> Resolve:
    return lambda c, s, u: views.server_account(c, s, u, guild_id)


@router.post("/server/{guild_id}/billing/plan")
async def server_plan(request: Request, guild_id: DiscordId) -> Response:
    return await pay(request, "server.plan", _server(guild_id), "plan", server_url(guild_id), True)


@router.post("/server/{guild_id}/billing/packs")
async def server_pack(request: Request, guild_id: DiscordId) -> Response:
    return await pay(request, "server.pack", _server(guild_id), "pack", server_url(guild_id), True)


@router.post("/server/{guild_id}/billing/manage")
async def server_manage(request: Request, guild_id: DiscordId) -> Response:
    return await pay(request, "server.portal", _server(guild_id), "portal", server_url(guild_id), True)


def _org(org_id: str) -> Resolve:
    return lambda c, s, u: views.org_account(c, s, u, org_id)[1]


@router.post("/org/{org_id}/billing/packs")
async def org_pack(request: Request, org_id: OrgId) -> Response:
    return await pay(request, "org.pack", _org(org_id), "pack", org_url(org_id))


@router.post("/org/{org_id}/billing/manage")
async def org_manage(request: Request, org_id: OrgId) -> Response:
    return await pay(request, "org.portal", _org(org_id), "portal", org_url(org_id))


@router.get("/org/{org_id}/billing/usage")
def org_usage(request: Request, org_id: OrgId) -> Response:
    params = request.query_params
    return page(
        request,
        "org_usage.html",
        lambda c, s, u: views.org_usage(
            c, s, u, org_id, params.get("group_by"), params.get("since"), params.get("until")
        ),
        f"org:{org_id}",
    )


@router.get("/org/{org_id}/billing/usage.csv")
def org_usage_csv(request: Request, org_id: OrgId) -> Response:
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    c = container_of(request)
    params = request.query_params
    try:
        body = c.db.read(
            lambda s: views.org_usage_csv(
                c, s, user, org_id, params.get("group_by"), params.get("since"), params.get("until")
            )
        )
    except BillingError as exc:
        return error_page(request, user, exc)
    group = params.get("group_by")
    name = f"usage-{org_id}-{group if group in views.USAGE_GROUPS else 'lines'}.csv"
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# ---------------------------------------------------------------------------- statements as CSV


def statement_csv(request: Request, resolve: Resolve, name: str) -> Response:
    """The account's whole economic statement (decision 0038) as a CSV download."""
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    c = container_of(request)
    signed_in = user

    def work(s: Session) -> str:
        return balances.statement_csv(s, c.ledger, resolve(c, s, signed_in))

    try:
        body = c.db.write(work)
    except BillingError as exc:
        return error_page(request, user, exc)
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="statement-{name}.csv"'},
    )


@router.get("/personal/billing/statement.csv")
def personal_statement_csv(request: Request) -> Response:
    return statement_csv(request, _personal, "personal")


@router.get("/server/{guild_id}/billing/statement.csv")
def server_statement_csv(request: Request, guild_id: DiscordId) -> Response:
    return statement_csv(request, _server(guild_id), f"server-{guild_id}")


@router.get("/org/{org_id}/billing/statement.csv")
def org_statement_csv(request: Request, org_id: OrgId) -> Response:
    return statement_csv(request, _org(org_id), f"org-{org_id}")


# ---------------------------------------------------------------------------- not found


@router.get("/{path:path}")
def portal_not_found(request: Request, path: str) -> Response:
    return error_page(
        request, current_user(request), NotFound(f"There is no portal page '/portal/{printable(path)}'.")
    )
