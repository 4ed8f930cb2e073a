"""plans, subscriptions, Stripe customers and webhook events

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

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
        sa.Column(
            "current_period_start", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("current_period_end", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("payment_failed_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_event_created", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("updated_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["billing_accounts.id"],
            name=op.f("fk_plan_subscriptions_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_plan_subscriptions")),
        sa.UniqueConstraint(
            "stripe_subscription_id", name=op.f("uq_plan_subscriptions_stripe_subscription_id")
        ),
    )
    op.add_column("plan_subscriptions", sa.Column("pending_plan_id", sa.String(length=40), nullable=True))
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=80), nullable=False),
        sa.Column("created", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("object_id", sa.String(length=255), nullable=True),
        sa.Column("account_id", sa.String(length=40), nullable=True),
        sa.Column("outcome", sa.String(length=24), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("received_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    op.create_index(op.f("ix_stripe_events_account_id"), "stripe_events", ["account_id"], unique=False)
    op.create_index(op.f("ix_stripe_events_object_id"), "stripe_events", ["object_id"], unique=False)
    op.create_table(
        "stripe_subscriptions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("price_lookup_key", sa.String(length=80), nullable=False),
        sa.Column("interval", sa.String(length=8), nullable=False),
        sa.Column("pending_plan_id", sa.String(length=40), nullable=True),
        sa.Column(
            "current_period_start", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("current_period_end", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("stripe_created", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("last_event_created", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("last_event_rank", sa.String(length=120), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("updated_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["billing_accounts.id"],
            name=op.f("fk_stripe_subscriptions_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_subscriptions")),
    )
    op.create_index(
        op.f("ix_stripe_subscriptions_account_id"), "stripe_subscriptions", ["account_id"], unique=False
    )
    op.create_table(
        "stripe_invoices",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("subscription_id", sa.String(length=64), nullable=True),
        sa.Column("billing_reason", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("amount_paid", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("first_failed_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("paid_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["billing_accounts.id"],
            name=op.f("fk_stripe_invoices_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_invoices")),
    )
    op.create_index(op.f("ix_stripe_invoices_account_id"), "stripe_invoices", ["account_id"], unique=False)
    op.create_index(
        op.f("ix_stripe_invoices_subscription_id"), "stripe_invoices", ["subscription_id"], unique=False
    )
    op.create_table(
        "stripe_checkout_sessions",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=True),
        sa.Column("interval", sa.String(length=8), nullable=True),
        sa.Column("pack_id", sa.String(length=40), nullable=True),
        sa.Column("price_lookup_key", sa.String(length=80), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("completed_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["billing_accounts.id"],
            name=op.f("fk_stripe_checkout_sessions_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_checkout_sessions")),
    )
    op.create_index(
        op.f("ix_stripe_checkout_sessions_account_id"),
        "stripe_checkout_sessions",
        ["account_id"],
        unique=False,
    )
    op.create_table(
        "stripe_purchases",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("cause_key", sa.String(length=160), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("product_ref", sa.String(length=40), nullable=False),
        sa.Column("payment_intent_id", sa.String(length=64), nullable=True),
        sa.Column("invoice_id", sa.String(length=64), nullable=True),
        sa.Column("grant_id", sa.String(length=40), nullable=False),
        sa.Column("credits", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("refund_target", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("reversed", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("frozen", sa.Boolean(), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["billing_accounts.id"],
            name=op.f("fk_stripe_purchases_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_purchases")),
        sa.UniqueConstraint("cause_key", name=op.f("uq_stripe_purchases_cause_key")),
    )
    op.create_index(op.f("ix_stripe_purchases_account_id"), "stripe_purchases", ["account_id"], unique=False)
    op.create_index(op.f("ix_stripe_purchases_invoice_id"), "stripe_purchases", ["invoice_id"], unique=False)
    op.create_index(
        op.f("ix_stripe_purchases_payment_intent_id"), "stripe_purchases", ["payment_intent_id"], unique=False
    )
    op.create_table(
        "stripe_charges",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=True),
        sa.Column("payment_intent_id", sa.String(length=64), nullable=True),
        sa.Column("invoice_id", sa.String(length=64), nullable=True),
        sa.Column("amount", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("amount_refunded", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("dispute_status", sa.String(length=8), nullable=False),
        sa.Column("updated_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_charges")),
    )
    op.create_index(op.f("ix_stripe_charges_invoice_id"), "stripe_charges", ["invoice_id"], unique=False)
    op.create_index(
        op.f("ix_stripe_charges_payment_intent_id"), "stripe_charges", ["payment_intent_id"], unique=False
    )
    op.create_table(
        "complimentary_plans",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("starts_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ends_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["billing_accounts.id"],
            name=op.f("fk_complimentary_plans_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_complimentary_plans")),
    )
    op.create_index(
        op.f("ix_complimentary_plans_account_id"), "complimentary_plans", ["account_id"], unique=False
    )
    op.create_table(
        "chronote_imports",
        sa.Column("key", sa.String(length=160), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("imported_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["billing_accounts.id"],
            name=op.f("fk_chronote_imports_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_chronote_imports")),
    )


def downgrade() -> None:
    for table in (
        "chronote_imports",
        "complimentary_plans",
        "stripe_charges",
        "stripe_purchases",
        "stripe_checkout_sessions",
        "stripe_invoices",
        "stripe_subscriptions",
        "stripe_events",
    ):
        op.drop_table(table)
    op.drop_table("plan_subscriptions")
