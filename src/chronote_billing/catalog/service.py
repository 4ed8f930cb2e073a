"""The catalog: plans, credit packs and the rate card, loaded from versioned data.

Product data is data, not code: a new price or plan is a new catalog file, and the newest
version is the one in force. Everything here is read-only and cached per process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from functools import cache
from importlib import resources
from typing import Any

from chronote_billing.core.errors import ValidationFailed

CAPTURE_SOURCES = ("discord_voice", "desktop", "web", "mobile", "quick_capture", "upload")
# Personal work comes from the apps; server work from a Discord voice channel (D8).
PERSONAL_SOURCES = ("desktop", "web", "mobile", "quick_capture", "upload")
SERVER_SOURCES = ("discord_voice",)
PLAN_SCOPES = ("personal", "server")
MILLICREDITS_PER_CREDIT = 1000
COUPON_DURATIONS = ("once", "repeating", "forever")


class UnknownPlan(ValidationFailed):
    code = "unknown_plan"
    title = "Unknown plan or price"


class PlanScopeMismatch(ValidationFailed):
    code = "plan_scope_mismatch"
    title = "Plan not available for this kind of account"


@dataclass(frozen=True)
class PlanPrice:
    plan_id: str
    interval: str  # "month" or "year"
    unit_amount: int  # minor units
    currency: str
    lookup_key: str


@dataclass(frozen=True)
class Trial:
    """A plan's free trial (decision 0044): its length and the credits it brings, which expire
    when it ends."""

    days: int
    credits: int

    @property
    def millicredits(self) -> int:
        return self.credits * MILLICREDITS_PER_CREDIT


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    scope: str
    rank: int
    included_credits: int
    period: str  # "calendar_month" (free plans) or "subscription" (the Stripe period)
    rollover_credits: int
    max_recording_minutes: int
    capture_sources: tuple[str, ...]
    features: dict[str, Any]
    prices: tuple[PlanPrice, ...]
    trial: Trial | None = None

    @property
    def is_free(self) -> bool:
        return not self.prices

    @property
    def included_millicredits(self) -> int:
        return self.included_credits * MILLICREDITS_PER_CREDIT

    def price(self, interval: str) -> PlanPrice:
        for price in self.prices:
            if price.interval == interval:
                return price
        raise UnknownPlan(f"Plan '{self.id}' has no '{interval}' price.", plan=self.id, interval=interval)


@dataclass(frozen=True)
class CreditPack:
    id: str
    name: str
    credits: int
    unit_amount: int
    currency: str
    lookup_key: str
    expires_after_months: int

    @property
    def millicredits(self) -> int:
        return self.credits * MILLICREDITS_PER_CREDIT


@dataclass(frozen=True)
class RateCard:
    version: str
    meeting_audio_per_started_minute: int
    chat_to_speech_message: int
    ask_question: int
    max_sources_per_recording: int
    upload_conservative_kbps: int
    hold_grace_minutes: int

    def meeting_cost(self, wall_clock_seconds: int) -> int:
        """Meeting audio is charged per started minute of wall-clock time, rounded up once."""
        if wall_clock_seconds <= 0:
            return 0
        return -(-wall_clock_seconds // 60) * self.meeting_audio_per_started_minute

    def metered_cost(self, event_type: str) -> int:
        costs = {"chat_to_speech_message": self.chat_to_speech_message, "ask_question": self.ask_question}
        if event_type not in costs:
            raise ValidationFailed(
                f"Unknown metered event '{event_type}'; expected one of {', '.join(costs)}.", field="type"
            )
        return costs[event_type]


@dataclass(frozen=True)
class Coupon:
    """A discount of the catalog (decision 0042): a whole percentage or an amount in minor units
    off, `once`, `repeating` for some months or `forever`, limited to some plans and packs
    (empty: everything), with an optional redemption limit and last day. It lowers the price,
    never the credits."""

    id: str
    name: str
    percent_off: int | None
    amount_off: int | None
    currency: str
    duration: str
    duration_in_months: int | None
    applies_to: tuple[str, ...]
    max_redemptions: int | None
    redeem_by: datetime | None


@dataclass(frozen=True)
class PromotionCode:
    """A code people type for a catalog coupon."""

    code: str
    coupon: str
    max_redemptions: int | None
    expires_at: datetime | None
    first_time_transaction: bool
    active: bool


@dataclass(frozen=True)
class Catalog:
    version: str
    currency: str
    products: dict[str, dict[str, str]]
    plans: dict[str, Plan]
    credit_packs: dict[str, CreditPack]
    rate_card: RateCard
    organization: dict[str, Any] = field(default_factory=dict)
    coupons: dict[str, Coupon] = field(default_factory=dict)
    promotion_codes: tuple[PromotionCode, ...] = ()

    def product_of(self, item_id: str) -> str:
        """The Stripe product group of a plan or pack id (personal, server or credits)."""
        if item_id in self.credit_packs:
            return "credits"
        return self.plan(item_id).scope

    def product_items(self, product: str) -> tuple[str, ...]:
        """What can be bought under a product group: its paid plans, or every pack."""
        if product == "credits":
            return tuple(self.credit_packs)
        return tuple(p.id for p in self.plans.values() if p.scope == product and not p.is_free)

    def plan(self, plan_id: str) -> Plan:
        plan = self.plans.get(plan_id)
        if plan is None:
            raise UnknownPlan(
                f"Unknown plan '{plan_id}'; plans are {', '.join(self.plans)}.", field="plan", plan=plan_id
            )
        return plan

    def plan_for_scope(self, plan_id: str, account_kind: str) -> Plan:
        plan = self.plan(plan_id)
        if plan.scope != account_kind:
            raise PlanScopeMismatch(
                f"Plan '{plan_id}' is a {plan.scope} plan; it cannot be bought for a {account_kind} account.",
                field="plan",
                plan=plan_id,
                account_kind=account_kind,
            )
        return plan

    def free_plan(self, account_kind: str) -> Plan | None:
        return self.plans.get(f"{account_kind}_free")

    def pack(self, pack_id: str) -> CreditPack:
        pack = self.credit_packs.get(pack_id)
        if pack is None:
            raise UnknownPlan(
                f"Unknown credit pack '{pack_id}'; packs are {', '.join(self.credit_packs)}.",
                field="pack",
                pack=pack_id,
            )
        return pack

    def price_by_lookup_key(self, lookup_key: str) -> PlanPrice | CreditPack | None:
        for plan in self.plans.values():
            for price in plan.prices:
                if price.lookup_key == lookup_key:
                    return price
        for pack in self.credit_packs.values():
            if pack.lookup_key == lookup_key:
                return pack
        return None


def _parse(raw: dict[str, Any]) -> Catalog:
    currency = raw["currency"]
    plans = {}
    for p in raw["plans"]:
        unknown = set(p["capture_sources"]) - set(CAPTURE_SOURCES)
        if unknown or p["scope"] not in PLAN_SCOPES:
            raise ValueError(f"catalog plan {p['id']} has an unknown scope or capture source")
        plans[p["id"]] = Plan(
            id=p["id"],
            name=p["name"],
            scope=p["scope"],
            rank=p["rank"],
            included_credits=p["included_credits"],
            period=p["period"],
            rollover_credits=p["rollover_credits"],
            max_recording_minutes=p["max_recording_minutes"],
            capture_sources=tuple(p["capture_sources"]),
            features=dict(p["features"]),
            prices=tuple(
                PlanPrice(p["id"], pr["interval"], pr["unit_amount"], currency, pr["lookup_key"])
                for pr in p["prices"]
            ),
            trial=_trial(p),
        )
    packs = {
        c["id"]: CreditPack(
            c["id"],
            c["name"],
            c["credits"],
            c["unit_amount"],
            currency,
            c["lookup_key"],
            c["expires_after_months"],
        )
        for c in raw["credit_packs"]
    }
    coupons = {c["id"]: _coupon(c, currency, set(plans) | set(packs)) for c in raw.get("coupons", [])}
    codes = tuple(_promotion_code(c, coupons) for c in raw.get("promotion_codes", []))
    return Catalog(
        version=raw["version"],
        currency=currency,
        products=raw["products"],
        plans=plans,
        credit_packs=packs,
        rate_card=RateCard(**raw["rate_card"]),
        organization=raw.get("organization", {}),
        coupons=coupons,
        promotion_codes=codes,
    )


def _trial(plan: dict[str, Any]) -> Trial | None:
    raw = plan.get("trial")
    if raw is None:
        return None
    days, credits = raw.get("days"), raw.get("credits")
    if not (isinstance(days, int) and 1 <= days <= 90 and isinstance(credits, int) and credits >= 0):
        raise ValueError(f"catalog plan {plan['id']}: a trial is 1-90 days and a whole number of credits")
    if not plan["prices"]:
        raise ValueError(f"catalog plan {plan['id']} is free; it has no trial")
    return Trial(days=days, credits=credits)


def _day_end(value: str | None) -> datetime | None:
    """A catalog date (YYYY-MM-DD) as the end of that UTC day."""
    if value is None:
        return None
    return datetime.combine(date.fromisoformat(value), time(23, 59, 59), tzinfo=UTC)


def _coupon(c: dict[str, Any], currency: str, items: set[str]) -> Coupon:
    percent, amount = c.get("percent_off"), c.get("amount_off")
    if (percent is None) == (amount is None):
        raise ValueError(f"catalog coupon {c['id']} needs exactly one of percent_off or amount_off")
    if percent is not None and not (isinstance(percent, int) and 1 <= percent <= 100):
        raise ValueError(f"catalog coupon {c['id']}: percent_off is a whole number from 1 to 100")
    if amount is not None and not (isinstance(amount, int) and amount > 0):
        raise ValueError(f"catalog coupon {c['id']}: amount_off is a positive amount in minor units")
    if c["duration"] not in COUPON_DURATIONS or (c["duration"] == "repeating") != bool(
        c.get("duration_in_months")
    ):
        raise ValueError(f"catalog coupon {c['id']}: duration and duration_in_months do not match")
    unknown = set(c.get("applies_to") or []) - items
    if unknown:
        raise ValueError(f"catalog coupon {c['id']} applies to unknown plans or packs: {sorted(unknown)}")
    return Coupon(
        id=c["id"],
        name=c["name"],
        percent_off=percent,
        amount_off=amount,
        currency=currency,
        duration=c["duration"],
        duration_in_months=c.get("duration_in_months"),
        applies_to=tuple(c.get("applies_to") or ()),
        max_redemptions=c.get("max_redemptions"),
        redeem_by=_day_end(c.get("redeem_by")),
    )


def _promotion_code(c: dict[str, Any], coupons: dict[str, Coupon]) -> PromotionCode:
    if c["coupon"] not in coupons:
        raise ValueError(f"catalog promotion code {c['code']} names unknown coupon {c['coupon']}")
    return PromotionCode(
        code=c["code"],
        coupon=c["coupon"],
        max_redemptions=c.get("max_redemptions"),
        expires_at=_day_end(c.get("expires_at")),
        first_time_transaction=bool(c.get("first_time_transaction", False)),
        active=bool(c.get("active", True)),
    )


def catalog_versions() -> list[str]:
    files = resources.files("chronote_billing.catalog").joinpath("data").iterdir()
    return sorted(
        f.name.removeprefix("catalog-").removesuffix(".json") for f in files if f.name.endswith(".json")
    )


@cache
def load_catalog(version: str | None = None) -> Catalog:
    """The catalog in force (the newest file), or a named version."""
    version = version or catalog_versions()[-1]
    data = resources.files("chronote_billing.catalog").joinpath("data", f"catalog-{version}.json").read_text()
    return _parse(json.loads(data))
