"""Stripe event payloads for webhook tests, shaped like Stripe's own objects (API 2026-10-28).

When tests/data/stripe_fixtures.json (Stripe's published example objects) is present, each
object starts from Stripe's example and our fields are laid over it, so handlers see every
field a real event carries.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "data" / "stripe_fixtures.json"
_base: dict[str, Any] | None = None


def _fixture(kind: str) -> dict[str, Any]:
    global _base
    if _base is None:
        _base = {}
        if FIXTURES.exists():
            raw = json.loads(FIXTURES.read_text())
            _base = raw.get("resources", raw)
    return copy.deepcopy(_base.get(kind, {}))


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


def oid(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def event(etype: str, obj: dict[str, Any], created: int, event_id: str | None = None) -> dict[str, Any]:
    ev = _fixture("event")
    ev.update(
        id=event_id or oid("evt"),
        object="event",
        type=etype,
        created=created,
        livemode=False,
        api_version="2026-10-28.endive",
        data={"object": obj},
        pending_webhooks=1,
        request={"id": None, "idempotency_key": None},
    )
    return ev


def subscription(
    sub_id: str,
    customer: str,
    lookup_key: str,
    start: int,
    end: int,
    status: str = "active",
    metadata: dict[str, str] | None = None,
    interval: str = "month",
    created: int | None = None,
    cancel_at_period_end: bool = False,
) -> dict[str, Any]:
    sub = _fixture("subscription")
    price = _fixture("price")
    price.update(
        id="price_" + lookup_key,
        lookup_key=lookup_key,
        recurring={"interval": interval, "interval_count": 1, "meter": None, "usage_type": "licensed"},
        type="recurring",
    )
    item = {
        "id": "si_" + sub_id[4:],
        "object": "subscription_item",
        "price": price,
        "quantity": 1,
        "subscription": sub_id,
        "current_period_start": start,
        "current_period_end": end,
        "metadata": {},
    }
    sub.update(
        id=sub_id,
        object="subscription",
        customer=customer,
        status=status,
        created=created or start,
        start_date=created or start,
        cancel_at_period_end=cancel_at_period_end,
        cancel_at=end if cancel_at_period_end else None,
        canceled_at=None,
        ended_at=None,
        metadata=metadata or {},
        items={"object": "list", "data": [item], "has_more": False, "url": "/v1/subscription_items"},
    )
    return sub


def invoice(
    inv_id: str,
    customer: str,
    sub_id: str | None,
    billing_reason: str,
    amount: int,
    line_start: int,
    line_end: int,
    sub_metadata: dict[str, str] | None = None,
    status: str = "paid",
    lines: list[dict[str, Any]] | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    inv = _fixture("invoice")
    inv.pop("subscription", None)
    line = {
        "id": oid("il"),
        "object": "line_item",
        "amount": amount,
        "currency": "usd",
        "invoice": inv_id,
        "period": {"start": line_start, "end": line_end},
        "quantity": 1,
        "metadata": {},
        "parent": {
            "type": "subscription_item_details",
            "subscription_item_details": {
                "proration": False,
                "subscription": sub_id,
                "subscription_item": "si_x",
            },
        },
        "pricing": {"type": "price_details", "price_details": {"price": "price_x", "product": "prod_x"}},
    }
    inv.update(
        id=inv_id,
        object="invoice",
        customer=customer,
        billing_reason=billing_reason,
        status=status,
        amount_due=amount,
        amount_paid=amount if status == "paid" else 0,
        amount_remaining=0 if status == "paid" else amount,
        currency="usd",
        period_start=line_start,
        period_end=line_start,
        metadata=metadata or {},
        status_transitions={"paid_at": None, "finalized_at": line_start, "voided_at": None},
        parent=(
            {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"subscription": sub_id, "metadata": sub_metadata or {}},
            }
            if sub_id
            else None
        ),
        lines={"object": "list", "data": lines if lines is not None else [line], "has_more": False},
    )
    return inv


def checkout_session(
    cs_id: str,
    customer: str,
    account_id: str,
    mode: str,
    payment_intent: str | None,
    metadata: dict[str, str],
    payment_status: str = "paid",
    subscription: str | None = None,
) -> dict[str, Any]:
    cs = _fixture("checkout.session")
    cs.update(
        id=cs_id,
        object="checkout.session",
        customer=customer,
        client_reference_id=account_id,
        mode=mode,
        payment_intent=payment_intent,
        payment_status=payment_status,
        status="complete",
        subscription=subscription,
        metadata=metadata,
        invoice=None,
    )
    return cs


def charge(
    ch_id: str, customer: str, payment_intent: str, amount: int, amount_refunded: int = 0
) -> dict[str, Any]:
    ch = _fixture("charge")
    ch.update(
        id=ch_id,
        object="charge",
        customer=customer,
        payment_intent=payment_intent,
        amount=amount,
        amount_captured=amount,
        amount_refunded=amount_refunded,
        refunded=amount_refunded >= amount,
        captured=True,
        paid=True,
        status="succeeded",
    )
    return ch


def dispute(dp_id: str, ch_id: str, payment_intent: str, amount: int, status: str) -> dict[str, Any]:
    dp = _fixture("dispute")
    dp.update(
        id=dp_id, object="dispute", charge=ch_id, payment_intent=payment_intent, amount=amount, status=status
    )
    return dp
