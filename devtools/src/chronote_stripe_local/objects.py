"""Builders of Stripe-shaped objects.

Each builder returns a dict with exactly the fields of Stripe's own example of that resource
(`tests/data/stripe_fixtures.json`, from Stripe's OpenAPI fixtures) for the API version of the
installed `stripe` SDK, filled the way Stripe fills them for a plain card payment in test mode.
Fields the stand-in has no use for hold the value Stripe returns when the feature is unused
(usually `null`, `[]` or `{}`).

Why one module of some 1,200 lines: its length is Stripe's. Each builder spells out every field
of its resource, field for field against Stripe's fixtures (the shape tests compare them), and
a subscription, an invoice or a checkout session has dozens of fields. The builders are plain
functions with no state, grouped in four sections (customers and products; payments; subscriptions
and invoices; checkout, portal, events and clocks) that share the id, money and list helpers at
the top. Splitting them would spread those helpers without making any builder shorter.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from stripe._api_version import _ApiVersion

API_VERSION = _ApiVersion.CURRENT

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """An id in Stripe's style: `cus_` + 14 characters, `pi_3...` + 24, `cs_test_a1...` + 56."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def random_token(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def empty_address() -> dict[str, Any]:
    return {"city": None, "country": None, "line1": None, "line2": None, "postal_code": None, "state": None}


def list_object(url: str, data: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def deleted(obj: str, object_id: str) -> dict[str, Any]:
    return {"id": object_id, "object": obj, "deleted": True}


# --- customers and products ---------------------------------------------------------------


def customer(
    *,
    id: str,
    created: int,
    email: str | None,
    name: str | None,
    description: str | None,
    phone: str | None,
    metadata: dict[str, str],
    test_clock: str | None,
    invoice_prefix: str,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": created,
        "currency": None,
        "customer_account": None,
        "default_source": None,
        "delinquent": False,
        "description": description,
        "discount": None,
        "email": email,
        "invoice_prefix": invoice_prefix,
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": metadata,
        "name": name,
        "next_invoice_sequence": 1,
        "phone": phone,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": test_clock,
    }


def product(
    *,
    id: str,
    created: int,
    name: str,
    description: str | None,
    active: bool,
    metadata: dict[str, str],
    unit_label: str | None = None,
    statement_descriptor: str | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "product",
        "active": active,
        "created": created,
        "default_price": None,
        "description": description,
        "images": [],
        "livemode": False,
        "marketing_features": [],
        "metadata": metadata,
        "name": name,
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": statement_descriptor,
        "tax_code": None,
        "type": "service",
        "unit_label": unit_label,
        "updated": created,
        "url": None,
    }


def price(
    *,
    id: str,
    created: int,
    product: str,
    currency: str,
    unit_amount: int,
    recurring: dict[str, Any] | None,
    lookup_key: str | None,
    nickname: str | None,
    active: bool,
    metadata: dict[str, str],
    tax_behavior: str = "unspecified",
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "price",
        "active": active,
        "billing_scheme": "per_unit",
        "created": created,
        "currency": currency,
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": lookup_key,
        "metadata": metadata,
        "nickname": nickname,
        "product": product,
        "recurring": recurring,
        "tax_behavior": tax_behavior,
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": unit_amount,
        "unit_amount_decimal": str(unit_amount),
    }


def recurring(interval: str, interval_count: int, trial_period_days: int | None = None) -> dict[str, Any]:
    return {
        "interval": interval,
        "interval_count": interval_count,
        "meter": None,
        "trial_period_days": trial_period_days,
        "usage_type": "licensed",
    }


def plan_from_price(p: dict[str, Any]) -> dict[str, Any]:
    """The legacy `plan` view of a recurring price that subscription items still carry."""
    rec = p["recurring"] or {}
    return {
        "id": p["id"],
        "object": "plan",
        "active": p["active"],
        "amount": p["unit_amount"],
        "amount_decimal": p["unit_amount_decimal"],
        "billing_scheme": p["billing_scheme"],
        "created": p["created"],
        "currency": p["currency"],
        "interval": rec.get("interval"),
        "interval_count": rec.get("interval_count"),
        "livemode": False,
        "metadata": p["metadata"],
        "meter": None,
        "nickname": p["nickname"],
        "product": p["product"],
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": rec.get("trial_period_days"),
        "usage_type": "licensed",
    }


# --- payment methods, payment intents, charges, refunds, disputes -------------------------

CARDS: dict[str, dict[str, Any]] = {
    # number -> (brand, last4, funding, behaviour) ; behaviour decides what charges do
    "4242424242424242": {"brand": "visa", "last4": "4242", "behaviour": "succeeds"},
    "4000000000000341": {"brand": "visa", "last4": "0341", "behaviour": "declines_off_session"},
    "4000000000000002": {"brand": "visa", "last4": "0002", "behaviour": "declines"},
    "5555555555554444": {"brand": "mastercard", "last4": "4444", "behaviour": "succeeds"},
}

# Stripe's test payment method ids that may be used in place of a real `pm_...` id.
TEST_PAYMENT_METHODS: dict[str, str] = {
    "pm_card_visa": "4242424242424242",
    "pm_card_mastercard": "5555555555554444",
    "pm_card_chargeCustomerFail": "4000000000000341",
    "pm_card_visa_chargeDeclined": "4000000000000002",
    "pm_card_chargeDeclined": "4000000000000002",
}


def payment_method(
    *,
    id: str,
    created: int,
    card_number: str,
    customer: str | None,
    email: str | None,
    name: str | None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    card = CARDS[card_number]
    return {
        "id": id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {
            "address": empty_address(),
            "email": email,
            "name": name,
            "phone": None,
            "tax_id": None,
        },
        "card": {
            "brand": card["brand"],
            "checks": {"address_line1_check": None, "address_postal_code_check": None, "cvc_check": "pass"},
            "country": "US",
            "display_brand": card["brand"],
            "exp_month": 12,
            "exp_year": 2034,
            "fingerprint": "fp" + card_number[-8:] + "Local",
            "funding": "credit",
            "generated_from": None,
            "last4": card["last4"],
            "networks": {"available": [card["brand"]], "preferred": None},
            "regulated_status": "unregulated",
            "three_d_secure_usage": {"supported": True},
            "wallet": None,
        },
        "created": created,
        "customer": customer,
        "customer_account": None,
        "livemode": False,
        "metadata": metadata or {},
        "type": "card",
    }


def payment_intent(
    *,
    id: str,
    created: int,
    amount: int,
    currency: str,
    customer: str | None,
    description: str | None,
    metadata: dict[str, str],
    payment_method: str | None,
    setup_future_usage: str | None,
    receipt_email: str | None = None,
    statement_descriptor: str | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "client_secret": f"{id}_secret_{random_token(25)}",
        "confirmation_method": "automatic",
        "created": created,
        "currency": currency,
        "customer": customer,
        "customer_account": None,
        "description": description,
        "excluded_payment_method_types": None,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "managed_payments": None,
        "metadata": metadata,
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": payment_method,
        "payment_method_configuration_details": None,
        "payment_method_options": {
            "card": {
                "installments": None,
                "mandate_options": None,
                "network": None,
                "request_three_d_secure": "automatic",
            }
        },
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": receipt_email,
        "review": None,
        "setup_future_usage": setup_future_usage,
        "shipping": None,
        "source": None,
        "statement_descriptor": statement_descriptor,
        "statement_descriptor_suffix": None,
        "status": "requires_payment_method" if payment_method is None else "requires_confirmation",
        "transfer_data": None,
        "transfer_group": None,
    }


def charge(
    *,
    id: str,
    created: int,
    amount: int,
    currency: str,
    customer: str | None,
    description: str | None,
    metadata: dict[str, str],
    payment_intent: str | None,
    pm: dict[str, Any],
    succeeded: bool,
    failure_code: str | None = None,
    failure_message: str | None = None,
    decline_code: str | None = None,
    receipt_base: str = "",
) -> dict[str, Any]:
    card = pm["card"]
    outcome = {
        "advice_code": None if succeeded else "try_again_later",
        "network_advice_code": None,
        "network_decline_code": None,
        "network_status": "approved_by_network" if succeeded else "declined_by_network",
        "reason": None if succeeded else decline_code,
        "risk_level": "normal",
        "risk_score": 20,
        "seller_message": "Payment complete."
        if succeeded
        else "The bank did not return any further details with this decline.",
        "type": "authorized" if succeeded else "issuer_declined",
    }
    return {
        "id": id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if succeeded else 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": new_id("txn_3") if succeeded else None,
        "billing_details": pm["billing_details"],
        "calculated_statement_descriptor": "CHRONOTE",
        "captured": succeeded,
        "created": created,
        "currency": currency,
        "customer": customer,
        "description": description,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": failure_code,
        "failure_message": failure_message,
        "fraud_details": {},
        "livemode": False,
        "metadata": metadata,
        "on_behalf_of": None,
        "outcome": outcome,
        "paid": succeeded,
        "payment_intent": payment_intent,
        "payment_method": pm["id"],
        "payment_method_details": {
            "card": {
                "amount_authorized": amount if succeeded else None,
                "authorization_code": "123456" if succeeded else None,
                "brand": card["brand"],
                "checks": card["checks"],
                "country": card["country"],
                "exp_month": card["exp_month"],
                "exp_year": card["exp_year"],
                "extended_authorization": {"status": "disabled"},
                "fingerprint": card["fingerprint"],
                "funding": card["funding"],
                "incremental_authorization": {"status": "unavailable"},
                "installments": None,
                "last4": card["last4"],
                "mandate": None,
                "multicapture": {"status": "unavailable"},
                "network": card["brand"],
                "network_token": {"used": False},
                "network_transaction_id": random_token(15) if succeeded else None,
                "overcapture": {"maximum_amount_capturable": amount, "status": "unavailable"},
                "regulated_status": "unregulated",
                "three_d_secure": None,
                "transaction_link_id": None,
                "wallet": None,
            },
            "type": "card",
        },
        "receipt_email": None,
        "receipt_number": None,
        "receipt_url": f"{receipt_base}/receipts/{id}" if succeeded else None,
        "refunded": False,
        "refunds": list_object(f"/v1/charges/{id}/refunds", []),
        "review": None,
        "shipping": None,
        "source": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded" if succeeded else "failed",
        "transfer_data": None,
        "transfer_group": None,
    }


def refund(
    *,
    id: str,
    created: int,
    amount: int,
    currency: str,
    charge: str,
    payment_intent: str | None,
    customer: str | None,
    payment_method: str | None,
    reason: str | None,
    metadata: dict[str, str],
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "refund",
        "amount": amount,
        "balance_transaction": new_id("txn_3"),
        "charge": charge,
        "created": created,
        "currency": currency,
        "customer": customer,
        "customer_account": None,
        "destination_details": {
            "card": {
                "reference_status": "pending",
                "reference_type": "acquirer_reference_number",
                "type": "refund",
            },
            "type": "card",
        },
        "metadata": metadata,
        "payment_intent": payment_intent,
        "payment_method": payment_method,
        "reason": reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }


EVIDENCE_FIELDS = [
    "access_activity_log",
    "billing_address",
    "cancellation_policy",
    "cancellation_policy_disclosure",
    "cancellation_rebuttal",
    "customer_communication",
    "customer_email_address",
    "customer_name",
    "customer_purchase_ip",
    "customer_signature",
    "duplicate_charge_documentation",
    "duplicate_charge_explanation",
    "duplicate_charge_id",
    "product_description",
    "receipt",
    "refund_policy",
    "refund_policy_disclosure",
    "refund_refusal_explanation",
    "service_date",
    "service_documentation",
    "shipping_address",
    "shipping_carrier",
    "shipping_date",
    "shipping_documentation",
    "shipping_tracking_number",
    "uncategorized_file",
    "uncategorized_text",
]


def dispute(
    *,
    id: str,
    created: int,
    amount: int,
    currency: str,
    charge: dict[str, Any],
    reason: str,
    due_by: int,
) -> dict[str, Any]:
    evidence: dict[str, Any] = {name: None for name in EVIDENCE_FIELDS}
    evidence["enhanced_evidence"] = {}
    card = charge["payment_method_details"]["card"]
    return {
        "id": id,
        "object": "dispute",
        "amount": amount,
        "balance_transactions": [],
        "charge": charge["id"],
        "created": created,
        "currency": currency,
        "enhanced_eligibility_types": [],
        "evidence": evidence,
        "evidence_details": {
            "due_by": due_by,
            "enhanced_eligibility": {},
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": charge["payment_intent"],
        "payment_method_details": {
            "card": {
                "brand": card["brand"],
                "case_type": "chargeback",
                "network": card["network"],
                "network_reason_code": "10.4" if reason == "fraudulent" else "13.1",
            },
            "type": "card",
        },
        "reason": reason,
        "status": "needs_response",
    }


# --- subscriptions and invoices -----------------------------------------------------------


def subscription(
    *,
    id: str,
    created: int,
    customer: str,
    currency: str,
    metadata: dict[str, str],
    default_payment_method: str | None,
    test_clock: str | None,
    description: str | None,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": created,
        "billing_cycle_anchor_config": None,
        "billing_mode": {"flexible": None, "type": "classic"},
        "billing_schedules": [],
        "billing_thresholds": None,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": created,
        "currency": currency,
        "customer": customer,
        "customer_account": None,
        "days_until_due": None,
        "default_payment_method": default_payment_method,
        "default_source": None,
        "default_tax_rates": [],
        "description": description,
        "discounts": [],
        "ended_at": None,
        "invoice_settings": {
            "account_tax_ids": None,
            "issuer": {"type": "self"},
            "custom_fields": None,
            "description": None,
            "footer": None,
        },
        "items": list_object(f"/v1/subscription_items?subscription={id}", []),
        "latest_invoice": None,
        "livemode": False,
        "managed_payments": None,
        "metadata": metadata,
        "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None,
        "pause_collection": None,
        "payment_settings": {
            "payment_method_options": None,
            "payment_method_types": None,
            "save_default_payment_method": "off",
        },
        "pending_invoice_item_interval": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "start_date": created,
        "status": "incomplete",
        "test_clock": test_clock,
        "transfer_data": None,
        "trial_end": None,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": None,
    }


def subscription_item(
    *,
    id: str,
    created: int,
    subscription: str,
    price: dict[str, Any],
    quantity: int,
    metadata: dict[str, str],
    period_start: int,
    period_end: int,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": created,
        "current_period_end": period_end,
        "current_period_start": period_start,
        "discounts": [],
        "metadata": metadata,
        "plan": plan_from_price(price),
        "price": price,
        "quantity": quantity,
        "subscription": subscription,
        "tax_rates": [],
    }


def invoice(
    *,
    id: str,
    created: int,
    customer: dict[str, Any],
    currency: str,
    billing_reason: str,
    subscription: dict[str, Any] | None,
    description: str | None,
    metadata: dict[str, str],
    period_start: int,
    period_end: int,
    auto_advance: bool,
    collection_method: str = "charge_automatically",
) -> dict[str, Any]:
    parent = None
    if subscription is not None:
        parent = {
            "quote_details": None,
            "subscription_details": {
                "metadata": dict(subscription["metadata"]),
                "subscription": subscription["id"],
            },
            "type": "subscription_details",
        }
    return {
        "id": id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Chronote (local Stripe)",
        "account_tax_ids": None,
        "amount_due": 0,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_remaining": 0,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": auto_advance,
        "automatic_tax": {
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        "automatically_finalizes_at": None,
        "billing_reason": billing_reason,
        "collection_method": collection_method,
        "created": created,
        "currency": currency,
        "custom_fields": None,
        "customer": customer["id"],
        "customer_account": None,
        "customer_address": customer["address"],
        "customer_email": customer["email"],
        "customer_name": customer["name"],
        "customer_phone": customer["phone"],
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": description,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": list_object(f"/v1/invoices/{id}/lines", []),
        "livemode": False,
        "metadata": metadata,
        "next_payment_attempt": None,
        "number": None,
        "on_behalf_of": None,
        "parent": parent,
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        "period_end": period_end,
        "period_start": period_start,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        # Stripe's example still carries `subscription` (null); since API version 2025-03-31 the
        # subscription of an invoice is `parent.subscription_details.subscription`.
        "subscription": None,
        "subtotal": 0,
        "subtotal_excluding_tax": 0,
        "test_clock": customer["test_clock"],
        "total": 0,
        "total_discount_amounts": [],
        "total_excluding_tax": 0,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": None,
    }


def invoice_line(
    *,
    id: str,
    invoice: str,
    amount: int,
    currency: str,
    description: str,
    quantity: int,
    period_start: int,
    period_end: int,
    price: dict[str, Any],
    metadata: dict[str, str],
    subscription: str | None,
    subscription_item: str | None,
    invoice_item: str | None,
    proration: bool,
) -> dict[str, Any]:
    if subscription_item is not None:
        parent = {
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": invoice_item,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": subscription,
                "subscription_item": subscription_item,
            },
            "type": "subscription_item_details",
        }
    else:
        parent = {
            "invoice_item_details": {
                "invoice_item": invoice_item,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": subscription,
            },
            "subscription_item_details": None,
            "type": "invoice_item_details",
        }
    return {
        "id": id,
        "object": "line_item",
        "amount": amount,
        "currency": currency,
        "description": description,
        "discount_amounts": [],
        "discountable": not proration,
        "discounts": [],
        "invoice": invoice,
        "livemode": False,
        "metadata": metadata,
        "parent": parent,
        "period": {"end": period_end, "start": period_start},
        "pretax_credit_amounts": [],
        "pricing": {
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
        "quantity": quantity,
        "quantity_decimal": str(quantity),
        "subscription": subscription,
        "subtotal": amount,
        "taxes": [],
    }


def invoice_item(
    *,
    id: str,
    created: int,
    customer: dict[str, Any],
    amount: int,
    currency: str,
    description: str,
    quantity: int,
    period_start: int,
    period_end: int,
    price: dict[str, Any],
    metadata: dict[str, str],
    subscription: str | None,
    subscription_item: str | None,
    proration: bool,
) -> dict[str, Any]:
    parent = None
    if subscription is not None:
        parent = {
            "subscription_details": {"subscription": subscription, "subscription_item": subscription_item},
            "type": "subscription_details",
        }
    return {
        "id": id,
        "object": "invoiceitem",
        "amount": amount,
        "currency": currency,
        "customer": customer["id"],
        "customer_account": None,
        "date": created,
        "description": description,
        "discountable": not proration,
        "discounts": [],
        "invoice": None,
        "livemode": False,
        "metadata": metadata,
        "net_amount": amount,
        "parent": parent,
        "period": {"end": period_end, "start": period_start},
        "pricing": {
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
        "proration": proration,
        "quantity": quantity,
        "quantity_decimal": str(quantity),
        "tax_rates": [],
        "test_clock": customer["test_clock"],
    }


def invoice_payment(
    *, id: str, created: int, invoice: str, amount: int, currency: str, payment_intent: str
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "invoice_payment",
        "amount_paid": None,
        "amount_requested": amount,
        "created": created,
        "currency": currency,
        "invoice": invoice,
        "is_default": True,
        "livemode": False,
        "payment": {"payment_intent": payment_intent, "type": "payment_intent"},
        "status": "open",
        "status_transitions": {"canceled_at": None, "paid_at": None},
    }


# --- checkout, billing portal, events, test clocks ----------------------------------------


def checkout_session(
    *,
    id: str,
    created: int,
    mode: str,
    url: str,
    success_url: str | None,
    cancel_url: str | None,
    customer: str | None,
    customer_email: str | None,
    client_reference_id: str | None,
    metadata: dict[str, str],
    currency: str,
    amount_subtotal: int,
    amount_total: int,
    allow_promotion_codes: bool | None,
    customer_creation: str | None,
    locale: str | None,
    submit_type: str | None,
    billing_address_collection: str | None,
    payment_method_collection: str | None,
) -> dict[str, Any]:
    invoice_creation = None
    if mode == "payment":
        invoice_creation = {
            "enabled": False,
            "invoice_data": {
                "account_tax_ids": None,
                "custom_fields": None,
                "description": None,
                "footer": None,
                "issuer": None,
                "metadata": {},
                "rendering_options": None,
            },
        }
    return {
        "id": id,
        "object": "checkout.session",
        "adaptive_pricing": {"enabled": False},
        "after_expiration": None,
        "allow_promotion_codes": allow_promotion_codes,
        "amount_subtotal": amount_subtotal,
        "amount_total": amount_total,
        "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
        "billing_address_collection": billing_address_collection,
        "cancel_url": cancel_url,
        "client_reference_id": client_reference_id,
        "client_secret": None,
        "collected_information": None,
        "consent": None,
        "consent_collection": None,
        "created": created,
        "currency": currency,
        "currency_conversion": None,
        "custom_fields": [],
        "custom_text": {
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        "customer": customer,
        "customer_account": None,
        "customer_creation": customer_creation,
        "customer_details": None,
        "customer_email": customer_email,
        "discounts": [],
        "expires_at": created + 24 * 3600,
        "integration_identifier": None,
        "invoice": None,
        "invoice_creation": invoice_creation,
        "livemode": False,
        "locale": locale,
        "managed_payments": None,
        "metadata": metadata,
        "mode": mode,
        "origin_context": None,
        "payment_intent": None,
        "payment_link": None,
        "payment_method_collection": payment_method_collection,
        "payment_method_configuration_details": None,
        "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
        "payment_method_types": ["card"],
        "payment_status": "unpaid",
        "permissions": None,
        "phone_number_collection": {"enabled": False},
        "recovered_from": None,
        "saved_payment_method_options": None,
        "setup_intent": None,
        "shipping_address_collection": None,
        "shipping_cost": None,
        "shipping_options": [],
        "status": "open",
        "submit_type": submit_type,
        "subscription": None,
        "success_url": success_url,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted_page",
        "url": url,
        "wallet_options": None,
    }


def checkout_line_item(*, id: str, price: dict[str, Any], quantity: int, description: str) -> dict[str, Any]:
    amount = price["unit_amount"] * quantity
    return {
        "id": id,
        "object": "item",
        "adjustable_quantity": None,
        "amount_discount": 0,
        "amount_subtotal": amount,
        "amount_tax": 0,
        "amount_total": amount,
        "currency": price["currency"],
        "description": description,
        "metadata": {},
        "price": price,
        "quantity": quantity,
    }


def portal_configuration(
    *,
    id: str,
    created: int,
    features: dict[str, Any],
    business_profile: dict[str, Any],
    default_return_url: str | None,
    is_default: bool,
    metadata: dict[str, str],
    name: str | None,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "billing_portal.configuration",
        "active": True,
        "application": None,
        "business_profile": business_profile,
        "created": created,
        "default_return_url": default_return_url,
        "features": features,
        "is_default": is_default,
        "livemode": False,
        "login_page": {"enabled": False, "url": None},
        "metadata": metadata,
        "name": name,
        "updated": created,
    }


def portal_features(
    *,
    customer_update: tuple[bool, list[str]] = (False, []),
    invoice_history: bool = False,
    payment_method_update: bool = False,
    subscription_cancel: tuple[bool, str] = (False, "at_period_end"),
    subscription_update: bool = False,
) -> dict[str, Any]:
    """The `features` hash of a portal configuration, with Stripe's defaults for what is unset."""
    return {
        "customer_update": {"allowed_updates": customer_update[1], "enabled": customer_update[0]},
        "invoice_history": {"enabled": invoice_history},
        "payment_method_update": {"enabled": payment_method_update, "payment_method_configuration": None},
        "subscription_cancel": {
            "cancellation_reason": {"enabled": False, "options": []},
            "enabled": subscription_cancel[0],
            "mode": subscription_cancel[1],
            "proration_behavior": "none",
        },
        "subscription_update": {
            "billing_cycle_anchor": None,
            "default_allowed_updates": ["price"] if subscription_update else [],
            "enabled": subscription_update,
            "proration_behavior": "always_invoice" if subscription_update else "none",
            "schedule_at_period_end": {"conditions": []},
            "trial_update_behavior": "end_trial",
        },
    }


def portal_session(
    *,
    id: str,
    created: int,
    customer: str,
    return_url: str | None,
    url: str,
    configuration: str,
    locale: str | None,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "billing_portal.session",
        "configuration": configuration,
        "created": created,
        "customer": customer,
        "customer_account": None,
        "flow": None,
        "livemode": False,
        "locale": locale,
        "on_behalf_of": None,
        "return_url": return_url,
        "url": url,
    }


def event(
    *,
    id: str,
    created: int,
    type: str,
    obj: dict[str, Any],
    previous_attributes: dict[str, Any] | None,
    request_id: str | None,
    idempotency_key: str | None,
    pending_webhooks: int,
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": id,
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": pending_webhooks,
        "request": {"id": request_id, "idempotency_key": idempotency_key},
        "type": type,
    }


def test_clock(*, id: str, created: int, frozen_time: int, name: str | None) -> dict[str, Any]:
    return {
        "id": id,
        "object": "test_helpers.test_clock",
        "created": created,
        "deletes_after": created + 30 * 86400,
        "frozen_time": frozen_time,
        "livemode": False,
        "name": name,
        "status": "ready",
        "status_details": {},
    }


ZERO_DECIMAL = {
    "bif",
    "clp",
    "djf",
    "gnf",
    "jpy",
    "kmf",
    "krw",
    "mga",
    "pyg",
    "rwf",
    "ugx",
    "vnd",
    "vuv",
    "xaf",
    "xof",
    "xpf",
}


def money(amount: int, currency: str) -> str:
    """`$9.00`, `€1.50`, `¥500`: amounts for the hosted pages."""
    symbols = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cad": "CA$", "aud": "A$"}
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    symbol = symbols.get(currency.lower(), currency.upper() + " ")
    if currency.lower() in ZERO_DECIMAL:
        return f"{sign}{symbol}{amount:,}"
    return f"{sign}{symbol}{amount // 100:,}.{amount % 100:02d}"
