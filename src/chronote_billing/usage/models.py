"""Persistence of the usage domain: funding preferences, usage records (the attribution decision
of every recording, upload and metered event), meeting attributions and shares.

No meeting titles or content are stored anywhere here: only ids, times, sources and amounts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from chronote_billing.core.db import Base, BigInt, JSONType, UTCDateTime


class FundingPreference(Base):
    """A user's preferred order of their organization authorizations."""

    __tablename__ = "funding_preferences"

    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    source_order: Mapped[list[str]] = mapped_column(JSONType)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UsageRecord(Base):
    """One recording, upload or metered event with the payer decided for it (never changed)."""

    __tablename__ = "usage_records"
    __table_args__ = (
        CheckConstraint("kind in ('recording', 'upload', 'event')", name="kind"),
        CheckConstraint("status in ('open', 'finished', 'cancelled', 'failed', 'charged')", name="status"),
        CheckConstraint("context in ('personal', 'server')", name="context"),
        Index("ix_usage_records_payer_created", "payer_account_id", "created_at"),
        Index("ix_usage_records_meeting_id", "meeting_id"),
        Index("ix_usage_records_authorization_id", "authorization_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(12))
    status: Mapped[str] = mapped_column(String(12))
    payer_account_id: Mapped[str] = mapped_column(String(40), ForeignKey("billing_accounts.id"))
    payer_kind: Mapped[str] = mapped_column(String(16))
    authorization_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    hold_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    debit_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    context: Mapped[str] = mapped_column(String(8))
    capture_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    event_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    event_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Who started it; None for a server's auto-recorded meeting (decision 0029).
    user_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    guild_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    meeting_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    requested_minutes: Mapped[int] = mapped_column(Integer, default=0)
    approved_minutes: Mapped[int] = mapped_column(Integer, default=0)
    # The payer's longest recording when the hold was placed: extensions stop there.
    max_minutes: Mapped[int] = mapped_column(Integer, default=0)
    requested: Mapped[int] = mapped_column(BigInt, default=0)
    held: Mapped[int] = mapped_column(BigInt, default=0)
    charged: Mapped[int] = mapped_column(BigInt, default=0)
    # Cost above what was held, recorded honestly and never charged.
    shortfall: Mapped[int] = mapped_column(BigInt, default=0)
    seconds_by_source: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    wall_clock_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate_card_version: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class MeetingAttribution(Base):
    """Who paid for a meeting's recording: answered forever, whatever happens to the meeting."""

    __tablename__ = "meeting_attributions"

    meeting_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner_user_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    context: Mapped[str] = mapped_column(String(8))
    guild_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    capture_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    payer_account_id: Mapped[str] = mapped_column(String(40), ForeignKey("billing_accounts.id"))
    authorization_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    usage_record_id: Mapped[str] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MeetingShare(Base):
    """A personal meeting shared with a server: recorded, never charged."""

    __tablename__ = "meeting_shares"

    meeting_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    guild_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    shared_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
