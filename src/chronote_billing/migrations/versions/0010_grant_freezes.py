"""freezes of grants, kept for the statement (decision 0038)

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import chronote_billing.core.db

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.INTEGER(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ledger_grant_freezes",
        sa.Column("id", BIGINT, autoincrement=True, nullable=False),
        sa.Column("wallet_account_id", sa.String(length=40), nullable=False),
        sa.Column("grant_id", sa.String(length=40), nullable=False),
        sa.Column("frozen", sa.Boolean(), nullable=False),
        sa.Column("amount", BIGINT, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("after_transfer_id", BIGINT, nullable=False),
        sa.Column("balance_after", BIGINT, nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_ledger_grant_freezes_amount_nonneg")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_grant_freezes")),
    )
    op.create_index(
        "ix_ledger_grant_freezes_wallet",
        "ledger_grant_freezes",
        ["wallet_account_id", "after_transfer_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_grant_freezes_wallet", table_name="ledger_grant_freezes")
    op.drop_table("ledger_grant_freezes")
