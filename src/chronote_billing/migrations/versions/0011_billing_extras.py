"""billing extras: trials (0044), bounded auto-recharge (0045), erasures of people (0047)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import chronote_billing.core.db

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plan_trials",
        sa.Column("subject_kind", sa.String(length=16), nullable=False),
        sa.Column("subject_ref", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("checkout_session_id", sa.String(length=255), nullable=True),
        sa.Column("subscription_id", sa.String(length=64), nullable=True),
        sa.Column("trial_start", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("trial_end", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("card_on_file", sa.Boolean(), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "subject_kind in ('personal', 'server')", name=op.f("ck_plan_trials_subject_kind")
        ),
        sa.CheckConstraint(
            "status in ('offered', 'active', 'converted', 'ended')", name=op.f("ck_plan_trials_status")
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["billing_accounts.id"], name=op.f("fk_plan_trials_account_id_billing_accounts")
        ),
        sa.PrimaryKeyConstraint("subject_kind", "subject_ref", name=op.f("pk_plan_trials")),
    )
    op.create_index(op.f("ix_plan_trials_account_id"), "plan_trials", ["account_id"], unique=False)
    op.create_index(
        op.f("ix_plan_trials_checkout_session_id"), "plan_trials", ["checkout_session_id"], unique=False
    )

    with op.batch_alter_table("notification_settings") as batch:
        batch.add_column(sa.Column("auto_recharge_limit_count", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column(
                "auto_recharge_limit_amount",
                sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"),
                nullable=True,
            )
        )
        batch.add_column(sa.Column("auto_recharge_stopped_reason", sa.String(length=32), nullable=True))
        batch.add_column(
            sa.Column(
                "auto_recharge_stopped_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True
            )
        )
    op.create_table(
        "auto_recharge_purchases",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("pack_id", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("settled_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status in ('started', 'succeeded', 'failed')", name=op.f("ck_auto_recharge_purchases_status")
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["billing_accounts.id"],
            name=op.f("fk_auto_recharge_purchases_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auto_recharge_purchases")),
    )
    op.create_index(
        "ix_auto_recharge_purchases_account_month",
        "auto_recharge_purchases",
        ["account_id", "month"],
        unique=False,
    )

    op.create_table(
        "person_erasures",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("pseudonym", sa.String(length=32), nullable=False),
        sa.Column("erased_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("rows_changed", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("stripe_customer_updated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_person_erasures")),
        sa.UniqueConstraint("pseudonym", name=op.f("uq_person_erasures_pseudonym")),
    )


def downgrade() -> None:
    op.drop_table("person_erasures")
    op.drop_index("ix_auto_recharge_purchases_account_month", table_name="auto_recharge_purchases")
    op.drop_table("auto_recharge_purchases")
    with op.batch_alter_table("notification_settings") as batch:
        batch.drop_column("auto_recharge_stopped_at")
        batch.drop_column("auto_recharge_stopped_reason")
        batch.drop_column("auto_recharge_limit_amount")
        batch.drop_column("auto_recharge_limit_count")
    op.drop_index(op.f("ix_plan_trials_checkout_session_id"), table_name="plan_trials")
    op.drop_index(op.f("ix_plan_trials_account_id"), table_name="plan_trials")
    op.drop_table("plan_trials")
