"""Buying through Stripe: customers, Checkout, plan changes, cancellation, the customer portal and
off-session credit pack purchases.

Every operation follows the same three steps, so no database transaction is ever open while
Stripe is being called:

1. read what is needed and check it (permission, plan scope, the idempotency record);
2. call Stripe with an idempotency key derived from our ids and the caller's key, so a retry
   gets Stripe's first answer;
3. write the result, and the idempotency record, in a new transaction.

It is longer than our modules usually are because every purchase operation an account can
start lives on one service object, each in those three steps; what they share but is not a step
of its own lives beside it: coupons (`promotions`), trials (`trials`), taxed pack invoices
(`pack_invoices`), invoices and receipts (`receipts`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import stripe
import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal, require_manage, require_view
from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.catalog.service import Catalog, CreditPack, Plan, load_catalog
from chronote_billing.config import Settings
from chronote_billing.core import idempotency
from chronote_billing.core.clock import Clock, as_utc
from chronote_billing.core.db import Database
from chronote_billing.core.errors import (
    BillingError,
    Conflict,
    ExternalServiceError,
    NotFound,
    ValidationFailed,
)
from chronote_billing.ledger.models import Grant
from chronote_billing.ledger.service import LedgerService

from .catalog_sync import fetch_prices, find_portal_configuration
from .client import call, expandable_id, make_client, stripe_key, to_dict
from .entitlements import complimentary_plan, current_plan, grace_ends_at, plan_subscription
from .models import PlanSubscription, StripeCheckoutSession
from .pack_invoices import pay_pack_invoice
from .periods import from_ts, to_ts
from .plan_change import decide_plan_change
from .promotions import STRIPE_DISCOUNT_REFUSALS, PromotionCodeNotRedeemable, page_codes_allowed, resolve_code
from .receipts import BillingDocumentList, list_documents
from .schemas import (
    CancelView,
    CheckoutStatusView,
    CheckoutView,
    PackPurchaseView,
    PlanChangePreview,
    PlanChangeView,
    PortalSessionView,
    SubscriptionView,
)
from .trials import TRIAL_META, NoTrial, TrialAlreadyUsed, plan_trial, refuse_if_used, trial_view
from .trials import existing as existing_trial
from .trials import reserve as reserve_trial
from .webhooks import ENDED_STATUSES, WebhookProcessor, grant_pack

log = structlog.get_logger(__name__)


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


OWNER_METADATA_KEY = {
    AccountKind.PERSONAL: "discord_user_id",
    AccountKind.SERVER: "guild_id",
    AccountKind.ORGANIZATION: "org_id",
}


def account_metadata(account: BillingAccount | _Account) -> dict[str, str]:
    """The metadata that ties a Stripe object to its billing account (0009)."""
    return metadata_for(account.id, str(account.kind), account.owner_ref)


def metadata_for(account_id: str, kind: str, owner_ref: str) -> dict[str, str]:
    return {
        "chronote_account_id": account_id,
        "account_kind": kind,
        OWNER_METADATA_KEY[AccountKind(kind)]: owner_ref,
    }


@dataclass(frozen=True)
class _Account:
    id: str
    kind: str
    owner_ref: str
    display_name: str
    customer: str | None

    @classmethod
    def of(cls, account: BillingAccount) -> _Account:
        return cls(
            account.id, account.kind, account.owner_ref, account.display_name, account.stripe_customer_id
        )


class BillingService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        ledger: LedgerService,
        settings: Settings,
        client_factory: Callable[[], stripe.StripeClient] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.ledger = ledger
        self.settings = settings
        self._client_factory = client_factory or (lambda: make_client(settings))
        self._portal_configuration_id: str | None = None

    @cached_property
    def client(self) -> stripe.StripeClient:
        return self._client_factory()

    @cached_property
    def webhooks(self) -> WebhookProcessor:
        return WebhookProcessor(
            self.db, self.clock, self.ledger, self.settings.stripe_webhook_secret, lambda: self.client
        )

    # ------------------------------------------------------------------ reads

    def subscription_view(self, session: Session, account: BillingAccount) -> SubscriptionView:
        now = self.clock.now()
        plan = current_plan(session, account, now)
        sub = plan_subscription(session, account.id)
        comp = complimentary_plan(session, account, now)
        source = "none"
        if plan is not None:
            if plan.is_free:
                source = "free"
            elif comp is not None and comp[1].id == plan.id and (sub is None or sub.plan_id != plan.id):
                source = "complimentary"
            else:
                source = "paid"
        grace_ends = grace_ends_at(sub)
        in_grace = grace_ends is not None and now < grace_ends
        return SubscriptionView(
            account_id=account.id,
            plan=plan.id if plan else None,
            plan_name=plan.name if plan else None,
            plan_source=source,  # type: ignore[arg-type]
            status=sub.status if sub else None,
            interval=sub.interval if sub else None,
            subscription_id=sub.stripe_subscription_id if sub else None,
            current_period_start=sub.current_period_start if sub else None,
            current_period_end=sub.current_period_end if sub else None,
            cancel_at_period_end=bool(sub.cancel_at_period_end) if sub else False,
            pending_plan=sub.pending_plan_id if sub else None,
            in_grace=in_grace,
            grace_ends_at=grace_ends,
            complimentary_until=comp[0].ends_at if comp else None,
            trial=trial_view(session, account, now),
        )

    def get_subscription(self, principal: Principal, account_id: str) -> SubscriptionView:
        def work(session: Session) -> SubscriptionView:
            account = _get_account(session, account_id)
            require_view(session, principal, account)
            return self.subscription_view(session, account)

        return self.db.read(work)

    # ------------------------------------------------------------------ customers

    def ensure_customer(self, account_id: str) -> str:
        """The account's own Stripe customer, created at first purchase (never found by email)."""
        acct = self.db.read(lambda s: _Account.of(_get_account(s, account_id)))
        if acct.customer:
            return acct.customer
        params: dict[str, Any] = {
            "name": acct.display_name,
            "description": f"Chronote {acct.kind} billing account {acct.id}",
            "metadata": account_metadata(acct),
        }
        customer = call(
            "create a customer",
            lambda: self.client.v1.customers.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": stripe_key("customer", acct.id)},
            ),
        )

        def save(session: Session) -> str:
            account = session.execute(
                select(BillingAccount).where(BillingAccount.id == account_id).with_for_update()
            ).scalar_one()
            if account.stripe_customer_id is None:
                account.stripe_customer_id = customer.id
            elif account.stripe_customer_id != customer.id:
                log.warning("stripe_customer_race", account=account_id, kept=account.stripe_customer_id)
            return account.stripe_customer_id

        return self.db.write(save)

    # ------------------------------------------------------------------ checkout

    def start_checkout(
        self,
        principal: Principal,
        account_id: str,
        *,
        idempotency_key: str,
        plan_id: str | None = None,
        interval: str = "month",
        pack_id: str | None = None,
        success_url: str | None = None,
        cancel_url: str | None = None,
        promotion_code: str | None = None,
        trial: bool = False,
    ) -> CheckoutView:
        """A Checkout Session for a plan (subscription mode) or a credit pack (payment mode).

        A `promotion_code` is checked against the plan or pack before anything is written
        (decision 0042); without one, Stripe's page takes codes where it can check them. A
        `trial` is the plan's free trial, once per person or server (decision 0044), reserved
        with the session.
        """
        key = idempotency.check_key(idempotency_key)
        catalog = load_catalog()
        scope = f"billing.checkout:{account_id}"
        promotion_code = (promotion_code or "").strip() or None
        params: dict[str, Any] = {
            "plan": plan_id,
            "interval": interval if plan_id else None,
            "pack": pack_id,
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        if promotion_code is not None:
            params["promotion_code"] = promotion_code
        if trial:
            params["trial"] = True
        if (plan_id is None) == (pack_id is None):
            raise ValidationFailed("Give exactly one of a plan or a credit pack.", field="plan")
        if trial and plan_id is None:
            raise NoTrial("Credit packs have no trial; a trial is for a plan.", field="trial")
        open_offer: list[str] = []

        def check(session: Session) -> tuple[_Account, Any, Plan | None, CreditPack | None]:
            account = _get_account(session, account_id)
            require_manage(session, principal, account)
            prior = idempotency.lookup(session, scope, key, params)
            if prior is not None:
                return _Account.of(account), prior, None, None
            plan = pack = None
            if plan_id is not None:
                if account.kind == AccountKind.ORGANIZATION:
                    raise load_catalog_scope_error(catalog, plan_id, account.kind)
                plan = catalog.plan_for_scope(plan_id, account.kind)
                if plan.is_free:
                    raise ValidationFailed(f"'{plan_id}' is free; there is nothing to buy.", field="plan")
                plan.price(interval)
                sub = plan_subscription(session, account.id)
                if sub is not None and sub.status not in ENDED_STATUSES:
                    raise SubscriptionExists(
                        f"Account '{account.id}' already has a {sub.status} {sub.plan_id} subscription; "
                        "change its plan instead of buying a second one.",
                        subscription_id=sub.stripe_subscription_id,
                    )
                if trial:
                    plan_trial(plan)
                    reserved = existing_trial(session, account)
                    refuse_if_used(reserved, account)
                    if reserved is not None and reserved.checkout_session_id:
                        open_offer.append(reserved.checkout_session_id)
            else:
                assert pack_id is not None
                pack = catalog.pack(pack_id)
            return _Account.of(account), None, plan, pack

        acct, prior, plan, pack = self.db.read(check)
        if prior is not None:
            return CheckoutView.model_validate(prior)
        item_id = plan.id if plan else pack.id  # type: ignore[union-attr]
        lookup_key = plan.price(interval).lookup_key if plan else pack.lookup_key  # type: ignore[union-attr]
        price = self._price(lookup_key)
        price_id = str(price["id"])
        code = None
        if promotion_code is not None:
            code = resolve_code(
                self.client,
                catalog,
                promotion_code,
                item_id=item_id,
                product_id=expandable_id(price.get("product")) or "",
                now=self.clock.now(),
            )
        if open_offer:
            # An earlier trial checkout that was never paid: it is closed before a new one opens.
            self._expire_trial_checkout(open_offer[0], acct.kind)
        customer = self.ensure_customer(account_id)
        meta = account_metadata(acct)
        base = self.settings.public_base_url.rstrip("/")
        body: dict[str, Any] = {
            "customer": customer,
            "client_reference_id": acct.id,
            "line_items": [{"price": price_id, "quantity": 1}],
            "success_url": success_url
            or f"{base}/portal/checkout/done?account={acct.id}&session={{CHECKOUT_SESSION_ID}}",
            "cancel_url": cancel_url or f"{base}/portal/checkout/cancelled?account={acct.id}",
        }
        if code is not None:
            body["discounts"] = [{"promotion_code": code.promotion_code}]
        elif page_codes_allowed(self.client, catalog, item_id):
            body["allow_promotion_codes"] = True
        body.update(tax_options(self.settings, acct.kind))
        if plan is not None:
            plan_meta = {**meta, "chronote_plan_id": plan.id, "chronote_interval": interval}
            subscription_data: dict[str, Any] = {"metadata": plan_meta}
            if trial and plan.trial is not None:
                # No card needed to start; without one, the trial's end cancels to free (0044).
                subscription_data["metadata"] = {**plan_meta, TRIAL_META: plan.id}
                subscription_data["trial_period_days"] = plan.trial.days
                subscription_data["trial_settings"] = {"end_behavior": {"missing_payment_method": "cancel"}}
                body["payment_method_collection"] = "if_required"
            body.update(mode="subscription", metadata=plan_meta, subscription_data=subscription_data)
        else:
            assert pack is not None
            pack_meta = {**meta, "chronote_pack_id": pack.id}
            body.update(
                mode="payment",
                metadata=pack_meta,
                payment_intent_data={
                    "metadata": {**pack_meta, "chronote_kind": "credit_pack_checkout"},
                    "setup_future_usage": "off_session",
                },
                # A receipt with its tax; it names no pack, so it never grants one (0043).
                invoice_creation={
                    "enabled": True,
                    "invoice_data": {
                        "description": f"Chronote {pack.name}",
                        "metadata": {**meta, "chronote_kind": RECEIPT_KIND},
                    },
                },
            )
        try:
            cs = call(
                "start a checkout",
                lambda: self.client.v1.checkout.sessions.create(
                    params=body,  # type: ignore[arg-type]
                    options={"idempotency_key": stripe_key("checkout", acct.id, key)},
                ),
            )
        except ExternalServiceError as exc:
            if code is not None and exc.details.get("stripe_code") in STRIPE_DISCOUNT_REFUSALS:
                raise PromotionCodeNotRedeemable(
                    f"Promotion code {code.code} cannot be used for this purchase: {exc.message}",
                    field="promotion_code",
                    promotion_code=code.code,
                ) from exc
            raise
        view = CheckoutView(
            id=cs.id,
            account_id=acct.id,
            mode=body["mode"],
            plan=plan.id if plan else None,
            interval=interval if plan else None,
            pack=pack.id if pack else None,
            url=getattr(cs, "url", None),
            customer=customer,
            promotion_code=code.code if code else None,
            trial_days=plan.trial.days if trial and plan and plan.trial else None,
        )

        def save(session: Session) -> CheckoutView:
            prior = idempotency.lookup(session, scope, key, params)
            if prior is not None:
                return CheckoutView.model_validate(prior)
            if trial and plan is not None:
                account = _get_account(session, acct.id)
                replaces = open_offer[0] if open_offer else None
                if not reserve_trial(session, account, plan, cs.id, replaces, self.clock.now()):
                    raise TrialAlreadyUsed(
                        "Another checkout took this trial a moment ago; trials are once, ever.", field="trial"
                    )
            if session.get(StripeCheckoutSession, cs.id) is None:
                session.add(
                    StripeCheckoutSession(
                        id=cs.id,
                        account_id=acct.id,
                        mode=view.mode,
                        plan_id=view.plan,
                        interval=view.interval,
                        pack_id=view.pack,
                        price_lookup_key=lookup_key,
                        url=view.url,
                        status="open",
                        created_by=principal.user_id or principal.key_id,
                        created_at=self.clock.now(),
                        completed_at=None,
                    )
                )
            idempotency.remember(
                session, scope, key, params, view.model_dump(mode="json"), self.clock.now(), cs.id
            )
            return view

        try:
            return self.db.write(save)
        except TrialAlreadyUsed:
            self._expire_trial_checkout(cs.id, acct.kind, quiet=True)
            raise

    def _expire_trial_checkout(self, session_id: str, kind: str, quiet: bool = False) -> None:
        """Close an unpaid trial checkout so that only one can ever start the trial. A checkout
        that was paid meanwhile cannot be closed: its trial is then taken."""
        try:
            self.client.v1.checkout.sessions.expire(session_id)
        except stripe.InvalidRequestError as exc:
            if quiet:
                log.warning("trial_checkout_not_expired", session=session_id, error=str(exc))
                return
            whose = "this person" if kind == AccountKind.PERSONAL else "this server"
            raise TrialAlreadyUsed(
                f"The free trial of {whose} was started from an earlier checkout.", field="trial"
            ) from exc
        except stripe.StripeError as exc:
            raise ExternalServiceError(
                f"Stripe refused or failed to close the earlier trial checkout: {exc}"
            ) from exc

    # ------------------------------------------------------------------ plan changes

    def change_plan(
        self, principal: Principal, account_id: str, *, plan_id: str, interval: str, idempotency_key: str
    ) -> PlanChangeView:
        """Change the plan of the account's one subscription (0018): an upgrade now with a prorated
        invoice, a downgrade at the end of the period. Never a second subscription."""
        key = idempotency.check_key(idempotency_key)
        scope = f"billing.plan_change:{account_id}"
        params = {"plan": plan_id, "interval": interval}
        catalog = load_catalog()

        def check(session: Session) -> tuple[Any, PlanSubscription | None, Plan | None]:
            account = _get_account(session, account_id)
            require_manage(session, principal, account)
            prior = idempotency.lookup(session, scope, key, params)
            if prior is not None:
                return prior, None, None
            if account.kind == AccountKind.ORGANIZATION:
                raise load_catalog_scope_error(catalog, plan_id, account.kind)
            target = catalog.plan_for_scope(plan_id, account.kind)
            if target.is_free:
                raise PlanChangeNotSupported(
                    "To go back to the free plan, cancel the subscription; it ends with the period.",
                    field="plan",
                )
            target.price(interval)
            sub = plan_subscription(session, account.id)
            if sub is None or sub.status in ENDED_STATUSES:
                raise NoSubscription(
                    f"Account '{account.id}' has no subscription to change; start a checkout instead.",
                    account_id=account.id,
                )
            session.expunge(sub)
            return None, sub, target

        prior, sub, target = self.db.read(check)
        if prior is not None:
            return PlanChangeView.model_validate(prior)
        assert sub is not None and target is not None
        current = catalog.plan(sub.plan_id)
        now = self.clock.now()
        period_start, period_end = as_utc(sub.current_period_start), as_utc(sub.current_period_end)
        decision = decide_plan_change(
            current, sub.interval, sub.pending_plan_id, target, interval, period_start, period_end, now
        )

        if decision.kind == "unchanged":
            view = PlanChangeView(
                account_id=account_id,
                subscription_id=sub.stripe_subscription_id,
                from_plan=current.id,
                to_plan=target.id,
                interval=interval,
                effective="unchanged",
                effective_at=now,
                invoice=None,
            )
            return self._remember(scope, key, params, view)
        if decision.kind == "unsupported":
            raise PlanChangeNotSupported(decision.message, field="interval")

        stripe_sub = to_dict(
            call(
                "read the subscription",
                lambda: self.client.v1.subscriptions.retrieve(sub.stripe_subscription_id),
            )
        )
        items = (stripe_sub.get("items") or {}).get("data") or []
        if not items:
            raise PlanChangeNotSupported("The Stripe subscription has no item to change.")
        item_id = items[0]["id"]
        price_id = self._price_id(target.price(interval).lookup_key)
        upgrade = decision.effective == "now"
        changed_at = decision.effective_at if upgrade else min(max(now, period_start), period_end)
        metadata: dict[str, str] = {"chronote_plan_id": target.id, "chronote_interval": interval}
        body: dict[str, Any] = {"items": [{"id": item_id, "price": price_id}]}
        if upgrade:
            metadata.update(
                chronote_previous_plan_id=current.id,
                chronote_change_kind=decision.kind,
                chronote_changed_at=str(to_ts(changed_at)),
                chronote_period_start=str(to_ts(period_start)),
                chronote_period_end=str(to_ts(period_end)),
                chronote_downgrade_from="",
                chronote_downgrade_until="",
            )
            body.update(proration_behavior="always_invoice", cancel_at_period_end=False)
            if decision.kind != "interval":
                body["proration_date"] = to_ts(changed_at)
        else:
            # The price changes now in Stripe (so the renewal invoice charges the new price) with no
            # proration; the plan paid for stays in force until the period ends.
            is_cancel_of_pending = decision.kind == "cancel_pending"
            metadata.update(
                chronote_previous_plan_id="",
                chronote_change_kind="" if is_cancel_of_pending else "downgrade",
                chronote_downgrade_from="" if is_cancel_of_pending else current.id,
                chronote_downgrade_until="" if is_cancel_of_pending else str(to_ts(period_end)),
            )
            body.update(proration_behavior="none")
        body["metadata"] = metadata
        updated = to_dict(
            call(
                "change the plan",
                lambda: self.client.v1.subscriptions.update(
                    sub.stripe_subscription_id,
                    params=body,  # type: ignore[arg-type]
                    options={"idempotency_key": stripe_key("plan-change", account_id, key)},
                ),
            )
        )
        invoice_id = expandable_id(updated.get("latest_invoice")) if upgrade else None
        # The plan in force shows at once (decision 0040); the webhooks find it done.
        invoice = (
            to_dict(call("read the invoice", lambda: self.client.v1.invoices.retrieve(invoice_id)))
            if invoice_id
            else None
        )
        self.webhooks.apply_fetched(subscription=updated, invoice=invoice)
        view = PlanChangeView(
            account_id=account_id,
            subscription_id=sub.stripe_subscription_id,
            from_plan=current.id,
            to_plan=target.id,
            interval=interval,
            effective="now" if upgrade else "period_end",
            effective_at=changed_at if upgrade else period_end,
            invoice=invoice_id,
        )
        return self._remember(scope, key, params, view)

    def preview_plan_change(
        self, principal: Principal, account_id: str, *, plan_id: str, interval: str
    ) -> PlanChangePreview:
        """What changing to ``plan_id`` would do, before it is done: the plan in force, when the
        change applies, and the amount charged at once (decision 0040). Nothing is written."""
        catalog = load_catalog()

        def work(session: Session) -> PlanChangePreview:
            account = _get_account(session, account_id)
            require_manage(session, principal, account)
            if account.kind == AccountKind.ORGANIZATION:
                raise load_catalog_scope_error(catalog, plan_id, account.kind)
            target = catalog.plan_for_scope(plan_id, account.kind)
            target.price(interval)
            sub = plan_subscription(session, account.id)
            if sub is None or sub.status in ENDED_STATUSES:
                raise NoSubscription(
                    f"{account.display_name} has no subscription to change; choose a plan to subscribe.",
                    account_id=account.id,
                )
            current = catalog.plan(sub.plan_id)
            decision = decide_plan_change(
                current,
                sub.interval,
                sub.pending_plan_id,
                target,
                interval,
                as_utc(sub.current_period_start),
                as_utc(sub.current_period_end),
                self.clock.now(),
            )
            return PlanChangePreview(
                account_id=account.id,
                from_plan=current.id,
                from_plan_name=current.name,
                from_interval=sub.interval,
                to_plan=target.id,
                to_plan_name=target.name,
                interval=interval,
                kind=decision.kind,
                effective=decision.effective,
                effective_at=decision.effective_at,
                amount_due=decision.amount_due,
                currency=decision.currency,
                message=decision.message,
            )

        return self.db.read(work)

    # ------------------------------------------------------------------ checkout returns

    def confirm_checkout(self, principal: Principal, account_id: str, session_id: str) -> CheckoutStatusView:
        """The person is back from Checkout: ask Stripe how the session ended and apply it now
        through the webhook handlers (decision 0040); the webhook that follows finds it done."""

        def check(session: Session) -> tuple[_Account, StripeCheckoutSession]:
            account = _get_account(session, account_id)
            require_manage(session, principal, account)
            local = session.get(StripeCheckoutSession, session_id)
            if local is None or local.account_id != account.id:
                raise NotFound(
                    f"No checkout of {account.display_name} with id '{session_id}'.", session_id=session_id
                )
            session.expunge(local)
            return _Account.of(account), local

        acct, local = self.db.read(check)
        if local.status != "complete":
            cs = to_dict(
                call(
                    "read the checkout",
                    lambda: self.client.v1.checkout.sessions.retrieve(
                        session_id,
                        params={"expand": ["subscription", "invoice", "payment_intent"]},  # type: ignore[typeddict-item]
                    ),
                )
            )
            paid = cs.get("status") == "complete" and cs.get("payment_status") in (
                "paid",
                "no_payment_required",
            )
            if paid:
                sub = cs.get("subscription") if isinstance(cs.get("subscription"), dict) else None
                inv = cs.get("invoice") if isinstance(cs.get("invoice"), dict) else None
                self.webhooks.apply_fetched(checkout_session=cs, subscription=sub, invoice=inv)
            elif cs.get("status") == "expired":
                return self._checkout_status(acct, local, "expired")
        return self.db.read(lambda s: self._checkout_status(acct, local, None, s))

    def _checkout_status(
        self,
        acct: _Account,
        local: StripeCheckoutSession,
        state: str | None,
        session: Session | None = None,
    ) -> CheckoutStatusView:
        catalog = load_catalog()
        plan = catalog.plans.get(local.plan_id or "")
        pack = catalog.credit_packs.get(local.pack_id or "")
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
                account = _get_account(session, acct.id)
                in_force = current_plan(session, account, self.clock.now())
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

    def cancel(
        self, principal: Principal, account_id: str, *, idempotency_key: str, resume: bool = False
    ) -> CancelView:
        """Cancel at period end (the plan stays until then), or undo that."""
        key = idempotency.check_key(idempotency_key)
        scope = f"billing.cancel:{account_id}"
        params = {"resume": resume}

        def check(session: Session) -> tuple[Any, PlanSubscription | None]:
            account = _get_account(session, account_id)
            require_manage(session, principal, account)
            prior = idempotency.lookup(session, scope, key, params)
            if prior is not None:
                return prior, None
            sub = plan_subscription(session, account.id)
            if sub is None or sub.status in ENDED_STATUSES:
                raise NoSubscription(
                    f"Account '{account.id}' has no subscription to cancel.", account_id=account.id
                )
            session.expunge(sub)
            return None, sub

        prior, sub = self.db.read(check)
        if prior is not None:
            return CancelView.model_validate(prior)
        assert sub is not None
        updated = to_dict(
            call(
                "cancel the subscription" if not resume else "resume the subscription",
                lambda: self.client.v1.subscriptions.update(
                    sub.stripe_subscription_id,
                    params={"cancel_at_period_end": not resume},
                    options={"idempotency_key": stripe_key("cancel", account_id, key)},
                ),
            )
        )
        items = (updated.get("items") or {}).get("data") or [{}]
        end_ts = items[0].get("current_period_end") or updated.get("current_period_end")
        view = CancelView(
            account_id=account_id,
            subscription_id=sub.stripe_subscription_id,
            cancel_at_period_end=bool(updated.get("cancel_at_period_end", not resume)),
            ends_at=from_ts(end_ts) if end_ts else sub.current_period_end,
        )
        return self._remember(scope, key, params, view)

    # ------------------------------------------------------------------ invoices and receipts

    def documents(self, principal: Principal, account_id: str) -> BillingDocumentList:
        """The account's invoices and receipts, newest first, read from its own Stripe customer."""

        def check(session: Session) -> str | None:
            account = _get_account(session, account_id)
            require_view(session, principal, account)
            return account.stripe_customer_id

        customer = self.db.read(check)
        data = list_documents(self.client, customer) if customer else []
        return BillingDocumentList(account_id=account_id, data=data)

    # ------------------------------------------------------------------ erasure (0047)

    def forget_customer(self, customer_id: str, pseudonym: str, erasure_id: str) -> None:
        """Replace what we set on an erased person's customer: their Discord id and name."""
        call(
            "remove our details from the customer",
            lambda: self.client.v1.customers.update(
                customer_id,
                params={
                    "name": pseudonym,
                    "description": "Chronote personal billing account (erased)",
                    "metadata": {"discord_user_id": "", "chronote_erased": pseudonym},
                },
                options={"idempotency_key": stripe_key("erase", erasure_id)},
            ),
        )

    # ------------------------------------------------------------------ customer portal

    def open_customer_portal(
        self, principal: Principal, account_id: str, *, idempotency_key: str, return_url: str | None = None
    ) -> PortalSessionView:
        """A Stripe customer portal session on THIS account's own customer, nobody else's.

        Our own idempotency record answers a retry (decision 0033): the same key with another
        return URL is our conflict, and Stripe is not asked again."""
        key = idempotency.check_key(idempotency_key)
        scope = f"billing.portal:{account_id}"
        request = {"return_url": return_url}

        def check(session: Session) -> tuple[str, Any]:
            account = _get_account(session, account_id)
            require_manage(session, principal, account)
            prior = idempotency.lookup(session, scope, key, request)
            if not account.stripe_customer_id:
                raise NoStripeCustomer(
                    f"Account '{account.id}' has no Stripe customer yet: nothing has been bought.",
                    account_id=account.id,
                )
            return account.stripe_customer_id, prior

        customer, prior = self.db.read(check)
        if prior is not None:
            return PortalSessionView.model_validate(prior)
        base = self.settings.public_base_url.rstrip("/")
        params: dict[str, Any] = {"customer": customer, "return_url": return_url or f"{base}/portal"}
        configuration = self._portal_configuration()
        if configuration is not None:
            params["configuration"] = configuration
        ps = call(
            "open the customer portal",
            lambda: self.client.v1.billing_portal.sessions.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": stripe_key("portal", account_id, key)},
            ),
        )
        view = PortalSessionView(account_id=account_id, customer=customer, url=ps.url)

        def remember(session: Session) -> PortalSessionView:
            again = idempotency.lookup(session, scope, key, request)
            if again is not None:  # a concurrent duplicate recorded it first
                return PortalSessionView.model_validate(again)
            idempotency.remember(session, scope, key, request, view.model_dump(mode="json"), self.clock.now())
            return view

        return self.db.write(remember)

    def _portal_configuration(self) -> str | None:
        """Our portal configuration (made by `catalog sync`), looked up once per process."""
        if self._portal_configuration_id is None:
            found = find_portal_configuration(self.client)
            if found is None:
                # Stripe's default then applies: whatever its dashboard allows (decision 0025).
                log.warning(
                    "stripe_portal_configuration_missing", detail="run 'chronote-billing catalog sync'"
                )
                return None
            self._portal_configuration_id = str(found["id"])
        return self._portal_configuration_id

    # ------------------------------------------------------------------ auto-recharge

    def buy_pack_off_session(self, account_id: str, pack_id: str, idempotency_key: str) -> PackPurchaseView:
        """Charge a credit pack to the customer's saved default card (auto-recharge).

        The credits are granted as soon as Stripe confirms the payment, and again never: the
        `payment_intent.succeeded` webhook finds the same purchase.
        """
        key = idempotency.check_key(idempotency_key)
        scope = f"billing.pack_off_session:{account_id}"
        params = {"pack": pack_id}
        pack = load_catalog().pack(pack_id)

        def check(session: Session) -> tuple[Any, _Account]:
            account = _get_account(session, account_id)
            return idempotency.lookup(session, scope, key, params), _Account.of(account)

        prior, acct = self.db.read(check)
        if prior is not None:
            return PackPurchaseView.model_validate(prior)
        if not acct.customer:
            raise NoStripeCustomer(
                f"Account '{account_id}' has no saved payment method: buy a pack once through checkout.",
                account_id=account_id,
            )
        method = self._saved_card(acct.customer)
        if not method:
            raise PaymentFailed(
                f"Account '{account_id}' has no saved card to charge.", account_id=account_id, pack=pack_id
            )
        meta = {
            **account_metadata(acct),
            "chronote_pack_id": pack.id,
            "chronote_kind": "credit_pack_off_session",
        }
        if self.settings.stripe_automatic_tax:
            paid = pay_pack_invoice(
                self.client,
                account_id=account_id,
                customer=acct.customer or "",
                pack=pack,
                price_id=self._price_id(pack.lookup_key),
                method=method,
                metadata=meta,
                key=key,
                declined=PaymentFailed,
            )
            intent, invoice_id, status = paid.payment_intent, paid.invoice, paid.status
            created_ts = paid.created
        else:
            pi = self._charge_pack(acct, pack, method, meta, key)
            intent, invoice_id, status = str(pi["id"]), None, str(pi.get("status"))
            created_ts = int(pi.get("created") or 0)
        if status != "succeeded":
            raise PaymentFailed(
                f"The payment for {pack.name} is {status}; no credits were added.",
                account_id=account_id,
                payment_intent=intent,
            )
        created = from_ts(created_ts or to_ts(self.clock.now()))

        def save(session: Session) -> PackPurchaseView:
            again = idempotency.lookup(session, scope, key, params)
            if again is not None:
                return PackPurchaseView.model_validate(again)
            account = _get_account(session, account_id)
            notes: list[str] = []
            # One grant per payment: keyed as the webhook that confirms the same payment keys it.
            purchase = grant_pack(
                session,
                self.ledger,
                self.clock,
                account,
                pack,
                at=created,
                cause_type="invoice" if invoice_id else "payment_intent",
                cause_id=invoice_id or str(intent),
                payment_intent=None if invoice_id else intent,
                invoice_id=invoice_id,
                notes=notes,
            )
            view = PackPurchaseView(
                account_id=account_id,
                pack=pack.id,
                payment_intent=intent or "",
                invoice=invoice_id,
                status=status,
                granted=purchase is not None,
                grant_id=purchase.grant_id if purchase else None,
            )
            idempotency.remember(session, scope, key, params, view.model_dump(mode="json"), self.clock.now())
            return view

        return self.db.write(save)

    def _charge_pack(
        self, acct: _Account, pack: CreditPack, method: str, meta: dict[str, str], key: str
    ) -> dict[str, Any]:
        """A PaymentIntent for the pack's price, confirmed off-session (no tax: decision 0043)."""
        try:
            pi = to_dict(
                self.client.v1.payment_intents.create(
                    params={
                        "amount": pack.unit_amount,
                        "currency": pack.currency,
                        "customer": acct.customer or "",
                        "payment_method": method,
                        "off_session": True,
                        "confirm": True,
                        "description": f"Chronote {pack.name} (auto-recharge)",
                        "metadata": meta,
                    },
                    options={"idempotency_key": stripe_key("pack-off-session", acct.id, key)},
                )
            )
        except stripe.CardError as exc:
            raise PaymentFailed(
                f"The saved card was declined: {exc.user_message or exc}", account_id=acct.id, pack=pack.id
            ) from exc
        except stripe.StripeError as exc:
            raise ExternalServiceError(f"Stripe refused or failed to charge the saved card: {exc}") from exc
        return pi

    def require_saved_card(self, account_id: str) -> None:
        """Refuse, in words, what needs a card saved with Stripe (auto-recharge) when there is none."""
        acct = self.db.read(lambda s: _Account.of(_get_account(s, account_id)))
        if acct.customer is None or self._saved_card(acct.customer) is None:
            raise NoSavedCard(
                f"Auto-recharge needs a card saved with Stripe for {acct.display_name}: buy a credit pack "
                "here once (its card is kept for later), then switch auto-recharge on.",
                field="enabled",
                account_id=account_id,
            )

    def _saved_card(self, customer_id: str) -> str | None:
        """The customer's default card, else its first saved card (one Stripe read or two)."""
        customer = to_dict(call("read the customer", lambda: self.client.v1.customers.retrieve(customer_id)))
        method = expandable_id((customer.get("invoice_settings") or {}).get("default_payment_method"))
        if method:
            return method
        methods = call(
            "list payment methods",
            lambda: self.client.v1.payment_methods.list(
                params={"customer": customer_id, "type": "card", "limit": 1}
            ),
        )
        return str(methods.data[0].id) if methods.data else None

    # ------------------------------------------------------------------ helpers

    def _price_id(self, lookup_key: str) -> str:
        return str(self._price(lookup_key)["id"])

    def _price(self, lookup_key: str) -> dict[str, Any]:
        prices = fetch_prices(self.client, [lookup_key])
        if lookup_key not in prices:
            raise load_missing_price(lookup_key)
        return dict(prices[lookup_key])

    def _remember(self, scope: str, key: str, params: dict[str, Any], view: Any) -> Any:
        def save(session: Session) -> Any:
            prior = idempotency.lookup(session, scope, key, params)
            if prior is not None:
                return type(view).model_validate(prior)
            idempotency.remember(session, scope, key, params, view.model_dump(mode="json"), self.clock.now())
            return view

        return self.db.write(save)


RECEIPT_KIND = "credit_pack_checkout"


def tax_options(settings: Settings, kind: str) -> dict[str, Any]:
    """Checkout parameters for Stripe Tax and business details (decision 0043)."""
    business = kind in (AccountKind.ORGANIZATION, AccountKind.SERVER) and settings.business_tax_ids
    out: dict[str, Any] = {}
    update: dict[str, str] = {}
    if settings.stripe_automatic_tax:
        out["automatic_tax"] = {"enabled": True}
        out["billing_address_collection"] = "auto"
        update["address"] = "auto"
    if business:
        out["billing_address_collection"] = "required"
        out["tax_id_collection"] = {"enabled": True}
        update.update(address="auto", name="auto")
    if update:
        out["customer_update"] = update
    return out


def _get_account(session: Session, account_id: str) -> BillingAccount:
    account = session.get(BillingAccount, account_id)
    if account is None:
        raise NotFound(f"No billing account '{account_id}'.", account_id=account_id)
    return account


def load_catalog_scope_error(catalog: Catalog, plan_id: str, kind: str) -> BillingError:
    """Organizations have no plans at launch (0002): they buy credit packs."""
    from chronote_billing.catalog.service import PlanScopeMismatch

    catalog.plan(plan_id)  # an unknown plan is reported as such first
    return PlanScopeMismatch(
        f"Organizations have no plans; buy a credit pack instead of '{plan_id}'.",
        field="plan",
        plan=plan_id,
        account_kind=kind,
    )


def load_missing_price(lookup_key: str) -> BillingError:
    from chronote_billing.catalog.service import UnknownPlan

    return UnknownPlan(
        f"Stripe has no active price '{lookup_key}'; run 'chronote-billing catalog sync'.",
        lookup_key=lookup_key,
    )


__all__ = ["BillingService", "account_metadata"]
