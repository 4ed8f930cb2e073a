"""people: display names of Discord users, learned at portal sign-in

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import chronote_billing.core.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "people",
        sa.Column("discord_user_id", sa.String(length=32), nullable=False),
        sa.Column("display_name", sa.String(length=100), nullable=False),
        sa.Column("updated_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("discord_user_id", name=op.f("pk_people")),
    )


def downgrade() -> None:
    op.drop_table("people")
