"""Coupons, promotion codes and the discounts they create, as Stripe serves them.

- A coupon takes `percent_off` (up to two decimals) or `amount_off` + `currency` off, `once`,
  `repeating` (`duration_in_months`) or `forever`; `applies_to[products]` limits it to the lines
  of those products; `max_redemptions` and `redeem_by` bound it. Only `name` and `metadata`
  change after creation, as in Stripe.
- A promotion code is a customer-facing code for a coupon (`promotion[coupon]`), with its own
  `active` flag, `expires_at`, `max_redemptions` and `restrictions` (`first_time_transaction`,
  `minimum_amount`), optionally for one `customer`. Codes are matched case-insensitively, and
  two active codes cannot share a code.
- Redeeming (a paid Checkout session, a subscription created with `discounts`) counts once on
  the coupon and on the code. A subscription keeps a `discount` object (`di_...`) whose `end`
  follows the coupon's duration; its invoices apply it while it lasts (`once`: the first invoice
  only). Proration lines are not discountable, as the stand-in's invoice lines say.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from chronote_stripe_local import objects
from chronote_stripe_local.errors import StripeError, invalid_param, missing_param, resource_missing
from chronote_stripe_local.params import Params, apply_metadata

if TYPE_CHECKING:
    from chronote_stripe_local.engine import Engine

DURATIONS = ("once", "repeating", "forever")


def coupon_object(
    *,
    id: str,
    created: int,
    name: str | None,
    percent_off: float | int | None,
    amount_off: int | None,
    currency: str | None,
    duration: str,
    duration_in_months: int | None,
    max_redemptions: int | None,
    redeem_by: int | None,
    metadata: dict[str, str],
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "coupon",
        "amount_off": amount_off,
        "created": created,
        "currency": currency,
        "duration": duration,
        "duration_in_months": duration_in_months,
        "livemode": False,
        "max_redemptions": max_redemptions,
        "metadata": metadata,
        "name": name,
        "percent_off": percent_off,
        "redeem_by": redeem_by,
        "times_redeemed": 0,
        "valid": True,
    }


def promotion_code_object(
    *,
    id: str,
    created: int,
    code: str,
    coupon: str,
    active: bool,
    customer: str | None,
    expires_at: int | None,
    max_redemptions: int | None,
    first_time_transaction: bool,
    minimum_amount: int | None,
    minimum_amount_currency: str | None,
    metadata: dict[str, str],
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "promotion_code",
        "active": active,
        "code": code,
        "created": created,
        "customer": customer,
        "customer_account": None,
        "expires_at": expires_at,
        "livemode": False,
        "max_redemptions": max_redemptions,
        "metadata": metadata,
        "promotion": {"coupon": coupon, "type": "coupon"},
        "restrictions": {
            "first_time_transaction": first_time_transaction,
            "minimum_amount": minimum_amount,
            "minimum_amount_currency": minimum_amount_currency,
        },
        "times_redeemed": 0,
    }


def discount_object(
    *,
    id: str,
    coupon: str,
    promotion_code: str | None,
    customer: str | None,
    start: int,
    end: int | None,
    subscription: str | None = None,
    invoice: str | None = None,
    checkout_session: str | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "discount",
        "checkout_session": checkout_session,
        "customer": customer,
        "customer_account": None,
        "end": end,
        "invoice": invoice,
        "invoice_item": None,
        "promotion_code": promotion_code,
        "source": {"coupon": coupon, "type": "coupon"},
        "start": start,
        "subscription": subscription,
        "subscription_item": None,
    }


def percent_of(amount: int, percent: Any) -> int:
    """`percent` % of `amount` minor units, rounded half up, in exact decimal arithmetic."""
    value = Decimal(amount) * Decimal(str(percent)) / Decimal(100)
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


class Coupons:
    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.store = engine.store

    # --- coupons ---------------------------------------------------------------------------

    def create_coupon(self, p: Params) -> dict[str, Any]:
        coupon_id = p.text("id") or objects.random_token(8)
        if self.store.find(coupon_id) is not None:
            raise StripeError(400, "Coupon already exists.", code="resource_already_exists", param="id")
        percent = self._percent(p)
        amount_off = p.integer("amount_off", minimum=1)
        if (percent is None) == (amount_off is None):
            raise invalid_param(
                "percent_off", "You must specify exactly one of `percent_off` or `amount_off`."
            )
        currency = (p.text("currency") or "").lower() or None
        if amount_off is not None and currency is None:
            raise missing_param("currency")
        duration = p.choice("duration", DURATIONS, "once") or "once"
        months = p.integer("duration_in_months", minimum=1)
        if duration == "repeating" and months is None:
            raise missing_param("duration_in_months")
        if duration != "repeating" and months is not None:
            raise invalid_param(
                "duration_in_months", "`duration_in_months` can only be set when `duration` is `repeating`."
            )
        redeem_by = p.integer("redeem_by")
        if redeem_by is not None and redeem_by <= self.e.now():
            raise invalid_param(
                "redeem_by", "`redeem_by` must be in the future.", "parameter_invalid_integer"
            )
        products = [str(x) for x in p.sub("applies_to").array("products")]
        for product in products:
            self.store.get("product", product, "applies_to[products]")
        coupon = coupon_object(
            id=coupon_id,
            created=self.e.now(),
            name=p.text("name"),
            percent_off=percent,
            amount_off=amount_off,
            currency=currency if amount_off is not None else None,
            duration=duration,
            duration_in_months=months,
            max_redemptions=p.integer("max_redemptions", minimum=1),
            redeem_by=redeem_by,
            metadata=apply_metadata({}, p.raw("metadata")),
        )
        self.store.add(coupon)
        self.store.private[coupon_id]["products"] = products
        self.e.emit("coupon.created", coupon)
        return coupon

    def _percent(self, p: Params) -> float | int | None:
        raw = p.text("percent_off")
        if raw is None:
            return None
        try:
            value = Decimal(raw)
        except InvalidOperation:
            value = Decimal("NaN")
        if not value.is_finite() or not Decimal(0) < value <= Decimal(100) or value != round(value, 2):
            raise invalid_param(
                "percent_off",
                "`percent_off` must be greater than 0 and at most 100, with at most two decimals.",
                "parameter_invalid_decimal",
            )
        return int(value) if value == value.to_integral_value() else float(value)

    def coupon(self, coupon_id: str | None, param: str = "coupon") -> dict[str, Any]:
        coupon = self.store.get("coupon", coupon_id, param)
        if coupon.get("deleted"):
            raise resource_missing("coupon", str(coupon_id), param)
        return coupon

    def update_coupon(self, coupon_id: str, p: Params) -> dict[str, Any]:
        coupon = self.coupon(coupon_id, "id")
        before = self.e.render(coupon)
        if p.has("name"):
            coupon["name"] = p.text("name")
        if p.has("metadata"):
            coupon["metadata"] = apply_metadata(coupon["metadata"], p.raw("metadata"))
        self.e.emit_updated("coupon.updated", coupon, before)
        return coupon

    def delete_coupon(self, coupon_id: str) -> dict[str, Any]:
        """Existing discounts keep working; the coupon cannot be redeemed again."""
        coupon = self.coupon(coupon_id, "id")
        self.e.emit("coupon.deleted", coupon)
        self.store.private[coupon_id]["deleted"] = dict(coupon)
        coupon.clear()
        coupon.update(objects.deleted("coupon", coupon_id))
        for promo in self.store.all("promotion_code"):
            if promo["promotion"]["coupon"] == coupon_id and promo["active"]:
                promo["active"] = False
        return coupon

    def list_coupons(self, p: Params) -> dict[str, Any]:
        items = [c for c in self.store.all("coupon") if not c.get("deleted")]
        return self.e.paginate(items, p, "/v1/coupons")

    def applies_to(self, coupon: dict[str, Any]) -> dict[str, Any]:
        """`applies_to`, which Stripe includes only when expanded."""
        return {"products": list(self.store.private[coupon["id"]].get("products") or [])}

    def refresh_validity(self, coupon: dict[str, Any]) -> None:
        if coupon.get("deleted"):
            return
        now = self.e.now()
        expired = coupon["redeem_by"] is not None and coupon["redeem_by"] <= now
        exhausted = (
            coupon["max_redemptions"] is not None and coupon["times_redeemed"] >= coupon["max_redemptions"]
        )
        coupon["valid"] = not (expired or exhausted)

    # --- promotion codes -------------------------------------------------------------------

    def create_promotion_code(self, p: Params) -> dict[str, Any]:
        promotion = p.sub("promotion")
        if promotion.choice("type", ("coupon",)) is None:
            raise missing_param("promotion[type]")
        coupon = self.coupon(promotion.req_text("coupon"), "promotion[coupon]")
        code = p.text("code") or objects.random_token(8).upper()
        if not all(ch.isalnum() or ch in "-_" for ch in code) or len(code) > 500:
            raise invalid_param("code", "Promotion codes may only contain letters, digits, - and _.")
        if self.find_active_code(code) is not None:
            raise invalid_param(
                "code",
                f"An active promotion code with `code: {code}` already exists.",
                "resource_already_exists",
            )
        customer = p.text("customer")
        if customer:
            self.e.customer(customer)
        expires_at = p.integer("expires_at")
        if expires_at is not None and expires_at <= self.e.now():
            raise invalid_param(
                "expires_at", "`expires_at` must be in the future.", "parameter_invalid_integer"
            )
        if coupon["redeem_by"] is not None and expires_at is not None and expires_at > coupon["redeem_by"]:
            raise invalid_param(
                "expires_at", "The promotion code cannot expire after its coupon's `redeem_by`."
            )
        restrictions = p.sub("restrictions")
        minimum = restrictions.integer("minimum_amount", minimum=1)
        minimum_currency = (restrictions.text("minimum_amount_currency") or "").lower() or None
        if minimum is not None and minimum_currency is None:
            raise missing_param("restrictions[minimum_amount_currency]")
        promo = promotion_code_object(
            id=objects.new_id("promo_1"),
            created=self.e.now(),
            code=code,
            coupon=coupon["id"],
            active=bool(p.flag("active", True)),
            customer=customer,
            expires_at=expires_at,
            max_redemptions=p.integer("max_redemptions", minimum=1),
            first_time_transaction=bool(restrictions.flag("first_time_transaction", False)),
            minimum_amount=minimum,
            minimum_amount_currency=minimum_currency if minimum is not None else None,
            metadata=apply_metadata({}, p.raw("metadata")),
        )
        self.store.add(promo)
        self.e.emit("promotion_code.created", promo)
        return promo

    def update_promotion_code(self, promo_id: str, p: Params) -> dict[str, Any]:
        promo = self.store.get("promotion_code", promo_id)
        before = self.e.render(promo)
        if p.has("active"):
            active = bool(p.flag("active"))
            if active and not promo["active"]:
                other = self.find_active_code(promo["code"])
                if other is not None and other["id"] != promo["id"]:
                    raise invalid_param(
                        "active", f"An active promotion code with `code: {promo['code']}` already exists."
                    )
                coupon = self.store.find(promo["promotion"]["coupon"])
                if coupon is None or coupon.get("deleted"):
                    raise invalid_param("active", "The promotion code's coupon was deleted.")
            promo["active"] = active
        if p.has("metadata"):
            promo["metadata"] = apply_metadata(promo["metadata"], p.raw("metadata"))
        self.e.emit_updated("promotion_code.updated", promo, before)
        return promo

    def list_promotion_codes(self, p: Params) -> dict[str, Any]:
        items = self.store.all("promotion_code")
        active = p.flag("active")
        if active is not None:
            items = [i for i in items if i["active"] == active]
        code = p.text("code")
        if code:
            items = [i for i in items if i["code"].lower() == code.lower()]
        coupon = p.text("coupon")
        if coupon:
            items = [i for i in items if i["promotion"]["coupon"] == coupon]
        customer = p.text("customer")
        if customer:
            items = [i for i in items if i["customer"] == customer]
        return self.e.paginate(items, p, "/v1/promotion_codes")

    def find_active_code(self, code: str) -> dict[str, Any] | None:
        wanted = code.strip().lower()
        for promo in self.store.all("promotion_code"):
            if promo["active"] and promo["code"].lower() == wanted:
                return promo
        return None

    # --- redeeming -------------------------------------------------------------------------

    def resolve(
        self, p: Params, param: str = "discounts"
    ) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        """The coupon (and code) named by `discounts[0][coupon|promotion_code]`, if any."""
        entries = p.subarray(param)
        if not entries:
            return None
        if len(entries) > 1:
            raise invalid_param(param, "You may only specify one discount.")
        entry = entries[0]
        promo_id = entry.text("promotion_code")
        coupon_id = entry.text("coupon")
        if (promo_id is None) == (coupon_id is None):
            raise invalid_param(entry.prefix, "Pass exactly one of `coupon` or `promotion_code`.")
        if promo_id is not None:
            promo = self.store.get("promotion_code", promo_id, f"{entry.prefix}[promotion_code]")
            return self.coupon(promo["promotion"]["coupon"], f"{entry.prefix}[promotion_code]"), promo
        return self.coupon(coupon_id, f"{entry.prefix}[coupon]"), None

    def check(
        self,
        coupon: dict[str, Any],
        promo: dict[str, Any] | None,
        *,
        customer: str | None,
        lines: list[tuple[int, str]],
        currency: str,
        param: str,
    ) -> None:
        """Stripe's refusals for a discount that cannot be redeemed on these lines."""
        now = self.e.now(customer)
        self.refresh_validity(coupon)
        what = f"promotion code `{promo['code']}`" if promo else f"coupon `{coupon['id']}`"
        if promo is not None:
            if not promo["active"]:
                raise invalid_param(param, f"The {what} is not active.", "promotion_code_invalid")
            if promo["expires_at"] is not None and promo["expires_at"] <= now:
                raise invalid_param(param, f"The {what} has expired.", "promotion_code_invalid")
            if promo["max_redemptions"] is not None and promo["times_redeemed"] >= promo["max_redemptions"]:
                raise invalid_param(
                    param,
                    f"The {what} has reached its maximum number of redemptions.",
                    "promotion_code_invalid",
                )
            if promo["customer"] is not None and promo["customer"] != customer:
                raise invalid_param(param, f"The {what} is for another customer.", "promotion_code_invalid")
            restrictions = promo["restrictions"]
            if restrictions["first_time_transaction"] and customer and self._has_paid_before(customer):
                raise invalid_param(
                    param, f"The {what} is only for a customer's first purchase.", "promotion_code_invalid"
                )
            total = sum(amount for amount, _ in lines)
            if restrictions["minimum_amount"] is not None and (
                restrictions["minimum_amount_currency"] != currency or total < restrictions["minimum_amount"]
            ):
                minimum = objects.money(
                    restrictions["minimum_amount"], restrictions["minimum_amount_currency"]
                )
                raise invalid_param(
                    param, f"The {what} needs an order of at least {minimum}.", "promotion_code_invalid"
                )
        if not coupon["valid"]:
            reason = (
                "has expired"
                if coupon["redeem_by"] and coupon["redeem_by"] <= now
                else ("has reached its maximum number of redemptions")
            )
            raise invalid_param(param, f"The {what} {reason}.", "coupon_expired")
        if coupon["amount_off"] is not None and coupon["currency"] != currency:
            raise invalid_param(param, f"The {what} is for {coupon['currency']}, not {currency}.")
        if not any(self.applies(coupon, product) for _, product in lines):
            raise invalid_param(param, f"The {what} does not apply to anything in this order.")

    def _has_paid_before(self, customer: str) -> bool:
        return any(
            ch["customer"] == customer and ch["status"] == "succeeded" for ch in self.store.all("charge")
        )

    def applies(self, coupon: dict[str, Any], product: str) -> bool:
        products = self.store.private[coupon["id"]].get("products") or []
        return not products or product in products

    def amounts_off(self, coupon: dict[str, Any], lines: list[tuple[int, str, bool]]) -> list[int]:
        """What the coupon takes off each line (amount, product, discountable): a percentage per
        line, or a fixed amount spread over the eligible lines in proportion, never more than
        they cost."""
        eligible = [
            i
            for i, (amount, product, ok) in enumerate(lines)
            if ok and amount > 0 and self.applies(coupon, product)
        ]
        off = [0] * len(lines)
        if coupon["percent_off"] is not None:
            for i in eligible:
                off[i] = percent_of(lines[i][0], coupon["percent_off"])
            return off
        base = sum(lines[i][0] for i in eligible)
        budget = min(int(coupon["amount_off"] or 0), base)
        given = 0
        for n, i in enumerate(eligible):
            share = budget - given if n == len(eligible) - 1 else budget * lines[i][0] // base
            off[i] = share
            given += share
        return off

    def redeem(self, coupon: dict[str, Any], promo: dict[str, Any] | None) -> None:
        before = self.e.render(coupon)
        coupon["times_redeemed"] += 1
        self.refresh_validity(coupon)
        self.e.emit_updated("coupon.updated", coupon, before)
        if promo is not None:
            before = self.e.render(promo)
            promo["times_redeemed"] += 1
            if promo["max_redemptions"] is not None and promo["times_redeemed"] >= promo["max_redemptions"]:
                promo["active"] = False
            self.e.emit_updated("promotion_code.updated", promo, before)

    # --- discounts on subscriptions and invoices -------------------------------------------

    def attach_to_subscription(
        self, sub: dict[str, Any], coupon: dict[str, Any], promo: dict[str, Any] | None, start: int
    ) -> dict[str, Any]:
        """A subscription's discount, ending as the coupon's duration says."""
        end = None
        if coupon["duration"] == "repeating":
            from chronote_stripe_local.billing import add_intervals

            end = add_intervals(start, "month", 1, int(coupon["duration_in_months"]))
        discount = discount_object(
            id=objects.new_id("di_1"),
            coupon=coupon["id"],
            promotion_code=promo["id"] if promo else None,
            customer=sub["customer"],
            start=start,
            end=end,
            subscription=sub["id"],
        )
        self.store.add(discount)
        self.store.private[discount["id"]]["duration"] = coupon["duration"]
        sub["discounts"] = [*sub["discounts"], discount["id"]]
        return discount

    def for_invoice(self, sub: dict[str, Any] | None, at: int) -> list[str]:
        """The subscription's discounts in force at `at`, for a new invoice."""
        if sub is None:
            return []
        out = []
        for discount_id in sub["discounts"]:
            discount = self.store.find(discount_id)
            if discount is not None and (discount["end"] is None or discount["end"] > at):
                out.append(discount_id)
        return out

    def applied_to_invoice(self, sub: dict[str, Any] | None, inv: dict[str, Any]) -> None:
        """After an invoice used a `once` discount, the subscription no longer has it."""
        if sub is None:
            return
        for discount_id in list(inv["discounts"]):
            discount = self.store.find(discount_id)
            if discount is None or self.store.private[discount_id].get("duration") != "once":
                continue
            if discount_id in sub["discounts"]:
                sub["discounts"] = [d for d in sub["discounts"] if d != discount_id]
                discount["end"] = inv["created"]
                self.e.emit("customer.discount.deleted", discount)

    def coupon_of(self, discount_id: str) -> dict[str, Any] | None:
        discount = self.store.find(discount_id)
        if discount is None:
            return None
        coupon_id = discount["source"]["coupon"]
        coupon = self.store.find(coupon_id)
        if coupon is not None and coupon.get("deleted"):
            coupon = self.store.private[coupon_id].get("deleted")
        return coupon
