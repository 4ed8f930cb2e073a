"""Buying through Stripe: customers, Checkout, plan changes, cancellation, the customer portal and
off-session credit pack purchases.

Every operation follows the same three steps, so no database transaction is ever open while
Stripe is being called:

1. read what is needed and check it (permission, plan scope, the idempotency record);
2. call Stripe with an idempotency key derived from our ids and the caller's key, so a retry
   gets Stripe's first answer;
3. write the result, and the idempotency record, in a new transaction.
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
from chronote_billing.ledger.service import LedgerService

from .catalog_sync import fetch_prices, find_portal_configuration
from .client import call, expandable_id, make_client, stripe_key, to_dict
from .entitlements import complimentary_plan, current_plan, grace_ends_at, plan_subscription
from .models import PlanSubscription, StripeCheckoutSession
from .periods import from_ts, to_ts
from .schemas import (
    CancelView,
    CheckoutView,
    PackPurchaseView,
    PlanChangeView,
    PortalSessionView,
    SubscriptionView,
)
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
    ) -> CheckoutView:
        """A Checkout Session for a plan (subscription mode) or a credit pack (payment mode)."""
        key = idempotency.check_key(idempotency_key)
        catalog = load_catalog()
        scope = f"billing.checkout:{account_id}"
        params = {
            "plan": plan_id,
            "interval": interval if plan_id else None,
            "pack": pack_id,
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        if (plan_id is None) == (pack_id is None):
            raise ValidationFailed("Give exactly one of a plan or a credit pack.", field="plan")

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
            else:
                assert pack_id is not None
                pack = catalog.pack(pack_id)
            return _Account.of(account), None, plan, pack

        acct, prior, plan, pack = self.db.read(check)
        if prior is not None:
            return CheckoutView.model_validate(prior)
        customer = self.ensure_customer(account_id)
        lookup_key = plan.price(interval).lookup_key if plan else pack.lookup_key  # type: ignore[union-attr]
        price_id = self._price_id(lookup_key)
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
        if plan is not None:
            plan_meta = {**meta, "chronote_plan_id": plan.id, "chronote_interval": interval}
            body.update(
                mode="subscription",
                allow_promotion_codes=True,
                metadata=plan_meta,
                subscription_data={"metadata": plan_meta},
            )
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
            )
        cs = call(
            "start a checkout",
            lambda: self.client.v1.checkout.sessions.create(
                params=body,  # type: ignore[arg-type]
                options={"idempotency_key": stripe_key("checkout", acct.id, key)},
            ),
        )
        view = CheckoutView(
            id=cs.id,
            account_id=acct.id,
            mode=body["mode"],
            plan=plan.id if plan else None,
            interval=interval if plan else None,
            pack=pack.id if pack else None,
            url=getattr(cs, "url", None),
            customer=customer,
        )

        def save(session: Session) -> CheckoutView:
            prior = idempotency.lookup(session, scope, key, params)
            if prior is not None:
                return CheckoutView.model_validate(prior)
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

        return self.db.write(save)

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

        if target.id == current.id and interval == sub.interval and sub.pending_plan_id is None:
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
        interval_up = sub.interval == "month" and interval == "year"
        interval_down = sub.interval == "year" and interval == "month"
        upgrade = (target.rank > current.rank and not interval_down) or (
            target.rank == current.rank and interval_up
        )
        downgrade = target.rank <= current.rank and interval == sub.interval
        if not upgrade and not downgrade:
            raise PlanChangeNotSupported(
                f"Changing from {current.id} ({sub.interval}ly) to {target.id} ({interval}ly) would restart "
                "the billing period with a lower plan; cancel at period end and subscribe again instead.",
                field="interval",
            )
        changed_at = min(max(now, period_start), period_end)
        metadata: dict[str, str] = {"chronote_plan_id": target.id, "chronote_interval": interval}
        body: dict[str, Any] = {"items": [{"id": item_id, "price": price_id}]}
        if upgrade:
            metadata.update(
                chronote_previous_plan_id=current.id,
                chronote_change_kind="interval" if interval_up else "upgrade",
                chronote_changed_at=str(to_ts(changed_at)),
                chronote_period_start=str(to_ts(period_start)),
                chronote_period_end=str(to_ts(period_end)),
                chronote_downgrade_from="",
                chronote_downgrade_until="",
            )
            body.update(proration_behavior="always_invoice", cancel_at_period_end=False)
            if not interval_up:
                body["proration_date"] = to_ts(changed_at)
        else:
            # The price changes now in Stripe (so the renewal invoice charges the new price) with no
            # proration; the plan paid for stays in force until the period ends.
            is_cancel_of_pending = target.id == current.id
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
        view = PlanChangeView(
            account_id=account_id,
            subscription_id=sub.stripe_subscription_id,
            from_plan=current.id,
            to_plan=target.id,
            interval=interval,
            effective="now" if upgrade else "period_end",
            effective_at=changed_at if upgrade else period_end,
            invoice=expandable_id(updated.get("latest_invoice")) if upgrade else None,
        )
        return self._remember(scope, key, params, view)

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
        customer = to_dict(
            call("read the customer", lambda: self.client.v1.customers.retrieve(acct.customer or ""))
        )
        method = expandable_id((customer.get("invoice_settings") or {}).get("default_payment_method"))
        if not method:
            methods = call(
                "list payment methods",
                lambda: self.client.v1.payment_methods.list(
                    params={"customer": acct.customer or "", "type": "card", "limit": 1}
                ),
            )
            method = methods.data[0].id if methods.data else None
        if not method:
            raise PaymentFailed(
                f"Account '{account_id}' has no saved card to charge.", account_id=account_id, pack=pack_id
            )
        meta = {
            **account_metadata(acct),
            "chronote_pack_id": pack.id,
            "chronote_kind": "credit_pack_off_session",
        }
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
                    options={"idempotency_key": stripe_key("pack-off-session", account_id, key)},
                )
            )
        except stripe.CardError as exc:
            raise PaymentFailed(
                f"The saved card was declined: {exc.user_message or exc}", account_id=account_id, pack=pack_id
            ) from exc
        except stripe.StripeError as exc:
            raise ExternalServiceError(f"Stripe refused or failed to charge the saved card: {exc}") from exc
        if pi.get("status") != "succeeded":
            raise PaymentFailed(
                f"The payment for {pack.name} is {pi.get('status')}; no credits were added.",
                account_id=account_id,
                payment_intent=pi.get("id"),
            )
        created = from_ts(pi.get("created") or to_ts(self.clock.now()))

        def save(session: Session) -> PackPurchaseView:
            again = idempotency.lookup(session, scope, key, params)
            if again is not None:
                return PackPurchaseView.model_validate(again)
            account = _get_account(session, account_id)
            notes: list[str] = []
            purchase = grant_pack(
                session,
                self.ledger,
                self.clock,
                account,
                pack,
                at=created,
                cause_type="payment_intent",
                cause_id=str(pi["id"]),
                payment_intent=str(pi["id"]),
                invoice_id=None,
                notes=notes,
            )
            view = PackPurchaseView(
                account_id=account_id,
                pack=pack.id,
                payment_intent=str(pi["id"]),
                status=str(pi.get("status")),
                granted=purchase is not None,
                grant_id=purchase.grant_id if purchase else None,
            )
            idempotency.remember(session, scope, key, params, view.model_dump(mode="json"), self.clock.now())
            return view

        return self.db.write(save)

    # ------------------------------------------------------------------ helpers

    def _price_id(self, lookup_key: str) -> str:
        prices = fetch_prices(self.client, [lookup_key])
        if lookup_key not in prices:
            raise load_missing_price(lookup_key)
        return str(prices[lookup_key]["id"])

    def _remember(self, scope: str, key: str, params: dict[str, Any], view: Any) -> Any:
        def save(session: Session) -> Any:
            prior = idempotency.lookup(session, scope, key, params)
            if prior is not None:
                return type(view).model_validate(prior)
            idempotency.remember(session, scope, key, params, view.model_dump(mode="json"), self.clock.now())
            return view

        return self.db.write(save)


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
