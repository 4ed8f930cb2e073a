"""The refusals of buying through Stripe, each with its stable code."""

from __future__ import annotations

from chronote_billing.catalog.service import Catalog, PlanScopeMismatch, UnknownPlan
from chronote_billing.core.errors import BillingError, Conflict, NotFound, ValidationFailed


class SubscriptionExists(Conflict):
    code = "subscription_exists"
    title = "The account already has a subscription"


class NoSubscription(NotFound):
    code = "no_subscription"
    title = "The account has no subscription"


class NoStripeCustomer(NotFound):
    code = "no_stripe_customer"
    title = "The account has not bought anything yet"


class PlanChangeNotSupported(ValidationFailed):
    code = "plan_change_not_supported"
    title = "This plan change is not available"


class NoSavedCard(ValidationFailed):
    code = "no_saved_card"
    title = "No saved card"


class PaymentFailed(BillingError):
    code = "payment_failed"
    status = 402
    title = "The payment did not go through"


def organization_plan_refused(catalog: Catalog, plan_id: str, kind: str) -> BillingError:
    """Organizations have no plans at launch (0002): they buy credit packs."""
    catalog.plan(plan_id)  # an unknown plan is reported as such first
    return PlanScopeMismatch(
        f"Organizations have no plans; buy a credit pack instead of '{plan_id}'.",
        field="plan",
        plan=plan_id,
        account_kind=kind,
    )


def missing_price(lookup_key: str) -> BillingError:
    return UnknownPlan(
        f"Stripe has no active price '{lookup_key}'; run 'chronote-billing catalog sync'.",
        lookup_key=lookup_key,
    )
