"""Catalog, checkout, plan changes, cancellation and the Stripe customer portal (HTTP edge)."""

from __future__ import annotations

from fastapi import APIRouter

from chronote_billing.api.deps import (
    AccountsRead,
    BillingWrite,
    ContainerDep,
    IdempotencyKeyDep,
)
from chronote_billing.api.responses import PAYMENT_PROVIDER_ERROR, problems
from chronote_billing.catalog.service import PlanScopeMismatch, UnknownPlan
from chronote_billing.core.errors import NotFound
from chronote_billing.core.validation import AccountId
from chronote_billing.stripe_sync.errors import (
    NoStripeCustomer,
    NoSubscription,
    PaymentFailed,
    PlanChangeNotSupported,
    SubscriptionExists,
)
from chronote_billing.stripe_sync.schemas import (
    CancelView,
    CatalogView,
    CheckoutRequest,
    CheckoutView,
    PlanChangeRequest,
    PlanChangeView,
    PortalRequest,
    PortalSessionView,
    SubscriptionView,
)

router = APIRouter(prefix="/v1", tags=["billing"])


@router.get("/catalog", response_model=CatalogView, summary="Plans, credit packs and the rate card in force")
def get_catalog(container: ContainerDep) -> CatalogView:
    return CatalogView.of(container.catalog)


@router.get(
    "/accounts/{account_id}/subscription",
    response_model=SubscriptionView,
    summary="The plan in force, its status, period and payment grace",
    responses=problems(NotFound),
)
def get_subscription(
    account_id: AccountId, container: ContainerDep, principal: AccountsRead
) -> SubscriptionView:
    return container.billing.get_subscription(principal, account_id)


@router.post(
    "/accounts/{account_id}/checkout",
    response_model=CheckoutView,
    status_code=201,
    summary="Start a Stripe Checkout for a plan (subscription) or a credit pack (one-time payment)",
    responses=problems(NotFound, UnknownPlan, PlanScopeMismatch, SubscriptionExists, PAYMENT_PROVIDER_ERROR),
)
def start_checkout(
    account_id: AccountId,
    body: CheckoutRequest,
    container: ContainerDep,
    principal: BillingWrite,
    key: IdempotencyKeyDep,
) -> CheckoutView:
    return container.billing.start_checkout(
        principal,
        account_id,
        idempotency_key=key,
        plan_id=body.plan,
        interval=body.interval,
        pack_id=body.pack,
        success_url=body.success_url,
        cancel_url=body.cancel_url,
        promotion_code=body.promotion_code,
        trial=body.trial,
    )


@router.post(
    "/accounts/{account_id}/subscription",
    response_model=PlanChangeView,
    summary="Change the plan: an upgrade now with proration, a downgrade at the end of the period",
    responses=problems(
        NotFound,
        NoSubscription,
        PlanChangeNotSupported,
        UnknownPlan,
        PlanScopeMismatch,
        PaymentFailed,
        PAYMENT_PROVIDER_ERROR,
    ),
)
def change_plan(
    account_id: AccountId,
    body: PlanChangeRequest,
    container: ContainerDep,
    principal: BillingWrite,
    key: IdempotencyKeyDep,
) -> PlanChangeView:
    return container.billing.change_plan(
        principal, account_id, plan_id=body.plan, interval=body.interval, idempotency_key=key
    )


@router.delete(
    "/accounts/{account_id}/subscription",
    response_model=CancelView,
    summary="Cancel at the end of the period (the plan stays until then)",
    responses=problems(NotFound, NoSubscription, PAYMENT_PROVIDER_ERROR),
)
def cancel_subscription(
    account_id: AccountId, container: ContainerDep, principal: BillingWrite, key: IdempotencyKeyDep
) -> CancelView:
    return container.billing.cancel(principal, account_id, idempotency_key=key)


@router.post(
    "/accounts/{account_id}/portal-session",
    response_model=PortalSessionView,
    status_code=201,
    summary="A Stripe customer portal session on this account's own customer",
    responses=problems(NotFound, NoStripeCustomer, PAYMENT_PROVIDER_ERROR),
)
def portal_session(
    account_id: AccountId,
    container: ContainerDep,
    principal: BillingWrite,
    key: IdempotencyKeyDep,
    body: PortalRequest | None = None,
) -> PortalSessionView:
    return container.billing.open_customer_portal(
        principal, account_id, idempotency_key=key, return_url=body.return_url if body else None
    )


__all__ = ["router"]
