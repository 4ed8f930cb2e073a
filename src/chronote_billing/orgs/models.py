"""Persistence of the orgs domain: organizations, members, linked servers, spend authorizations
and the audit log of every change to them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from chronote_billing.core.db import Base, BigInt, JSONType, UTCDateTime

ROLES = ("owner", "billing_admin", "member")


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    billing_account_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("billing_accounts.id"), unique=True
    )
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OrgMember(Base):
    __tablename__ = "org_members"
    __table_args__ = (
        CheckConstraint("role in ('owner', 'billing_admin', 'member')", name="role"),
        Index("ix_org_members_user_id", "user_id"),
    )

    org_id: Mapped[str] = mapped_column(String(40), ForeignKey("organizations.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    added_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OrgServer(Base):
    """A Discord server linked to an organization; a server is linked to at most one."""

    __tablename__ = "org_servers"

    guild_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40), ForeignKey("organizations.id"), index=True)
    linked_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SpendAuthorization(Base):
    """Permission for a member (personal work) or a linked server (server work) to spend from
    the organization's wallet, with an optional cap per UTC calendar month (millicredits)."""

    __tablename__ = "spend_authorizations"
    __table_args__ = (
        CheckConstraint("subject_type in ('member', 'server')", name="subject_type"),
        CheckConstraint("monthly_cap is null or monthly_cap >= 0", name="cap_nonneg"),
        Index("ix_spend_authorizations_subject", "subject_type", "subject_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40), ForeignKey("organizations.id"), index=True)
    subject_type: Mapped[str] = mapped_column(String(8))
    subject_id: Mapped[str] = mapped_column(String(32))
    monthly_cap: Mapped[int | None] = mapped_column(BigInt, nullable=True)
    # None: every capture source of the subject's kind of work.
    capture_sources: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime())
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OrgAuditEntry(Base):
    """Who changed what in an organization, when, with the state before and after."""

    __tablename__ = "org_audit_log"
    __table_args__ = (Index("ix_org_audit_log_org_id", "org_id", "id"),)

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(40), ForeignKey("organizations.id"))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(48))
    target: Mapped[str] = mapped_column(String(80))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
