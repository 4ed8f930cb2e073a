"""Payments with Stripe from the billing pages: Checkout for plans and credit packs, plan changes
(with the amount charged at once shown first), the Stripe customer portal, the way back from
Checkout (decision 0040) and auto-recharge, which needs a card saved with Stripe (0045).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from chronote_billing.container import Container
from chronote_billing.core.errors import BillingError, NotFound
from chronote_billing.stripe_sync.errors import PlanChangeNotSupported
from chronote_billing.stripe_sync.schemas import CheckoutStatusView, PlanChangePreview

from . import auth, forms, presenters
from .auth import SignedIn, check_csrf, container_of, csrf_token, current_user
from .billed_accounts import Resolve
from .extra_parts import auto_recharge_request
from .responses import (
    PageBuilder,
    act,
    error_fragment,
    error_page,
    go,
    is_htmx,
    login_redirect,
    page,
    render,
    templates,
)

# Stripe puts the session's id in the return address; the page confirms it (decision 0040).
RETURN_QUERY = "?checkout={CHECKOUT_SESSION_ID}"
CHECKOUT_ID = re.compile(r"^cs_[A-Za-z0-9_]{1,200}$")
POLL_LIMIT = 60  # two minutes at one poll every two seconds


def absolute(c: Container, path: str) -> str:
    return c.settings.public_base_url.rstrip("/") + path


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


async def auto_recharge_action(
    request: Request, action: str, resolve: Resolve, page_path: str, refresh_guilds: bool = False
) -> Response:
    """Save an account's auto-recharge. Switching it on needs a card saved with Stripe, asked of
    Stripe before the write, so the page says why instead of failing at the first purchase
    (decision 0041)."""

    def work(c: Container, s: Session, user: SignedIn, form: forms.Form) -> Any:
        account = resolve(c, s, user)
        arguments = auto_recharge_request(form, c.catalog.currency)
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
            c.notifications.check_auto_recharge(**auto_recharge_request(form, c.catalog.currency))
            account_id = await run_in_threadpool(c.db.read, lambda s: resolve(c, s, signed_in).id)
            await run_in_threadpool(c.billing.require_saved_card, account_id)
        except BillingError as exc:
            if is_htmx(request):
                return error_fragment(request, exc, form)
            return error_page(request, user, exc)
    return await act(request, action, work, lambda _: page_path, "Auto-recharge saved.", refresh_guilds)
