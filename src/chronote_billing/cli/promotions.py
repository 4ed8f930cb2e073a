"""Operator commands for coupons and promotion codes that are not part of the catalog (0042)."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Annotated

import typer
from rich.table import Table

from chronote_billing.catalog.service import Coupon, PromotionCode
from chronote_billing.cli.output import console, container, handle_errors
from chronote_billing.core.errors import NotFound, ValidationFailed
from chronote_billing.integrations.stripe.client import call, to_dict
from chronote_billing.stripe_sync.promotions import (
    APPLIES_TO_KEY,
    InvalidCoupon,
    check_coupon,
    create_coupon,
    create_promotion_code,
    find_code,
    get_coupon,
    products_by_group,
)


def _day_end(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise ValidationFailed(f"{option} must be a date (YYYY-MM-DD), got '{value}'.") from None
    return datetime.combine(day, time(23, 59, 59), tzinfo=UTC)


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d") if ts else "—"


def register(app: typer.Typer) -> None:
    coupon_app = typer.Typer(
        help="Coupons in Stripe (catalog coupons come from `catalog sync`).", no_args_is_help=True
    )
    promo_app = typer.Typer(help="Promotion codes people type for a coupon.", no_args_is_help=True)
    app.add_typer(coupon_app, name="coupon")
    app.add_typer(promo_app, name="promo")

    @coupon_app.command("create")
    @handle_errors
    def coupon_create(
        coupon_id: Annotated[str, typer.Argument(help="The coupon's id, e.g. spring_server_pro.")],
        duration: Annotated[str, typer.Option(help="once, repeating or forever.")],
        percent_off: Annotated[int | None, typer.Option(help="A whole percentage, 1 to 100.")] = None,
        amount_off: Annotated[
            int | None, typer.Option(help="An amount in cents (the catalog's currency).")
        ] = None,
        months: Annotated[
            int | None, typer.Option(help="With --duration repeating: how many months.")
        ] = None,
        applies_to: Annotated[
            list[str] | None, typer.Option(help="A plan or pack id it is limited to (repeatable).")
        ] = None,
        max_redemptions: Annotated[
            int | None, typer.Option(help="How many times it may be redeemed.")
        ] = None,
        redeem_by: Annotated[
            str | None, typer.Option(help="Last day it may be redeemed (YYYY-MM-DD, UTC).")
        ] = None,
        name: Annotated[str | None, typer.Option(help="What invoices and receipts call it.")] = None,
    ) -> None:
        """Create a coupon, limited to some plans or packs if you say so."""
        c = container()
        catalog = c.catalog
        coupon = Coupon(
            id=coupon_id,
            name=name or coupon_id,
            percent_off=percent_off,
            amount_off=amount_off,
            currency=catalog.currency,
            duration=duration,
            duration_in_months=months,
            applies_to=tuple(applies_to or ()),
            max_redemptions=max_redemptions,
            redeem_by=_day_end(redeem_by, "--redeem-by"),
        )
        check_coupon(coupon, catalog, c.clock.now())
        client = c.billing.client
        products = products_by_group(client, catalog) if coupon.applies_to else {}
        missing = {catalog.product_of(i) for i in coupon.applies_to} - set(products)
        if missing:
            raise InvalidCoupon(
                "Stripe has no prices for that product yet; run 'chronote-billing catalog sync'."
            )
        created = create_coupon(client, catalog, coupon, products, "operator")
        console.print(f"created coupon {created['id']}", highlight=False)

    @coupon_app.command("list")
    @handle_errors
    def coupon_list() -> None:
        """Every coupon in Stripe, with what it takes off and how often it was used."""
        client = container().billing.client
        table = Table("coupon", "off", "duration", "limited to", "redeemed", "until", "valid")
        listing = call("list coupons", lambda: client.v1.coupons.list(params={"limit": 100}))
        for raw in listing.auto_paging_iter():
            coupon = to_dict(raw)
            off = (
                f"{coupon['percent_off']}%"
                if coupon.get("percent_off")
                else f"{coupon['amount_off']} {coupon['currency']}"
            )
            months = f" ({coupon['duration_in_months']} months)" if coupon.get("duration_in_months") else ""
            limit = coupon.get("max_redemptions")
            table.add_row(
                coupon["id"],
                off,
                coupon["duration"] + months,
                (coupon.get("metadata") or {}).get(APPLIES_TO_KEY) or "everything",
                f"{coupon['times_redeemed']}" + (f" of {limit}" if limit else ""),
                _when(coupon.get("redeem_by")),
                "yes" if coupon.get("valid") else "no",
            )
        console.print(table)

    @coupon_app.command("delete")
    @handle_errors
    def coupon_delete(coupon_id: Annotated[str, typer.Argument(help="The coupon's id.")]) -> None:
        """Delete a coupon: it cannot be redeemed again; discounts already given keep running."""
        client = container().billing.client
        call("delete the coupon", lambda: client.v1.coupons.delete(coupon_id))
        console.print(f"deleted coupon {coupon_id}", highlight=False)

    @promo_app.command("create")
    @handle_errors
    def promo_create(
        code: Annotated[str, typer.Argument(help="What people type, e.g. SPRING25.")],
        coupon: Annotated[str, typer.Option(help="The coupon it redeems.")],
        max_redemptions: Annotated[int | None, typer.Option(help="How many times it may be used.")] = None,
        expires: Annotated[
            str | None, typer.Option(help="Last day it may be used (YYYY-MM-DD, UTC).")
        ] = None,
        first_purchase_only: Annotated[
            bool, typer.Option("--first-purchase-only", help="Only for a customer's first payment.")
        ] = False,
    ) -> None:
        """Create a promotion code for a coupon."""
        c = container()
        if not code.replace("-", "").replace("_", "").isalnum() or len(code) > 64:
            raise ValidationFailed("A code is 1-64 letters, digits, - or _.")
        if max_redemptions is not None and max_redemptions < 1:
            raise ValidationFailed("--max-redemptions is at least 1.")
        expires_at = _day_end(expires, "--expires")
        if expires_at is not None and expires_at <= c.clock.now():
            raise ValidationFailed("--expires must be in the future.")
        if get_coupon(c.billing.client, coupon) is None:
            raise NotFound(f"There is no coupon '{coupon}'; create it with 'chronote-billing coupon create'.")
        promo = PromotionCode(code, coupon, max_redemptions, expires_at, first_purchase_only, True)
        key = f"{coupon}:{max_redemptions}:{expires}:{first_purchase_only}"
        created = create_promotion_code(c.billing.client, promo, "operator", key)
        console.print(
            f"created promotion code {created['code']} ({created['id']}) for coupon {coupon}", highlight=False
        )

    @promo_app.command("list")
    @handle_errors
    def promo_list(
        coupon: Annotated[str | None, typer.Option(help="Only codes of this coupon.")] = None,
    ) -> None:
        """Promotion codes in Stripe, newest first."""
        client = container().billing.client
        params: dict[str, object] = {"limit": 100}
        if coupon:
            params["coupon"] = coupon
        table = Table("code", "coupon", "redeemed", "expires", "active")
        listing = call("list promotion codes", lambda: client.v1.promotion_codes.list(params=params))  # type: ignore[arg-type]
        for raw in listing.auto_paging_iter():
            promo = to_dict(raw)
            limit = promo.get("max_redemptions")
            linked = (promo.get("promotion") or {}).get("coupon")
            table.add_row(
                promo["code"],
                linked if isinstance(linked, str) else (linked or {}).get("id", ""),
                f"{promo['times_redeemed']}" + (f" of {limit}" if limit else ""),
                _when(promo.get("expires_at")),
                "yes" if promo.get("active") else "no",
            )
        console.print(table)

    @promo_app.command("deactivate")
    @handle_errors
    def promo_deactivate(code: Annotated[str, typer.Argument(help="The code to stop.")]) -> None:
        """Stop a promotion code; discounts already given keep running."""
        client = container().billing.client
        found = find_code(client, code)
        if found is None:
            raise NotFound(f"There is no promotion code '{code}'.")
        if found.get("active"):
            call(
                "deactivate the promotion code",
                lambda: client.v1.promotion_codes.update(str(found["id"]), params={"active": False}),
            )
        console.print(f"promotion code {found['code']} is inactive", highlight=False)
