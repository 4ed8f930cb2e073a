"""Public shapes of the Stripe side: catalog, checkout, subscription, plan changes, portal."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from chronote_billing.catalog.service import Catalog
from chronote_billing.core.validation import CatalogRef, PromotionCodeText, Url
from chronote_billing.plans.schemas import TrialView


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanPriceView(BaseModel):
    interval: str
    unit_amount: int = Field(description="Minor units of the currency.")
    currency: str
    lookup_key: str


class PlanView(BaseModel):
    object: str = "plan"
    id: str
    name: str
    scope: str
    rank: int
    included_credits: int
    period: str
    max_recording_minutes: int
    capture_sources: list[str]
    features: dict[str, Any]
    prices: list[PlanPriceView]


class CreditPackView(BaseModel):
    object: str = "credit_pack"
    id: str
    name: str
    credits: int
    unit_amount: int
    currency: str
    lookup_key: str
    expires_after_months: int
    scope: str = "any"


class CatalogView(BaseModel):
    object: str = "catalog"
    version: str
    currency: str
    plans: list[PlanView]
    credit_packs: list[CreditPackView]
    rate_card: dict[str, Any]

    @classmethod
    def of(cls, catalog: Catalog) -> CatalogView:
        rate = catalog.rate_card
        return cls(
            version=catalog.version,
            currency=catalog.currency,
            plans=[
                PlanView(
                    id=p.id,
                    name=p.name,
                    scope=p.scope,
                    rank=p.rank,
                    included_credits=p.included_credits,
                    period=p.period,
                    max_recording_minutes=p.max_recording_minutes,
                    capture_sources=list(p.capture_sources),
                    features=dict(p.features),
                    prices=[
                        PlanPriceView(
                            interval=pr.interval,
                            unit_amount=pr.unit_amount,
                            currency=pr.currency,
                            lookup_key=pr.lookup_key,
                        )
                        for pr in p.prices
                    ],
                )
                for p in catalog.plans.values()
            ],
            credit_packs=[
                CreditPackView(
                    id=c.id,
                    name=c.name,
                    credits=c.credits,
                    unit_amount=c.unit_amount,
                    currency=c.currency,
                    lookup_key=c.lookup_key,
                    expires_after_months=c.expires_after_months,
                )
                for c in catalog.credit_packs.values()
            ],
            rate_card={
                "version": rate.version,
                "meeting_audio_per_started_minute": rate.meeting_audio_per_started_minute,
                "chat_to_speech_message": rate.chat_to_speech_message,
                "ask_question": rate.ask_question,
                "max_sources_per_recording": rate.max_sources_per_recording,
                "upload_conservative_kbps": rate.upload_conservative_kbps,
                "hold_grace_minutes": rate.hold_grace_minutes,
            },
        )


class CheckoutRequest(StrictModel):
    plan: CatalogRef | None = Field(default=None, description="Plan id (subscription checkout).")
    interval: Literal["month", "year"] = "month"
    pack: CatalogRef | None = Field(default=None, description="Credit pack id (one-time payment).")
    success_url: Url | None = None
    cancel_url: Url | None = None
    promotion_code: PromotionCodeText | None = Field(
        default=None,
        description="A promotion code the person typed in Chronote, checked against this plan or pack. "
        "Without one, Stripe's page offers its own code field where it can check the code.",
    )
    trial: StrictBool = Field(
        default=False,
        description="Start the plan's free trial (once per person or server, ever); refused when the plan "
        "has none or the trial was used.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> CheckoutRequest:
        if (self.plan is None) == (self.pack is None):
            raise ValueError("give exactly one of plan or pack")
        return self


class CheckoutView(BaseModel):
    object: str = "checkout_session"
    id: str
    account_id: str
    mode: str
    plan: str | None
    interval: str | None
    pack: str | None
    url: str | None
    customer: str
    promotion_code: str | None = Field(default=None, description="The promotion code applied, if any.")
    trial_days: int | None = Field(default=None, description="Length of the free trial this checkout starts.")


class PlanChangeRequest(StrictModel):
    plan: CatalogRef
    interval: Literal["month", "year"] = "month"


class PlanChangeView(BaseModel):
    object: str = "plan_change"
    account_id: str
    subscription_id: str
    from_plan: str
    to_plan: str
    interval: str
    effective: Literal["now", "period_end", "unchanged"]
    effective_at: datetime
    invoice: str | None = Field(description="The prorated invoice of an upgrade.")


class PlanChangePreview(BaseModel):
    object: str = "plan_change_preview"
    account_id: str
    from_plan: str
    from_plan_name: str
    from_interval: str
    to_plan: str
    to_plan_name: str
    interval: str
    kind: str = Field(description="upgrade, interval, downgrade, cancel_pending, unchanged or unsupported.")
    effective: Literal["now", "period_end", "unchanged", "refused"]
    effective_at: datetime
    amount_due: int = Field(
        description="Estimated charge now, in the currency's minor unit, from the plan prices and the "
        "rest of the period; Stripe's invoice is what is charged."
    )
    currency: str
    message: str


class CheckoutStatusView(BaseModel):
    object: str = "checkout_status"
    session_id: str
    account_id: str
    mode: str
    state: Literal["complete", "pending", "expired"]
    plan: str | None
    plan_name: str | None
    pack: str | None
    credits: int | None = Field(description="Millicredits the pack adds.")
    message: str


class SubscriptionView(BaseModel):
    object: str = "account_subscription"
    account_id: str
    plan: str | None = Field(description="The plan in force now (None for organizations).")
    plan_name: str | None
    plan_source: Literal["paid", "complimentary", "free", "none"]
    status: str | None = Field(description="Stripe's subscription status, if the account has one.")
    interval: str | None
    subscription_id: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    pending_plan: str | None = Field(description="A downgrade taking effect at the period end.")
    in_grace: bool
    grace_ends_at: datetime | None
    complimentary_until: datetime | None = None
    trial: TrialView | None = Field(default=None, description="The free trial running now, if any.")


class CancelView(BaseModel):
    object: str = "subscription_cancellation"
    account_id: str
    subscription_id: str
    cancel_at_period_end: bool
    ends_at: datetime


class PortalSessionView(BaseModel):
    object: str = "billing_portal_session"
    account_id: str
    customer: str
    url: str


class PortalRequest(StrictModel):
    return_url: Url | None = None


class PackPurchaseView(BaseModel):
    object: str = "credit_pack_purchase"
    account_id: str
    pack: str
    payment_intent: str
    invoice: str | None = Field(default=None, description="The taxed invoice, when Stripe Tax is on.")
    status: str
    granted: bool
    grant_id: str | None
