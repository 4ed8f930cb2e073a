"""Portal pages and forms of the billing extras, beside the billing pages: invoices and receipts
(0043), auto-recharge for people and servers (0045), a person's own data (0047).

Each page resolves the account it is for with the same access rules as the billing page
(personal owner, Manage Server, organization owner or billing admin) in one transaction, then
reads Stripe with no transaction open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.container import Container
from chronote_billing.core.errors import BillingError, ExternalServiceError, NotFound
from chronote_billing.core.validation import DiscordId, OrgId
from chronote_billing.people.export import collect, to_csv, to_json

from . import views
from .auth import SignedIn, container_of, current_user
from .purchases import auto_recharge_action
from .responses import error_page, login_redirect, render, templates

router = APIRouter(prefix="/portal", include_in_schema=False)

Resolve = Callable[[Container, Session, SignedIn], BillingAccount]


def billed_to(account: BillingAccount) -> str:
    return {"personal": "you", "server": f"server {account.display_name}"}.get(
        account.kind, account.display_name
    )


async def invoices(request: Request, resolve: Resolve, back: str, active: str) -> Response:
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    c = container_of(request)
    fragment = request.query_params.get("fragment") == "1"
    signed_in = user
    try:
        account = await run_in_threadpool(c.db.write, lambda s: _detached(resolve(c, s, signed_in), s))
    except BillingError as exc:
        return error_page(request, user, exc)
    context: dict[str, Any] = {
        "account": account,
        "billed_to": billed_to(account),
        "back": back,
        "active": active,
    }
    try:
        listing = await run_in_threadpool(c.billing.documents, user.principal, account.id)
        context["documents"] = listing.data
    except ExternalServiceError:
        context["load_error"] = (
            "Invoices could not be read from Stripe just now. Please try again in a moment."
        )
    if fragment:
        return templates.TemplateResponse(request, "_invoices_list.html", context)
    return render(request, "invoices.html", context, user)


def _detached(account: BillingAccount, session: Session) -> BillingAccount:
    session.flush()
    session.expunge(account)
    return account


@router.get("/personal/billing/invoices")
async def personal_invoices(request: Request) -> Response:
    return await invoices(request, views.personal_account, "/portal/personal/billing", "personal")


@router.get("/server/{guild_id}/billing/invoices")
async def server_invoices(request: Request, guild_id: DiscordId) -> Response:
    return await invoices(
        request,
        lambda c, s, u: views.server_account(c, s, u, guild_id),
        f"/portal/server/{guild_id}/billing",
        f"server:{guild_id}",
    )


@router.get("/org/{org_id}/billing/invoices")
async def org_invoices(request: Request, org_id: OrgId) -> Response:
    return await invoices(
        request,
        lambda c, s, u: views.org_account(c, s, u, org_id)[1],
        f"/portal/org/{org_id}/billing",
        f"org:{org_id}",
    )


# ---------------------------------------------------------------------------- auto-recharge (0045)


@router.post("/personal/billing/auto-recharge")
async def personal_auto_recharge(request: Request) -> Response:
    return await auto_recharge_action(
        request, "personal.auto_recharge", views.personal_account, "/portal/personal/billing"
    )


@router.post("/server/{guild_id}/billing/auto-recharge")
async def server_auto_recharge(request: Request, guild_id: DiscordId) -> Response:
    return await auto_recharge_action(
        request,
        "server.auto_recharge",
        lambda c, s, u: views.server_account(c, s, u, guild_id),
        f"/portal/server/{guild_id}/billing",
        refresh_guilds=True,
    )


# ---------------------------------------------------------------------------- a person's data (0047)


@router.get("/personal/data/export.{kind}")
def personal_export(request: Request, kind: str) -> Response:
    """The signed-in person's own data; nobody else's can be asked for here."""
    user = current_user(request)
    if user is None:
        return login_redirect(request)
    if kind not in ("json", "csv"):
        return error_page(request, user, NotFound(f"There is no export as '{kind}'; use json or csv."))
    c = container_of(request)
    try:
        document = c.db.read(lambda s: collect(s, c.clock, c.ledger, user.user_id))
    except BillingError as exc:
        return error_page(request, user, exc)
    name = f"chronote-billing-{user.user_id}.{kind}"
    return Response(
        to_csv(document) if kind == "csv" else to_json(document),
        media_type="text/csv; charset=utf-8" if kind == "csv" else "application/json",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
