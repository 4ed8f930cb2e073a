"""`catalog sync`: make Stripe's products and prices match the catalog, found by lookup key,
and keep our customer portal configuration (docs/decisions/0025).

Running it twice changes nothing the second time. A price whose amount, currency or interval
changed is replaced: a new price takes over the lookup key and the old one is archived (prices
are never deleted, so past invoices keep their price).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chronote_billing.catalog.service import Catalog, load_catalog
from chronote_billing.integrations.stripe.client import StripeClient, call, stripe_key, to_dict

from .prices import DesiredPrice, desired_prices, fetch_prices, product_id_of
from .promotions import coupon_params, create_coupon, find_code, get_coupon, promotion_code_params


@dataclass
class SyncReport:
    actions: list[tuple[str, str, str]] = field(default_factory=list)  # (action, object, detail)

    def add(self, action: str, obj: str, detail: str = "") -> None:
        self.actions.append((action, obj, detail))

    @property
    def changed(self) -> bool:
        return any(a != "unchanged" for a, _, _ in self.actions)

    def count(self, action: str) -> int:
        return sum(1 for a, _, _ in self.actions if a == action)


def _price_matches(existing: Any, want: DesiredPrice, product_id: str) -> bool:
    recurring = existing.get("recurring")
    interval = recurring["interval"] if recurring else None
    count = recurring.get("interval_count", 1) if recurring else None
    return (
        existing.get("unit_amount") == want.unit_amount
        and existing.get("currency") == want.currency
        and interval == want.interval
        and (want.interval is None or count == 1)
        and product_id_of(existing) == product_id
    )


def sync_catalog(client: StripeClient, catalog: Catalog | None = None, dry_run: bool = False) -> SyncReport:
    catalog = catalog or load_catalog()
    report = SyncReport()
    wanted = desired_prices(catalog)
    existing = fetch_prices(client, [w.lookup_key for w in wanted])

    # Products: the one an existing price of the group belongs to (Chronote Server's prices exist
    # today), else one marked with our metadata, else a new one.
    products: dict[str, str] = {}
    for want in wanted:
        if want.product not in products and want.lookup_key in existing:
            products[want.product] = product_id_of(existing[want.lookup_key])
    listed = None
    for key, spec in catalog.products.items():
        desired_meta = {"chronote_product": key}
        if key not in products:
            if listed is None:
                listed = call("list products", lambda: client.v1.products.list(params={"limit": 100}))
            match = next(
                (
                    p
                    for p in map(to_dict, listed.data)
                    if (p.get("metadata") or {}).get("chronote_product") == key
                ),
                None,
            )
            if match is not None:
                products[key] = match["id"]
            elif dry_run:
                report.add("create", f"product {key}", spec["name"])
                products[key] = f"(new {key})"
                continue
            else:
                created = to_dict(
                    call(
                        "create a product",
                        lambda key=key, spec=spec: client.v1.products.create(  # type: ignore[misc]
                            params={
                                "name": spec["name"],
                                "description": spec.get("description") or spec["name"],
                                "metadata": {"chronote_product": key},
                            },
                            options={
                                "idempotency_key": stripe_key("catalog", catalog.version, "product", key)
                            },
                        ),
                    )
                )
                products[key] = created["id"]
                report.add("create", f"product {key}", created["id"])
                continue
        product = to_dict(
            call(
                "read a product",
                lambda key=key: client.v1.products.retrieve(products[key]),  # type: ignore[misc]
            )
        )
        changes: dict[str, Any] = {}
        if product.get("name") != spec["name"]:
            changes["name"] = spec["name"]
        if (spec.get("description") or spec["name"]) != product.get("description"):
            changes["description"] = spec.get("description") or spec["name"]
        if (product.get("metadata") or {}).get("chronote_product") != key:
            changes["metadata"] = desired_meta
        if not product.get("active", True):
            changes["active"] = True
        if not changes:
            report.add("unchanged", f"product {key}", products[key])
        elif dry_run:
            report.add("update", f"product {key}", ", ".join(sorted(changes)))
        else:
            call(
                "update a product",
                lambda key=key, changes=changes: client.v1.products.update(  # type: ignore[misc]
                    products[key], params=changes
                ),
            )
            report.add("update", f"product {key}", ", ".join(sorted(changes)))

    for want in wanted:
        product_id = products[want.product]
        current = existing.get(want.lookup_key)
        if current is not None and _price_matches(current, want, product_id):
            meta = {k: str(v) for k, v in (current.get("metadata") or {}).items()}
            if (
                all(meta.get(k) == v for k, v in want.metadata.items())
                and current.get("nickname") == want.nickname
            ):
                report.add("unchanged", f"price {want.lookup_key}", current["id"])
                continue
            if dry_run:
                report.add("update", f"price {want.lookup_key}", "metadata")
                continue
            call(
                "update a price",
                lambda current=current, want=want: client.v1.prices.update(  # type: ignore[misc]
                    current["id"], params={"metadata": want.metadata, "nickname": want.nickname}
                ),
            )
            report.add("update", f"price {want.lookup_key}", "metadata")
            continue
        if dry_run:
            report.add("create", f"price {want.lookup_key}", f"{want.unit_amount} {want.currency}")
            if current is not None:
                report.add("archive", f"price {want.lookup_key}", current["id"])
            continue
        params: dict[str, Any] = {
            "product": product_id,
            "currency": want.currency,
            "unit_amount": want.unit_amount,
            "lookup_key": want.lookup_key,
            "transfer_lookup_key": True,
            "metadata": want.metadata,
            "nickname": want.nickname,
        }
        if want.interval:
            params["recurring"] = {"interval": want.interval, "interval_count": 1}
        new_price = call(
            "create a price",
            lambda params=params, want=want: client.v1.prices.create(  # type: ignore[misc]
                params=params,
                options={
                    "idempotency_key": stripe_key(
                        "catalog", catalog.version, "price", want.lookup_key, str(want.unit_amount)
                    )
                },
            ),
        )
        report.add("create", f"price {want.lookup_key}", new_price.id)
        if current is not None and current["id"] != new_price.id:
            call(
                "archive a price",
                lambda current=current: client.v1.prices.update(  # type: ignore[misc]
                    current["id"], params={"active": False}
                ),
            )
            report.add("archive", f"price {want.lookup_key}", current["id"])
    sync_promotions(client, catalog, products, report, dry_run)
    sync_portal_configuration(client, catalog, report, dry_run)
    return report


# --- coupons and promotion codes (decision 0042) -----------------------------------------------

_COUPON_TERMS = (
    "percent_off",
    "amount_off",
    "currency",
    "duration",
    "duration_in_months",
    "max_redemptions",
    "redeem_by",
)


def sync_promotions(
    client: StripeClient, catalog: Catalog, products: dict[str, str], report: SyncReport, dry_run: bool
) -> None:
    """Catalog coupons by id, promotion codes by code. Stripe's coupon terms never change after
    creation: a catalog coupon whose terms differ is reported as a conflict, not replaced."""
    for coupon in catalog.coupons.values():
        want = coupon_params(coupon, products, catalog, "catalog")
        existing = get_coupon(client, coupon.id)
        if existing is None:
            if dry_run:
                report.add("create", f"coupon {coupon.id}", coupon.name)
            else:
                create_coupon(client, catalog, coupon, products, "catalog")
                report.add("create", f"coupon {coupon.id}", coupon.name)
            continue
        have_products = sorted((existing.get("applies_to") or {}).get("products") or [])
        if any(existing.get(k) != want.get(k) for k in _COUPON_TERMS) or have_products != sorted(
            (want.get("applies_to") or {}).get("products") or []
        ):
            report.add(
                "conflict", f"coupon {coupon.id}", "its terms differ from Stripe's; publish it under a new id"
            )
            continue
        meta = {k: str(v) for k, v in (existing.get("metadata") or {}).items()}
        if existing.get("name") == want["name"] and all(
            meta.get(k) == v for k, v in want["metadata"].items()
        ):
            report.add("unchanged", f"coupon {coupon.id}", coupon.id)
        elif dry_run:
            report.add("update", f"coupon {coupon.id}", "name, metadata")
        else:
            call(
                "update a coupon",
                lambda coupon=coupon, want=want: client.v1.coupons.update(  # type: ignore[misc]
                    coupon.id, params={"name": want["name"], "metadata": want["metadata"]}
                ),
            )
            report.add("update", f"coupon {coupon.id}", "name, metadata")
    for code in catalog.promotion_codes:
        found = find_code(client, code.code)
        if found is None:
            if not dry_run:
                params = promotion_code_params(code, "catalog")
                call(
                    "create a promotion code",
                    lambda params=params, code=code: client.v1.promotion_codes.create(  # type: ignore[misc]
                        params=params,
                        options={
                            "idempotency_key": stripe_key("catalog", catalog.version, "promo", code.code)
                        },
                    ),
                )
            report.add("create", f"promotion code {code.code}", code.coupon)
            continue
        linked = (found.get("promotion") or {}).get("coupon")
        if (linked if isinstance(linked, str) else (linked or {}).get("id")) != code.coupon:
            report.add("conflict", f"promotion code {code.code}", "it names another coupon in Stripe")
        elif bool(found.get("active")) == code.active or (code.active and _ended(found)):
            report.add("unchanged", f"promotion code {code.code}", str(found["id"]))
        else:
            if not dry_run:
                call(
                    "update a promotion code",
                    lambda found=found, code=code: client.v1.promotion_codes.update(  # type: ignore[misc]
                        str(found["id"]), params={"active": code.active}
                    ),
                )
            report.add("update", f"promotion code {code.code}", "active" if code.active else "inactive")


def _ended(promo: dict[str, Any]) -> bool:
    limit = promo.get("max_redemptions")
    return limit is not None and int(promo.get("times_redeemed") or 0) >= int(limit)


# --- the customer portal ----------------------------------------------------------------------

PORTAL_MARKER = {"chronote_managed": "portal"}
# Cards, invoices, billing details and cancelling at period end; never plan changes, which go
# through our own portal's plan cards (one subscription, our proration rules).
PORTAL_FEATURES: dict[str, Any] = {
    "customer_update": {"enabled": True, "allowed_updates": ["email", "name"]},
    "invoice_history": {"enabled": True},
    "payment_method_update": {"enabled": True},
    "subscription_cancel": {"enabled": True, "mode": "at_period_end"},
    "subscription_update": {"enabled": False},
}


def _portal_differences(existing: dict[str, Any]) -> list[str]:
    """The features (by name) whose settings differ from ours; extra Stripe settings are ignored."""
    have = existing.get("features") or {}
    return sorted(
        name
        for name, want in PORTAL_FEATURES.items()
        if any((have.get(name) or {}).get(k) != v for k, v in want.items())
    )


def find_portal_configuration(client: StripeClient) -> dict[str, Any] | None:
    """Our active customer portal configuration, if the catalog was synced to this account."""
    listed = call(
        "list customer portal configurations",
        lambda: client.v1.billing_portal.configurations.list(params={"active": True, "limit": 100}),
    )
    for config in map(to_dict, listed.data):
        if (config.get("metadata") or {}).get("chronote_managed") == PORTAL_MARKER["chronote_managed"]:
            return config
    return None


def sync_portal_configuration(
    client: StripeClient, catalog: Catalog, report: SyncReport, dry_run: bool
) -> None:
    existing = find_portal_configuration(client)
    params: dict[str, Any] = {
        "business_profile": {"headline": "Chronote billing: cards, invoices and cancellation"},
        "features": PORTAL_FEATURES,
        "metadata": PORTAL_MARKER,
    }
    if existing is None:
        if dry_run:
            report.add("create", "customer portal configuration")
            return
        created = call(
            "create the customer portal configuration",
            lambda: client.v1.billing_portal.configurations.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": stripe_key("catalog", catalog.version, "portal")},
            ),
        )
        report.add("create", "customer portal configuration", created.id)
        return
    differences = _portal_differences(existing)
    if not differences:
        report.add("unchanged", "customer portal configuration", existing["id"])
        return
    if not dry_run:
        call(
            "update the customer portal configuration",
            lambda: client.v1.billing_portal.configurations.update(
                existing["id"],
                params={"features": PORTAL_FEATURES},  # type: ignore[arg-type]
            ),
        )
    report.add("update", "customer portal configuration", ", ".join(differences))
