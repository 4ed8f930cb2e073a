"""A Discord server's billing page and its actions: plan, credit packs, the Stripe customer
portal, the statement download. Actions refresh the person's server list first when it is
stale, since managing the server is what grants access."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chronote_billing.core.validation import CheckoutSessionId, DiscordId

from . import views
from .billed_accounts import resolve_server, server_url, statement_csv
from .purchases import billing_page, checkout_status, pay

router = APIRouter(prefix="/portal", include_in_schema=False)


@router.get("/server/{guild_id}/billing")
def server_billing(request: Request, guild_id: DiscordId) -> Response:
    return billing_page(
        request,
        "server_billing.html",
        lambda c, s, u: views.server_billing(c, s, u, guild_id),
        f"server:{guild_id}",
        resolve_server(guild_id),
        server_url(guild_id),
    )


@router.get("/server/{guild_id}/billing/checkout/{session_id}")
def server_checkout_status(request: Request, guild_id: DiscordId, session_id: CheckoutSessionId) -> Response:
    return checkout_status(
        request,
        session_id,
        lambda c, s, u: views.server_billing(c, s, u, guild_id),
        resolve_server(guild_id),
        server_url(guild_id),
    )


@router.post("/server/{guild_id}/billing/plan")
async def server_plan(request: Request, guild_id: DiscordId) -> Response:
    return await pay(request, "server.plan", resolve_server(guild_id), "plan", server_url(guild_id), True)


@router.post("/server/{guild_id}/billing/packs")
async def server_pack(request: Request, guild_id: DiscordId) -> Response:
    return await pay(request, "server.pack", resolve_server(guild_id), "pack", server_url(guild_id), True)


@router.post("/server/{guild_id}/billing/manage")
async def server_manage(request: Request, guild_id: DiscordId) -> Response:
    return await pay(request, "server.portal", resolve_server(guild_id), "portal", server_url(guild_id), True)


@router.get("/server/{guild_id}/billing/statement.csv")
def server_statement_csv(request: Request, guild_id: DiscordId) -> Response:
    return statement_csv(request, resolve_server(guild_id), f"server-{guild_id}")
