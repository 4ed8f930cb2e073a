"""plans, subscriptions, Stripe customers and webhook events

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import chronote_billing.core.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plan_subscriptions",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("stripe_subscription_id", sa.String(length=64), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=64), nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("price_lookup_key", sa.String(length=80), nullable=False),
        sa.Column("interval", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("current_period_start", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("current_period_end", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("payment_failed_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_event_created", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("updated_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["billing_accounts.id"], name=op.f("fk_plan_subscriptions_account_id_billing_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_plan_subscriptions")),
        sa.UniqueConstraint("stripe_subscription_id", name=op.f("uq_plan_subscriptions_stripe_subscription_id")),
    )


def downgrade() -> None:
    op.drop_table("plan_subscriptions")
