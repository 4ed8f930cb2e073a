"""`POST /webhooks/stripe`: Stripe's signature is the only authentication (no API key)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from starlette.concurrency import run_in_threadpool

from chronote_billing.api.deps import ContainerDep
from chronote_billing.api.responses import PAYMENT_PROVIDER_ERROR, problems
from chronote_billing.core.validation import SignatureHeader
from chronote_billing.stripe_sync.webhooks import WebhookSignatureInvalid

router = APIRouter(tags=["webhooks"])


@router.post(
    "/webhooks/stripe",
    summary="Stripe events: verified, stored once, applied once",
    description="A bad or stale signature stores nothing (400 `invalid_signature`).",
    responses=problems(WebhookSignatureInvalid, PAYMENT_PROVIDER_ERROR),
)
async def stripe_webhook(
    request: Request,
    container: ContainerDep,
    stripe_signature: Annotated[SignatureHeader | None, Header(alias="Stripe-Signature")] = None,
) -> dict[str, Any]:
    payload = await request.body()
    # The database work is synchronous: keep it off the event loop.
    result = await run_in_threadpool(container.billing.webhooks.handle, payload, stripe_signature)
    return result.as_dict()


__all__ = ["router"]
