"""The catalog: plans, credit packs and the rate card, loaded from versioned data.

Product data is data, not code: a new price or plan is a new catalog file, and the newest
version is the one in force. Everything here is read-only and cached per process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
class Catalog:
    version: str
    currency: str
    products: dict[str, dict[str, str]]
    plans: dict[str, Plan]
    credit_packs: dict[str, CreditPack]
    rate_card: RateCard
    organization: dict[str, Any] = field(default_factory=dict)

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
    return Catalog(
        version=raw["version"],
        currency=currency,
        products=raw["products"],
        plans=plans,
        credit_packs=packs,
        rate_card=RateCard(**raw["rate_card"]),
        organization=raw.get("organization", {}),
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
