"""`POST /webhooks/stripe`: Stripe's signature is the only authentication (no API key)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from starlette.concurrency import run_in_threadpool

from chronote_billing.api.deps import ContainerDep

router = APIRouter(tags=["webhooks"])


@router.post(
    "/webhooks/stripe",
    summary="Stripe events: verified, stored once, applied once",
    responses={400: {"description": "Bad or stale signature: nothing is stored."}},
)
async def stripe_webhook(
    request: Request,
    container: ContainerDep,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> dict[str, Any]:
    payload = await request.body()
    # The database work is synchronous: keep it off the event loop.
    result = await run_in_threadpool(container.billing.webhooks.handle, payload, stripe_signature)
    return result.as_dict()


__all__ = ["router"]
