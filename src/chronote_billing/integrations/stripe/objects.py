"""The Stripe objects the service reads, as typed models parsed from Stripe's JSON (decision 0055).

Each model keeps only the fields the service uses and ignores the rest, so Stripe adding fields
changes nothing. Expandable fields (`customer`, `payment_intent`, ...) are ids whether Stripe sent
an id or the expanded object; an expanded subscription, invoice or payment intent of a Checkout
Session is kept as its own model beside the id. Metadata is text to text. Nothing here calls
Stripe or imports its SDK.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


def _id_of(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else value


def _text_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items()}


def _list_data(value: Any) -> Any:
    """A Stripe list object (`{"object": "list", "data": [...]}`) as its items."""
    if isinstance(value, dict):
        return value.get("data") or []
    return value or []


ExpandableId = Annotated[str | None, BeforeValidator(_id_of)]
Metadata = Annotated[dict[str, str], BeforeValidator(_text_map)]


class StripeModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OwnedObject(StripeModel):
    """An object that belongs to a customer, and so to one of our billing accounts (0009)."""

    id: str
    customer: ExpandableId = None
    metadata: Metadata = Field(default_factory=dict)

    def account_ids(self) -> list[str]:
        """Our account ids the object names, most trusted first (the customer comes before all)."""
        return [i for i in (self.metadata.get("chronote_account_id"),) if i]

    def guild_ids(self) -> list[str]:
        """Today's subscriptions name only their Discord server (`guild_id`)."""
        return [g for g in (self.metadata.get("guild_id"),) if g]


# ---------------------------------------------------------------------- subscriptions


class Price(StripeModel):
    id: str | None = None
    lookup_key: str | None = None


class SubscriptionItem(StripeModel):
    id: str | None = None
    price: Price | None = None
    current_period_start: int | None = None
    current_period_end: int | None = None


class Subscription(OwnedObject):
    status: str | None = None
    items: Annotated[list[SubscriptionItem], BeforeValidator(_list_data)] = Field(default_factory=list)
    current_period_start: int | None = None
    current_period_end: int | None = None
    start_date: int | None = None
    cancel_at_period_end: bool | None = False
    cancel_at: int | None = None
    created: int | None = None
    trial_start: int | None = None
    trial_end: int | None = None
    default_payment_method: ExpandableId = None

    @property
    def item(self) -> SubscriptionItem:
        return self.items[0] if self.items else SubscriptionItem()

    @property
    def lookup_key(self) -> str | None:
        return self.item.price.lookup_key if self.item.price else None

    @property
    def period_start(self) -> int | None:
        # Stripe moved the period onto the item; older API versions keep it on the subscription.
        return self.item.current_period_start or self.current_period_start or self.start_date

    @property
    def period_end(self) -> int | None:
        return self.item.current_period_end or self.current_period_end

    @property
    def cancels(self) -> bool:
        """Ends at the period end, or at a set moment."""
        return bool(self.cancel_at_period_end) or bool(self.cancel_at)


# ---------------------------------------------------------------------- invoices


class Period(StripeModel):
    start: int | None = None
    end: int | None = None


class InvoiceLine(StripeModel):
    amount: int = 0
    period: Period | None = None
    lookup_key: str | None = None  # of the line's price, when Stripe sent the price itself
    proration: bool = False

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        price = data.get("price") or ((data.get("pricing") or {}).get("price_details") or {}).get("price")
        details = (data.get("parent") or {}).get("subscription_item_details") or {}
        return {
            "amount": data.get("amount") or 0,
            "period": data.get("period"),
            "lookup_key": price.get("lookup_key") if isinstance(price, dict) else None,
            "proration": bool(details.get("proration") or data.get("proration")),
        }


class Invoice(OwnedObject):
    status: str | None = None
    billing_reason: str | None = None
    amount_paid: int | None = 0
    amount_due: int | None = None
    currency: str | None = None
    attempt_count: int | None = None
    created: int | None = None
    period_start: int | None = None
    period_end: int | None = None
    paid_at: int | None = None
    subscription: str | None = None
    subscription_metadata: Metadata = Field(default_factory=dict)
    lines: Annotated[list[InvoiceLine], BeforeValidator(_list_data)] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: Any) -> Any:
        """Since API 2025-03, an invoice names its subscription under `parent`."""
        if not isinstance(data, dict):
            return data
        details = (data.get("parent") or {}).get("subscription_details") or {}
        return {
            **data,
            "paid_at": (data.get("status_transitions") or {}).get("paid_at"),
            "subscription": _id_of(details.get("subscription")) or _id_of(data.get("subscription")),
            "subscription_metadata": details.get("metadata"),
        }

    def account_ids(self) -> list[str]:
        return super().account_ids() + [
            i for i in (self.subscription_metadata.get("chronote_account_id"),) if i
        ]

    def guild_ids(self) -> list[str]:
        return super().guild_ids() + [g for g in (self.subscription_metadata.get("guild_id"),) if g]

    def subscription_line(self) -> InvoiceLine | None:
        """The line that pays for the plan: the largest that is not a proration."""
        best: InvoiceLine | None = None
        for line in self.lines:
            if not line.proration and (best is None or line.amount > best.amount):
                best = line
        return best


# ---------------------------------------------------------------------- payments


class PaymentIntent(OwnedObject):
    created: int | None = None


class CheckoutSession(OwnedObject):
    client_reference_id: str | None = None
    mode: str | None = None
    status: str | None = None
    payment_status: str | None = None
    payment_intent: ExpandableId = None
    invoice: ExpandableId = None
    subscription: ExpandableId = None
    # What a read with `expand` brought along (decision 0040); a webhook carries ids only.
    payment_intent_object: PaymentIntent | None = None
    invoice_object: Invoice | None = None
    subscription_object: Subscription | None = None

    @model_validator(mode="before")
    @classmethod
    def _expanded(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in ("payment_intent", "invoice", "subscription"):
            if isinstance(data.get(name), dict):
                data[name + "_object"] = data[name]
        return data

    def account_ids(self) -> list[str]:
        return super().account_ids() + [i for i in (self.client_reference_id,) if i]


class Charge(OwnedObject):
    payment_intent: ExpandableId = None
    amount: int | None = None
    amount_refunded: int | None = 0


class Dispute(StripeModel):
    id: str
    charge: ExpandableId = None
    payment_intent: ExpandableId = None
    amount: int | None = None
    status: str | None = None


class Event(StripeModel):
    """An event's envelope; its object is parsed by the handler of its type."""

    id: str
    type: str
    created: int = 0
    livemode: bool = False
    object: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _object(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        obj = (data.get("data") or {}).get("object")
        return {**data, "created": data.get("created") or 0, "object": obj if isinstance(obj, dict) else {}}
