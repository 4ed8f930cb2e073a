"""The portal's front door: where /portal leads, the sign-in page, demo sign-in and signing out.
(Discord's OAuth round trip lives in ``auth``.)"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from chronote_billing.core.errors import BillingError, NotFound, ValidationFailed

from . import auth
from .auth import check_csrf, container_of, current_user, demo_available
from .responses import error_page, render

router = APIRouter(prefix="/portal", include_in_schema=False)


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
