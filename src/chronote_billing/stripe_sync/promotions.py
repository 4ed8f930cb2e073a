"""Coupons and promotion codes (decision 0042): created in Stripe by `catalog sync` and the
operator CLI, read back from Stripe when a checkout names a code.

Stripe keeps the counts, expiry and the discount on every invoice; what Stripe cannot express,
a coupon limited to some plans or packs of a product, is kept on the coupon as metadata
(`chronote_applies_to`) and checked here. Every function calls Stripe and none opens a database
transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chronote_billing.catalog.service import COUPON_DURATIONS, Catalog, Coupon, PromotionCode
from chronote_billing.core.errors import ExternalServiceError, ValidationFailed
from chronote_billing.integrations.stripe.client import (
    StripeClient,
    StripeFailure,
    call,
    request,
    stripe_key,
    to_dict,
)

from .prices import desired_prices, fetch_prices
from .timestamps import from_ts, to_ts

APPLIES_TO_KEY = "chronote_applies_to"
MANAGED_KEY = "chronote_managed"
CODE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class UnknownPromotionCode(ValidationFailed):
    code = "unknown_promotion_code"
    title = "Unknown promotion code"


class PromotionCodeInactive(ValidationFailed):
    code = "promotion_code_inactive"
    title = "Promotion code not active"


class PromotionCodeExpired(ValidationFailed):
    code = "promotion_code_expired"
    title = "Promotion code expired"


class PromotionCodeExhausted(ValidationFailed):
    code = "promotion_code_exhausted"
    title = "Promotion code used up"


class PromotionCodeNotApplicable(ValidationFailed):
    code = "promotion_code_not_applicable"
    title = "Promotion code not valid for this purchase"


class PromotionCodeNotRedeemable(ValidationFailed):
    code = "promotion_code_not_redeemable"
    title = "Promotion code cannot be used here"


class InvalidCoupon(ValidationFailed):
    code = "invalid_coupon"
    title = "Invalid coupon"


# Stripe's error codes for a discount it refuses when a session is created.
STRIPE_DISCOUNT_REFUSALS = ("promotion_code_invalid", "coupon_expired")


def applies_to(meta: dict[str, Any] | None) -> set[str]:
    return {x for x in str((meta or {}).get(APPLIES_TO_KEY) or "").split(",") if x}


@dataclass(frozen=True)
class CodeCheck:
    promotion_code: str  # Stripe id (promo_...)
    code: str
    coupon: str


def resolve_code(
    client: StripeClient,
    catalog: Catalog,
    code: str,
    *,
    item_id: str,
    product_id: str,
    now: datetime,
) -> CodeCheck:
    """The redeemable promotion code `code` for buying `item_id` (a plan or pack), or the reason
    it cannot be used, each with its own error code."""
    text = code.strip()
    if not CODE_PATTERN.match(text):
        raise UnknownPromotionCode(f"'{code}' is not a promotion code.", field="promotion_code")
    listing = call(
        "look up the promotion code",
        lambda: client.v1.promotion_codes.list(
            params={"code": text, "limit": 20, "expand": ["data.promotion.coupon.applies_to"]}
        ),
    )
    promos = [to_dict(p) for p in listing.data]
    if not promos:
        raise UnknownPromotionCode(
            f"There is no promotion code '{text}'.", field="promotion_code", promotion_code=text
        )
    active = [p for p in promos if p.get("active")]
    promo = active[0] if active else max(promos, key=lambda p: int(p.get("created") or 0))
    coupon = (promo.get("promotion") or {}).get("coupon") or {}
    if not isinstance(coupon, dict):
        coupon = to_dict(call("read the coupon", lambda: client.v1.coupons.retrieve(str(coupon))))
    label = f"Promotion code {promo['code']}"
    details = {"field": "promotion_code", "promotion_code": promo["code"]}
    used_up = (
        promo.get("max_redemptions") is not None and promo["times_redeemed"] >= promo["max_redemptions"]
    ) or (coupon.get("max_redemptions") is not None and coupon["times_redeemed"] >= coupon["max_redemptions"])
    if used_up:
        raise PromotionCodeExhausted(f"{label} has been used as many times as it may be.", **details)
    ended = [t for t in (promo.get("expires_at"), coupon.get("redeem_by")) if t]
    if any(from_ts(t) <= now for t in ended):
        raise PromotionCodeExpired(f"{label} expired on {from_ts(min(ended)).date()}.", **details)
    if not promo.get("active") or not coupon.get("valid", True):
        raise PromotionCodeInactive(f"{label} is not active.", **details)
    limited = applies_to(coupon.get("metadata"))
    products = set((coupon.get("applies_to") or {}).get("products") or [])
    if (limited and item_id not in limited) or (products and product_id not in products):
        allowed = ", ".join(sorted(limited)) or "other products"
        raise PromotionCodeNotApplicable(
            f"{label} is not valid for {item_id}; it is for {allowed}.", item=item_id, **details
        )
    return CodeCheck(promotion_code=str(promo["id"]), code=str(promo["code"]), coupon=str(coupon.get("id")))


def page_codes_allowed(client: StripeClient, catalog: Catalog, item_id: str) -> bool:
    """Whether Stripe's own page may take codes for buying `item_id`: not while a redeemable
    coupon is limited to some but not all of that product's plans or packs, which only we can
    check."""
    items = set(catalog.product_items(catalog.product_of(item_id)))
    coupons = call("list coupons", lambda: client.v1.coupons.list(params={"limit": 100}))
    for raw in coupons.auto_paging_iter():
        coupon = to_dict(raw)
        limited = applies_to(coupon.get("metadata")) & items
        if coupon.get("valid", True) and limited and limited != items:
            return False
    return True


# ---------------------------------------------------------------------- creating them


def coupon_params(coupon: Coupon, products: dict[str, str], catalog: Catalog, managed: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "id": coupon.id,
        "name": coupon.name,
        "duration": coupon.duration,
        "metadata": {APPLIES_TO_KEY: ",".join(coupon.applies_to), MANAGED_KEY: managed},
    }
    if coupon.percent_off is not None:
        params["percent_off"] = coupon.percent_off
    else:
        params.update(amount_off=coupon.amount_off, currency=coupon.currency)
    if coupon.duration == "repeating":
        params["duration_in_months"] = coupon.duration_in_months
    if coupon.max_redemptions is not None:
        params["max_redemptions"] = coupon.max_redemptions
    if coupon.redeem_by is not None:
        params["redeem_by"] = to_ts(coupon.redeem_by)
    if coupon.applies_to:
        wanted = sorted({products[catalog.product_of(i)] for i in coupon.applies_to})
        params["applies_to"] = {"products": wanted}
    return params


def check_coupon(coupon: Coupon, catalog: Catalog, now: datetime) -> None:
    """The CLI's checks, with readable messages, before anything reaches Stripe."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", coupon.id):
        raise InvalidCoupon("A coupon id is 1-64 letters, digits, - or _.", field="id")
    if (coupon.percent_off is None) == (coupon.amount_off is None):
        raise InvalidCoupon("Give exactly one of --percent-off or --amount-off.", field="percent_off")
    if coupon.percent_off is not None and not 1 <= coupon.percent_off <= 100:
        raise InvalidCoupon("--percent-off is a whole percentage from 1 to 100.", field="percent_off")
    if coupon.amount_off is not None and coupon.amount_off <= 0:
        raise InvalidCoupon("--amount-off is a positive amount in cents.", field="amount_off")
    if coupon.duration not in COUPON_DURATIONS:
        raise InvalidCoupon(f"--duration is one of {', '.join(COUPON_DURATIONS)}.", field="duration")
    if (coupon.duration == "repeating") != (coupon.duration_in_months is not None):
        raise InvalidCoupon(
            "--months goes with --duration repeating, and only with it.", field="duration_in_months"
        )
    if coupon.duration_in_months is not None and coupon.duration_in_months < 1:
        raise InvalidCoupon("--months is at least 1.", field="duration_in_months")
    unknown = [i for i in coupon.applies_to if i not in catalog.plans and i not in catalog.credit_packs]
    if unknown:
        raise InvalidCoupon(f"Unknown plan or pack: {', '.join(unknown)}.", field="applies_to")
    free = [i for i in coupon.applies_to if i in catalog.plans and catalog.plans[i].is_free]
    if free:
        raise InvalidCoupon(f"{', '.join(free)} is free; there is nothing to discount.", field="applies_to")
    if coupon.max_redemptions is not None and coupon.max_redemptions < 1:
        raise InvalidCoupon("--max-redemptions is at least 1.", field="max_redemptions")
    if coupon.redeem_by is not None and coupon.redeem_by <= now:
        raise InvalidCoupon("--redeem-by must be in the future.", field="redeem_by")


def create_coupon(
    client: StripeClient, catalog: Catalog, coupon: Coupon, products: dict[str, str], managed: str
) -> dict[str, Any]:
    params = coupon_params(coupon, products, catalog, managed)
    return to_dict(
        call(
            "create the coupon",
            lambda: client.v1.coupons.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": stripe_key("coupon", coupon.id)},
            ),
        )
    )


def promotion_code_params(code: PromotionCode, managed: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "code": code.code,
        "promotion": {"type": "coupon", "coupon": code.coupon},
        "active": code.active,
        "metadata": {MANAGED_KEY: managed},
        "restrictions": {"first_time_transaction": code.first_time_transaction},
    }
    if code.max_redemptions is not None:
        params["max_redemptions"] = code.max_redemptions
    if code.expires_at is not None:
        params["expires_at"] = to_ts(code.expires_at)
    return params


def create_promotion_code(
    client: StripeClient, code: PromotionCode, managed: str, key: str
) -> dict[str, Any]:
    params = promotion_code_params(code, managed)
    return to_dict(
        call(
            "create the promotion code",
            lambda: client.v1.promotion_codes.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": stripe_key("promotion-code", code.code, key)},
            ),
        )
    )


def get_coupon(client: StripeClient, coupon_id: str) -> dict[str, Any] | None:
    """A coupon with its `applies_to`, or None when Stripe has none by that id."""
    try:
        return to_dict(
            request(lambda: client.v1.coupons.retrieve(coupon_id, params={"expand": ["applies_to"]}))
        )
    except StripeFailure as exc:
        if exc.missing:
            return None
        raise ExternalServiceError(
            f"Stripe refused or failed to read the coupon: {exc.user_message or exc}"
        ) from exc


def find_code(client: StripeClient, code: str) -> dict[str, Any] | None:
    """The active promotion code `code`, else its most recent inactive one."""
    listing = call(
        "look up the promotion code",
        lambda: client.v1.promotion_codes.list(params={"code": code, "limit": 20}),
    )
    promos = [to_dict(p) for p in listing.data]
    active = [p for p in promos if p.get("active")]
    if active:
        return active[0]
    return max(promos, key=lambda p: int(p.get("created") or 0)) if promos else None


def products_by_group(client: StripeClient, catalog: Catalog) -> dict[str, str]:
    """Stripe product ids of the catalog's product groups, read from their prices."""
    wanted = desired_prices(catalog)
    prices = fetch_prices(client, [w.lookup_key for w in wanted])
    out: dict[str, str] = {}
    for want in wanted:
        found = prices.get(want.lookup_key)
        if found is not None and want.product not in out:
            product = found["product"]
            out[want.product] = product if isinstance(product, str) else product["id"]
    return out
