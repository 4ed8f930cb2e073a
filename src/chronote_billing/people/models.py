"""People: a Discord user's display name, as Discord last told us when they signed in."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from chronote_billing.core.db import Base, JSONType, UTCDateTime


class Person(Base):
    __tablename__ = "people"

    discord_user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PersonErasure(Base):
    """The audit entry of an erasure (decision 0047): the pseudonym that replaced the person,
    when and why, and what changed. It names neither the person's id nor their name."""

    __tablename__ = "person_erasures"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(32), unique=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(100))
    rows_changed: Mapped[dict[str, Any]] = mapped_column(JSONType)
    stripe_customer_updated: Mapped[bool] = mapped_column(Boolean, default=False)
