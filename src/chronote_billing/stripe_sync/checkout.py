"""Starting a Stripe Checkout: a plan (subscription mode, with its trial when asked) or a credit
pack (payment mode, with a receipt), with a promotion code checked first (decisions 0042, 0043,
0044)."""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal, require_manage
from chronote_billing.accounts.models import AccountKind
from chronote_billing.catalog.service import CreditPack, Plan
from chronote_billing.config import Settings
from chronote_billing.core.errors import ExternalServiceError, ValidationFailed
from chronote_billing.integrations.stripe.client import (
    StripeFailure,
    call,
    expandable_id,
    idempotent,
    request,
    stripe_key,
)
from chronote_billing.plans.service import plan_subscription
from chronote_billing.plans.trials import NoTrial, TrialAlreadyUsed, plan_trial, refuse_if_used
from chronote_billing.plans.trials import existing as existing_trial
from chronote_billing.plans.trials import reserve as reserve_trial

from .customers import ensure_customer
from .dependencies import AccountSnapshot, BillingDependencies, get_account
from .errors import SubscriptionExists, organization_plan_refused
from .metadata import PACK_CHECKOUT, account_metadata
from .models import StripeCheckoutSession
from .operation import StripeWrite
from .plan_subscriptions import ENDED_STATUSES
from .promotions import (
    STRIPE_DISCOUNT_REFUSALS,
    CodeCheck,
    PromotionCodeNotRedeemable,
    page_codes_allowed,
    resolve_code,
)
from .schemas import CheckoutView
from .trials import TRIAL_META

log = structlog.get_logger(__name__)


def start_checkout(
    billing: BillingDependencies,
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
    catalog = billing.catalog
    promotion_code = (promotion_code or "").strip() or None
    request_sent: dict[str, Any] = {
        "plan": plan_id,
        "interval": interval if plan_id else None,
        "pack": pack_id,
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    if promotion_code is not None:
        request_sent["promotion_code"] = promotion_code
    if trial:
        request_sent["trial"] = True
    write = StripeWrite.of("checkout", account_id, idempotency_key, request_sent, CheckoutView)
    if (plan_id is None) == (pack_id is None):
        raise ValidationFailed("Give exactly one of a plan or a credit pack.", field="plan")
    if trial and plan_id is None:
        raise NoTrial("Credit packs have no trial; a trial is for a plan.", field="trial")
    open_offer: list[str] = []

    def check(
        session: Session,
    ) -> tuple[AccountSnapshot, CheckoutView | None, Plan | None, CreditPack | None]:
        account = get_account(session, account_id)
        require_manage(session, principal, account)
        first = write.first_answer(session)
        if first is not None:
            return AccountSnapshot.of(account), first, None, None
        plan = pack = None
        if plan_id is not None:
            if account.kind == AccountKind.ORGANIZATION:
                raise organization_plan_refused(catalog, plan_id, account.kind)
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
        return AccountSnapshot.of(account), None, plan, pack

    acct, first, plan, pack = billing.db.read(check)
    if first is not None:
        return first
    item_id = plan.id if plan else pack.id  # type: ignore[union-attr]
    lookup_key = plan.price(interval).lookup_key if plan else pack.lookup_key  # type: ignore[union-attr]
    price = billing.price(lookup_key)
    code = None
    if promotion_code is not None:
        code = resolve_code(
            billing.client,
            catalog,
            promotion_code,
            item_id=item_id,
            product_id=expandable_id(price.get("product")) or "",
            now=billing.clock.now(),
        )
    if open_offer:
        # An earlier trial checkout that was never paid: it is closed before a new one opens.
        expire_trial_checkout(billing, open_offer[0], acct.kind)
    customer = ensure_customer(billing, account_id)
    body = session_body(billing, acct, customer, str(price["id"]), plan, pack, interval, trial, code)
    if success_url:
        body["success_url"] = success_url
    if cancel_url:
        body["cancel_url"] = cancel_url
    try:
        cs = call(
            "start a checkout",
            lambda: billing.client.v1.checkout.sessions.create(
                params=body,  # type: ignore[arg-type]
                options=idempotent(stripe_key("checkout", acct.id, write.key)),
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
        first = write.first_answer(session)
        if first is not None:
            return first
        if trial and plan is not None:
            account = get_account(session, acct.id)
            replaces = open_offer[0] if open_offer else None
            if not reserve_trial(session, account, plan, cs.id, replaces, billing.clock.now()):
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
                    created_at=billing.clock.now(),
                    completed_at=None,
                )
            )
        return write.remember(session, view, billing.clock.now(), cs.id)

    try:
        return billing.db.write(save)
    except TrialAlreadyUsed:
        expire_trial_checkout(billing, cs.id, acct.kind, quiet=True)
        raise


def session_body(
    billing: BillingDependencies,
    acct: AccountSnapshot,
    customer: str,
    price_id: str,
    plan: Plan | None,
    pack: CreditPack | None,
    interval: str,
    trial: bool,
    code: CodeCheck | None,
) -> dict[str, Any]:
    """The Checkout Session's parameters: what is bought, for which account, and how it is paid."""
    meta = account_metadata(acct)
    base = billing.settings.public_base_url.rstrip("/")
    body: dict[str, Any] = {
        "customer": customer,
        "client_reference_id": acct.id,
        "line_items": [{"price": price_id, "quantity": 1}],
        "success_url": f"{base}/portal/checkout/done?account={acct.id}&session={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{base}/portal/checkout/cancelled?account={acct.id}",
    }
    item_id = plan.id if plan else pack.id  # type: ignore[union-attr]
    if code is not None:
        body["discounts"] = [{"promotion_code": code.promotion_code}]
    elif page_codes_allowed(billing.client, billing.catalog, item_id):
        body["allow_promotion_codes"] = True
    body.update(tax_options(billing.settings, acct.kind))
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
        return body
    assert pack is not None
    pack_meta = {**meta, "chronote_pack_id": pack.id}
    body.update(
        mode="payment",
        metadata=pack_meta,
        payment_intent_data={
            "metadata": {**pack_meta, "chronote_kind": PACK_CHECKOUT},
            "setup_future_usage": "off_session",
        },
        # A receipt with its tax; it names no pack, so it never grants one (0043).
        invoice_creation={
            "enabled": True,
            "invoice_data": {
                "description": f"Chronote {pack.name}",
                "metadata": {**meta, "chronote_kind": PACK_CHECKOUT},
            },
        },
    )
    return body


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


def expire_trial_checkout(
    billing: BillingDependencies, session_id: str, kind: str, quiet: bool = False
) -> None:
    """Close an unpaid trial checkout so that only one can ever start the trial. A checkout
    that was paid meanwhile cannot be closed: its trial is then taken."""
    try:
        request(lambda: billing.client.v1.checkout.sessions.expire(session_id))
    except StripeFailure as exc:
        if exc.kind != "invalid_request":
            raise ExternalServiceError(
                f"Stripe refused or failed to close the earlier trial checkout: {exc}"
            ) from exc
        if quiet:
            log.warning("trial_checkout_not_expired", session=session_id, error=str(exc))
            return
        whose = "this person" if kind == AccountKind.PERSONAL else "this server"
        raise TrialAlreadyUsed(
            f"The free trial of {whose} was started from an earlier checkout.", field="trial"
        ) from exc
