"""The catalog's prices as Stripe should have them, and Stripe's active prices by lookup key."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from chronote_billing.catalog.service import Catalog
from chronote_billing.integrations.stripe.client import StripeClient, call, to_dict


@dataclass(frozen=True)
class DesiredPrice:
    lookup_key: str
    product: str  # catalog product key: personal, server, credits
    unit_amount: int
    currency: str
    interval: str | None  # None: one-time
    metadata: dict[str, str]
    nickname: str


def desired_prices(catalog: Catalog) -> list[DesiredPrice]:
    out: list[DesiredPrice] = []
    for plan in catalog.plans.values():
        for price in plan.prices:
            out.append(
                DesiredPrice(
                    lookup_key=price.lookup_key,
                    product=plan.scope,
                    unit_amount=price.unit_amount,
                    currency=price.currency,
                    interval=price.interval,
                    metadata={"scope": plan.scope, "plan": plan.id, "interval": price.interval},
                    nickname=f"{plan.name} ({'monthly' if price.interval == 'month' else 'yearly'})",
                )
            )
    for pack in catalog.credit_packs.values():
        out.append(
            DesiredPrice(
                lookup_key=pack.lookup_key,
                product="credits",
                unit_amount=pack.unit_amount,
                currency=pack.currency,
                interval=None,
                metadata={"scope": "any", "pack": pack.id, "credits": str(pack.credits)},
                nickname=pack.name,
            )
        )
    return out


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def product_id_of(price: Any) -> str:
    product = price["product"]
    return product if isinstance(product, str) else product["id"]


def fetch_prices(client: StripeClient, lookup_keys: list[str]) -> dict[str, Any]:
    """Active prices by lookup key (Stripe accepts at most 10 keys per list call)."""
    found: dict[str, Any] = {}
    for chunk in _chunks(lookup_keys, 10):
        page = call(
            "list prices",
            lambda chunk=chunk: client.v1.prices.list(  # type: ignore[misc]
                params={"lookup_keys": chunk, "active": True, "limit": 100}
            ),
        )
        for raw in page.data:
            price = to_dict(raw)
            if price.get("lookup_key"):
                found[price["lookup_key"]] = price
    return found
