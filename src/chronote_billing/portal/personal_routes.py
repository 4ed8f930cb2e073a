"""The personal billing page and its actions: funding order, plan, credit packs, the Stripe
customer portal, the statement download."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from chronote_billing.core.errors import BillingError
from chronote_billing.core.validation import CheckoutSessionId

from . import forms, views
from .auth import check_csrf, container_of, csrf_token, current_user
from .billed_accounts import PERSONAL, resolve_personal, statement_csv
from .purchases import billing_page, checkout_status, pay
from .responses import error_page, is_htmx, login_redirect, templates

router = APIRouter(prefix="/portal", include_in_schema=False)


@router.get("/personal/billing")
def personal_billing(request: Request) -> Response:
    return billing_page(
        request, "personal_billing.html", views.personal_billing, "personal", resolve_personal, PERSONAL
    )


@router.get("/personal/billing/checkout/{session_id}")
def personal_checkout_status(request: Request, session_id: CheckoutSessionId) -> Response:
    return checkout_status(request, session_id, views.personal_billing, resolve_personal, PERSONAL)


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


@router.post("/personal/billing/plan")
async def personal_plan(request: Request) -> Response:
    return await pay(request, "personal.plan", resolve_personal, "plan", PERSONAL)


@router.post("/personal/billing/packs")
async def personal_pack(request: Request) -> Response:
    return await pay(request, "personal.pack", resolve_personal, "pack", PERSONAL)


@router.post("/personal/billing/manage")
async def personal_manage(request: Request) -> Response:
    return await pay(request, "personal.portal", resolve_personal, "portal", PERSONAL)


@router.get("/personal/billing/statement.csv")
def personal_statement_csv(request: Request) -> Response:
    return statement_csv(request, resolve_personal, "personal")
