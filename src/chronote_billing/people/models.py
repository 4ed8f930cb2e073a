"""People: a Discord user's display name, as Discord last told us when they signed in."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from chronote_billing.core.db import Base, UTCDateTime


class Person(Base):
    __tablename__ = "people"

    discord_user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
