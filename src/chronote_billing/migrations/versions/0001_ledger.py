"""billing accounts, api keys, idempotency and the ledger

Revision ID: 0001
Revises:
Create Date: 2026-11-24 01:22:35.529791
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import chronote_billing.core.db

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_api_keys_secret_hash")),
    )
    op.create_table(
        "billing_accounts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("owner_ref", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("wallet_account_id", sa.String(length=40), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind in ('personal', 'server', 'organization')", name=op.f("ck_billing_accounts_kind")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_accounts")),
        sa.UniqueConstraint("kind", "owner_ref", name="uq_billing_accounts_kind_owner"),
        sa.UniqueConstraint("stripe_customer_id", name=op.f("uq_billing_accounts_stripe_customer_id")),
        sa.UniqueConstraint("wallet_account_id", name=op.f("uq_billing_accounts_wallet_account_id")),
    )
    op.create_table(
        "idempotency_records",
        sa.Column("scope", sa.String(length=96), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resource_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("scope", "key", name=op.f("pk_idempotency_records")),
    )
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("system_code", sa.String(length=32), nullable=True),
        sa.Column("billing_account_id", sa.String(length=40), nullable=True),
        sa.Column("credits_posted", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("debits_posted", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("debits_pending", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("next_due_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind in ('wallet', 'system')", name=op.f("ck_ledger_accounts_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_accounts")),
        sa.UniqueConstraint("billing_account_id", name=op.f("uq_ledger_accounts_billing_account_id")),
        sa.UniqueConstraint("system_code", name=op.f("uq_ledger_accounts_system_code")),
    )
    op.create_table(
        "ledger_cap_usage",
        sa.Column("cap_id", sa.String(length=40), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("held", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("used", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.CheckConstraint("held >= 0", name=op.f("ck_ledger_cap_usage_held_nonneg")),
        sa.CheckConstraint("used >= 0", name=op.f("ck_ledger_cap_usage_used_nonneg")),
        sa.PrimaryKeyConstraint("cap_id", "period", name=op.f("pk_ledger_cap_usage")),
    )
    op.create_table(
        "ledger_debits",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("wallet_account_id", sa.String(length=40), nullable=False),
        sa.Column("billing_account_id", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("metadata", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("cap_id", sa.String(length=40), nullable=True),
        sa.Column("cap_period", sa.String(length=7), nullable=True),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["wallet_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_debits_wallet_account_id_ledger_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_debits")),
    )
    with op.batch_alter_table("ledger_debits", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ledger_debits_wallet_account_id"), ["wallet_account_id"], unique=False
        )

    op.create_table(
        "ledger_grants",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("wallet_account_id", sa.String(length=40), nullable=False),
        sa.Column("billing_account_id", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("remaining", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("held", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("effective_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("frozen_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("cause_type", sa.String(length=32), nullable=False),
        sa.Column("cause_id", sa.String(length=128), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_ledger_grants_amount_positive")),
        sa.CheckConstraint("held >= 0 and held <= remaining", name=op.f("ck_ledger_grants_held_bounds")),
        sa.CheckConstraint(
            "remaining >= 0 and remaining <= amount", name=op.f("ck_ledger_grants_remaining_bounds")
        ),
        sa.ForeignKeyConstraint(
            ["wallet_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_grants_wallet_account_id_ledger_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_grants")),
    )
    with op.batch_alter_table("ledger_grants", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_grants_cause", ["cause_type", "cause_id"], unique=False)
        batch_op.create_index("ix_ledger_grants_wallet_status", ["wallet_account_id", "status"], unique=False)

    op.create_table(
        "ledger_holds",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("wallet_account_id", sa.String(length=40), nullable=False),
        sa.Column("billing_account_id", sa.String(length=40), nullable=False),
        sa.Column("amount_requested", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("amount_held", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("amount_captured", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("expires_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("metadata", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("cap_id", sa.String(length=40), nullable=True),
        sa.Column("cap_period", sa.String(length=7), nullable=True),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("settled_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status in ('open', 'captured', 'released', 'expired')", name=op.f("ck_ledger_holds_status")
        ),
        sa.CheckConstraint("amount_captured >= 0", name=op.f("ck_ledger_holds_captured_nonneg")),
        sa.CheckConstraint("amount_held >= 0", name=op.f("ck_ledger_holds_held_nonneg")),
        sa.ForeignKeyConstraint(
            ["wallet_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_holds_wallet_account_id_ledger_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_holds")),
    )
    with op.batch_alter_table("ledger_holds", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ledger_holds_wallet_status_expiry",
            ["wallet_account_id", "status", "expires_at"],
            unique=False,
        )

    op.create_table(
        "ledger_transfers",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("debit_account_id", sa.String(length=40), nullable=False),
        sa.Column("credit_account_id", sa.String(length=40), nullable=False),
        sa.Column("wallet_account_id", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("pending_id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=True),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("grant_id", sa.String(length=40), nullable=False),
        sa.Column("hold_id", sa.String(length=40), nullable=True),
        sa.Column("debit_id", sa.String(length=40), nullable=True),
        sa.Column("balance_after", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "phase in ('posted', 'pending', 'post', 'void')", name=op.f("ck_ledger_transfers_phase")
        ),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_ledger_transfers_amount_nonneg")),
        sa.CheckConstraint(
            "debit_account_id <> credit_account_id", name=op.f("ck_ledger_transfers_distinct_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["credit_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_transfers_credit_account_id_ledger_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["debit_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_transfers_debit_account_id_ledger_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_transfers")),
        sa.UniqueConstraint("pending_id", name=op.f("uq_ledger_transfers_pending_id")),
    )
    with op.batch_alter_table("ledger_transfers", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_transfers_grant", ["grant_id"], unique=False)
        batch_op.create_index("ix_ledger_transfers_hold", ["hold_id"], unique=False)
        batch_op.create_index("ix_ledger_transfers_wallet_id", ["wallet_account_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ledger_transfers", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_transfers_wallet_id")
        batch_op.drop_index("ix_ledger_transfers_hold")
        batch_op.drop_index("ix_ledger_transfers_grant")

    op.drop_table("ledger_transfers")
    with op.batch_alter_table("ledger_holds", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_holds_wallet_status_expiry")

    op.drop_table("ledger_holds")
    with op.batch_alter_table("ledger_grants", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_grants_wallet_status")
        batch_op.drop_index("ix_ledger_grants_cause")

    op.drop_table("ledger_grants")
    with op.batch_alter_table("ledger_debits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_debits_wallet_account_id"))

    op.drop_table("ledger_debits")
    op.drop_table("ledger_cap_usage")
    op.drop_table("ledger_accounts")
    op.drop_table("idempotency_records")
    op.drop_table("billing_accounts")
    op.drop_table("api_keys")
