"""Public shapes of organizations, members, linked servers, authorizations and audit entries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class OrgView(BaseModel):
    object: str = "organization"
    id: str
    name: str
    billing_account_id: str
    created_by: str
    created_at: datetime


class MemberView(BaseModel):
    object: str = "org_member"
    org_id: str
    user_id: str
    display_name: str | None = Field(
        default=None,
        description="The name this person signed in to the portal with; null until they have. Listings only.",
    )
    role: str
    added_by: str
    created_at: datetime


class ServerView(BaseModel):
    object: str = "org_server"
    org_id: str
    guild_id: str
    server_account_id: str
    linked_by: str
    created_at: datetime


class AuthorizationView(BaseModel):
    object: str = "spend_authorization"
    id: str
    org_id: str
    org_name: str
    subject_type: str
    subject_id: str
    monthly_cap_credits: int | None = Field(description="Cap per UTC calendar month in credits; null: none.")
    monthly_cap: int | None = Field(description="The same cap in millicredits.")
    capture_sources: list[str] | None = Field(description="Allowed capture sources; null: all.")
    valid_from: datetime
    valid_until: datetime | None
    revoked_at: datetime | None
    status: str = Field(description="active, scheduled (not valid yet), expired or revoked.")
    created_by: str
    created_at: datetime
    period: str = Field(description="The calendar month (UTC) the usage figures are for.")
    used: int = Field(description="Millicredits charged under this authorization this month.")
    held: int = Field(description="Millicredits held by recordings in progress this month.")
    left: int = Field(
        description="Millicredits that can still be spent now: the smaller of the cap's room and "
        "the organization's available balance (0 unless active)."
    )
    over_cap: bool = Field(
        default=False,
        description="This month's use (used and held) is above the cap: it was lowered below what "
        "was already spent; nothing more can be spent under it this month.",
    )


class MembershipView(BaseModel):
    object: str = "org_membership"
    org: OrgView
    role: str


class AuditEntryView(BaseModel):
    object: str = "org_audit_entry"
    id: int
    org_id: str
    actor: str
    actor_name: str | None = Field(default=None, description="The actor's name, when known (decision 0024).")
    action: str
    target: str
    description: str = Field(
        default="", description='What changed, in words: "cap for Cy: 600 → 400 credits".'
    )
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    at: datetime
