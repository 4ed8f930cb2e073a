"""Persistence of billing accounts."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from chronote_billing.core.db import Base, UTCDateTime


class AccountKind(StrEnum):
    PERSONAL = "personal"
    SERVER = "server"
    ORGANIZATION = "organization"


class BillingAccount(Base):
    """The payer. Exactly one external owner reference is set, matching ``kind``."""

    __tablename__ = "billing_accounts"
    __table_args__ = (
        UniqueConstraint("kind", "owner_ref", name="uq_billing_accounts_kind_owner"),
        CheckConstraint("kind in ('personal', 'server', 'organization')", name="kind"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # Discord user id (personal), guild id (server) or organization id (organization).
    owner_ref: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(200))
    wallet_account_id: Mapped[str] = mapped_column(String(40), unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
