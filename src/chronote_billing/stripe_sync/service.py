"""Buying through Stripe: the billing service the container wires, one operation per module.

Every operation that calls Stripe reads and checks in one transaction, calls Stripe with no
transaction open (idempotently), and writes its result in another (`operation.StripeWrite`).
What each operation does is in its own module:

| operation | module |
| --- | --- |
| the account's own Stripe customer, its saved card, erasure | `customers` |
| Checkout for a plan or a credit pack | `checkout` |
| the return from Checkout | `checkout_return` |
| plan changes, their preview, cancellation | `subscription_changes` |
| the Stripe customer portal | `portal_sessions` |
| a pack charged off-session (auto-recharge) | `pack_purchases` |
| invoices and receipts | `receipts` |

Stripe's webhooks are verified, stored and applied by `webhooks` (the `webhooks` property).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal, require_view
from chronote_billing.accounts.models import BillingAccount
from chronote_billing.plans.rules import grace_ends_at, plan_source
from chronote_billing.plans.service import complimentary_plan, current_plan, plan_subscription
from chronote_billing.plans.trials import trial_view

from . import (
    checkout,
    checkout_return,
    customers,
    pack_purchases,
    portal_sessions,
    receipts,
    subscription_changes,
)
from .dependencies import BillingDependencies, get_account
from .schemas import SubscriptionView


class BillingService(BillingDependencies):
    ensure_customer = customers.ensure_customer
    require_saved_card = customers.require_saved_card
    forget_customer = customers.forget_customer
    start_checkout = checkout.start_checkout
    confirm_checkout = checkout_return.confirm_checkout
    change_plan = subscription_changes.change_plan
    preview_plan_change = subscription_changes.preview_plan_change
    cancel = subscription_changes.cancel
    open_customer_portal = portal_sessions.open_customer_portal
    buy_pack_off_session = pack_purchases.buy_pack_off_session
    documents = receipts.documents

    def subscription_view(self, session: Session, account: BillingAccount) -> SubscriptionView:
        """The plan in force and where it comes from (free, paid, complimentary), the
        subscription's state, the payment grace and the trial."""
        now = self.clock.now()
        plan = current_plan(session, account, now, self.catalog)
        sub = plan_subscription(session, account.id)
        comp = complimentary_plan(session, account, now, self.catalog)
        grace_ends = grace_ends_at(sub)
        return SubscriptionView(
            account_id=account.id,
            plan=plan.id if plan else None,
            plan_name=plan.name if plan else None,
            plan_source=plan_source(plan, sub, comp),
            status=sub.status if sub else None,
            interval=sub.interval if sub else None,
            subscription_id=sub.stripe_subscription_id if sub else None,
            current_period_start=sub.current_period_start if sub else None,
            current_period_end=sub.current_period_end if sub else None,
            cancel_at_period_end=bool(sub.cancel_at_period_end) if sub else False,
            pending_plan=sub.pending_plan_id if sub else None,
            in_grace=grace_ends is not None and now < grace_ends,
            grace_ends_at=grace_ends,
            complimentary_until=comp[0].ends_at if comp else None,
            trial=trial_view(session, account, now, self.catalog),
        )

    def get_subscription(self, principal: Principal, account_id: str) -> SubscriptionView:
        def work(session: Session) -> SubscriptionView:
            account = get_account(session, account_id)
            require_view(session, principal, account)
            return self.subscription_view(session, account)

        return self.db.read(work)


__all__ = ["BillingService"]
