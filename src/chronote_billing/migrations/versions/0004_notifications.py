"""outbound webhook outbox and alert state

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import chronote_billing.core.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_outbox",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=True),
        sa.Column("data", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("dedupe_key", sa.String(length=255), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("dead_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint("kind in ('event', 'job')", name=op.f("ck_notification_outbox_kind")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_notification_outbox_attempts_nonneg")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_outbox")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_notification_outbox_dedupe_key")),
    )
    op.create_index("ix_notification_outbox_due", "notification_outbox", ["next_attempt_at"], unique=False)
    op.create_index(
        "ix_notification_outbox_account", "notification_outbox", ["account_id", "created_at"], unique=False
    )
    op.create_table(
        "notification_settings",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column(
            "low_balance_threshold_millicredits",
            sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"),
            nullable=True,
        ),
        sa.Column("auto_recharge_enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "auto_recharge_threshold_millicredits",
            sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"),
            nullable=True,
        ),
        sa.Column("auto_recharge_pack_id", sa.String(length=40), nullable=True),
        sa.Column("updated_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["billing_accounts.id"],
            name=op.f("fk_notification_settings_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_notification_settings")),
    )
    op.create_table(
        "notification_threshold_state",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("armed", sa.Boolean(), nullable=False),
        sa.Column("crossings", sa.Integer(), nullable=False),
        sa.Column("last_fired_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind in ('low_balance', 'auto_recharge')", name=op.f("ck_notification_threshold_state_kind")
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["billing_accounts.id"],
            name=op.f("fk_notification_threshold_state_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("account_id", "kind", name=op.f("pk_notification_threshold_state")),
    )


def downgrade() -> None:
    op.drop_table("notification_threshold_state")
    op.drop_table("notification_settings")
    op.drop_index("ix_notification_outbox_account", table_name="notification_outbox")
    op.drop_index("ix_notification_outbox_due", table_name="notification_outbox")
    op.drop_table("notification_outbox")
