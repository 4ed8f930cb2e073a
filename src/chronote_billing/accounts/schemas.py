"""Public shapes of billing accounts."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class AccountView(BaseModel):
    object: str = "billing_account"
    id: str
    kind: str
    owner_ref: str
    display_name: str
    stripe_customer_id: str | None
    created_at: datetime
