"""A person back from Checkout: how the session ended, applied at once (decision 0040)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal, require_manage
from chronote_billing.core.errors import NotFound
from chronote_billing.integrations.stripe.client import call, to_dict
from chronote_billing.integrations.stripe.objects import CheckoutSession
from chronote_billing.ledger.models import Grant
from chronote_billing.plans.service import current_plan

from .dependencies import AccountSnapshot, BillingDependencies, get_account
from .models import StripeCheckoutSession
from .schemas import CheckoutStatusView

PAID = ("paid", "no_payment_required")


def confirm_checkout(
    billing: BillingDependencies, principal: Principal, account_id: str, session_id: str
) -> CheckoutStatusView:
    """The person is back from Checkout: ask Stripe how the session ended and apply it now
    through the webhook handlers (decision 0040); the webhook that follows finds it done."""

    def check(session: Session) -> tuple[AccountSnapshot, StripeCheckoutSession]:
        account = get_account(session, account_id)
        require_manage(session, principal, account)
        local = session.get(StripeCheckoutSession, session_id)
        if local is None or local.account_id != account.id:
            raise NotFound(
                f"No checkout of {account.display_name} with id '{session_id}'.", session_id=session_id
            )
        session.expunge(local)
        return AccountSnapshot.of(account), local

    acct, local = billing.db.read(check)
    if local.status != "complete":
        cs = CheckoutSession.model_validate(
            to_dict(
                call(
                    "read the checkout",
                    lambda: billing.client.v1.checkout.sessions.retrieve(
                        session_id,
                        params={"expand": ["subscription", "invoice", "payment_intent"]},  # type: ignore[typeddict-item]
                    ),
                )
            )
        )
        if cs.status == "complete" and cs.payment_status in PAID:
            billing.webhooks.apply_fetched(
                checkout_session=cs, subscription=cs.subscription_object, invoice=cs.invoice_object
            )
        elif cs.status == "expired":
            return checkout_status(billing, acct, local, "expired")
    return billing.db.read(lambda s: checkout_status(billing, acct, local, None, s))


def checkout_status(
    billing: BillingDependencies,
    acct: AccountSnapshot,
    local: StripeCheckoutSession,
    state: str | None,
    session: Session | None = None,
) -> CheckoutStatusView:
    """What the return page says: complete once the plan is in force or the pack's credits were
    granted, expired, or pending until then."""
    plan = billing.catalog.plans.get(local.plan_id or "")
    pack = billing.catalog.credit_packs.get(local.pack_id or "")
    if state is None:
        assert session is not None
        done = False
        if pack is not None:
            done = (
                session.execute(
                    select(Grant.id).where(
                        Grant.billing_account_id == acct.id,
                        Grant.cause_type == "checkout_session",
                        Grant.cause_id == local.id,
                    )
                ).first()
                is not None
            )
        elif plan is not None:
            in_force = current_plan(
                session, get_account(session, acct.id), billing.clock.now(), billing.catalog
            )
            done = in_force is not None and in_force.id == plan.id
        state = "complete" if done else "pending"
    if state == "complete":
        message = (
            f"Payment received: {plan.name} is now the plan of {acct.display_name}."
            if plan is not None
            else f"Payment received: {pack.name if pack else 'the credits'} were added."
        )
    elif state == "expired":
        message = "This checkout expired before it was paid; nothing was charged."
    else:
        message = "Payment pending: waiting for Stripe to confirm it. This page updates by itself."
    return CheckoutStatusView(
        session_id=local.id,
        account_id=acct.id,
        mode=local.mode,
        state=state,  # type: ignore[arg-type]
        plan=plan.id if plan else None,
        plan_name=plan.name if plan else None,
        pack=pack.id if pack else None,
        credits=pack.millicredits if pack else None,
        message=message,
    )
