"""`POST /webhooks/stripe`: Stripe's signature is the only authentication (no API key)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from starlette.concurrency import run_in_threadpool

from chronote_billing.api.deps import ContainerDep
from chronote_billing.api.responses import PAYMENT_PROVIDER_ERROR, problems
from chronote_billing.core.validation import SignatureHeader
from chronote_billing.integrations.stripe.client import WebhookSignatureInvalid

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
    inbox = container.billing.webhooks
    # Verified and stored (its own transaction), then applied once by its handler (decision 0056).
    # The database work is synchronous: keep it off the event loop.
    event = await run_in_threadpool(inbox.receive, payload, stripe_signature)
    result = await run_in_threadpool(inbox.apply, event)
    return result.as_dict()


__all__ = ["router"]
