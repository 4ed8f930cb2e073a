"""organizations, spend authorizations, funding sources and usage records

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

import chronote_billing.core.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "funding_preferences",
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column(
            "source_order",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("updated_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_funding_preferences")),
    )
    op.create_table(
        "meeting_shares",
        sa.Column("meeting_id", sa.String(length=128), nullable=False),
        sa.Column("guild_id", sa.String(length=32), nullable=False),
        sa.Column("shared_by", sa.String(length=32), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("meeting_id", "guild_id", name=op.f("pk_meeting_shares")),
    )
    op.create_table(
        "meeting_attributions",
        sa.Column("meeting_id", sa.String(length=128), nullable=False),
        sa.Column("owner_user_id", sa.String(length=32), nullable=False),
        sa.Column("context", sa.String(length=8), nullable=False),
        sa.Column("guild_id", sa.String(length=32), nullable=True),
        sa.Column("capture_source", sa.String(length=16), nullable=True),
        sa.Column("payer_account_id", sa.String(length=40), nullable=False),
        sa.Column("authorization_id", sa.String(length=40), nullable=True),
        sa.Column("usage_record_id", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["payer_account_id"],
            ["billing_accounts.id"],
            name=op.f("fk_meeting_attributions_payer_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("meeting_id", name=op.f("pk_meeting_attributions")),
    )
    op.create_table(
        "organizations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("billing_account_id", sa.String(length=40), nullable=False),
        sa.Column("created_by", sa.String(length=32), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["billing_account_id"],
            ["billing_accounts.id"],
            name=op.f("fk_organizations_billing_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
        sa.UniqueConstraint("billing_account_id", name=op.f("uq_organizations_billing_account_id")),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("payer_account_id", sa.String(length=40), nullable=False),
        sa.Column("payer_kind", sa.String(length=16), nullable=False),
        sa.Column("authorization_id", sa.String(length=40), nullable=True),
        sa.Column("hold_id", sa.String(length=40), nullable=True),
        sa.Column("debit_id", sa.String(length=40), nullable=True),
        sa.Column("context", sa.String(length=8), nullable=False),
        sa.Column("capture_source", sa.String(length=16), nullable=True),
        sa.Column("event_type", sa.String(length=32), nullable=True),
        sa.Column("event_id", sa.String(length=128), nullable=True),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("guild_id", sa.String(length=32), nullable=True),
        sa.Column("meeting_id", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_minutes", sa.Integer(), nullable=False),
        sa.Column("approved_minutes", sa.Integer(), nullable=False),
        sa.Column("max_minutes", sa.Integer(), nullable=False),
        sa.Column("requested", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("held", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("charged", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("shortfall", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column(
            "seconds_by_source",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("wall_clock_seconds", sa.Integer(), nullable=True),
        sa.Column("rate_card_version", sa.String(length=16), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("context in ('personal', 'server')", name=op.f("ck_usage_records_context")),
        sa.CheckConstraint("kind in ('recording', 'upload', 'event')", name=op.f("ck_usage_records_kind")),
        sa.CheckConstraint(
            "status in ('open', 'finished', 'cancelled', 'failed', 'charged')",
            name=op.f("ck_usage_records_status"),
        ),
        sa.ForeignKeyConstraint(
            ["payer_account_id"],
            ["billing_accounts.id"],
            name=op.f("fk_usage_records_payer_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
    )
    op.create_index("ix_usage_records_authorization_id", "usage_records", ["authorization_id"], unique=False)
    op.create_index("ix_usage_records_meeting_id", "usage_records", ["meeting_id"], unique=False)
    op.create_index(
        "ix_usage_records_payer_created", "usage_records", ["payer_account_id", "created_at"], unique=False
    )
    op.create_table(
        "org_audit_log",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=48), nullable=False),
        sa.Column("target", sa.String(length=80), nullable=False),
        sa.Column(
            "before",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "after", sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"), nullable=True
        ),
        sa.Column("at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_org_audit_log_org_id_organizations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_org_audit_log")),
    )
    op.create_index("ix_org_audit_log_org_id", "org_audit_log", ["org_id", "id"], unique=False)
    op.create_table(
        "org_members",
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("added_by", sa.String(length=32), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role in ('owner', 'billing_admin', 'member')", name=op.f("ck_org_members_role")),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_org_members_org_id_organizations")
        ),
        sa.PrimaryKeyConstraint("org_id", "user_id", name=op.f("pk_org_members")),
    )
    op.create_index("ix_org_members_user_id", "org_members", ["user_id"], unique=False)
    op.create_table(
        "org_servers",
        sa.Column("guild_id", sa.String(length=32), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("linked_by", sa.String(length=32), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_org_servers_org_id_organizations")
        ),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_org_servers")),
    )
    op.create_index(op.f("ix_org_servers_org_id"), "org_servers", ["org_id"], unique=False)
    op.create_table(
        "spend_authorizations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("subject_type", sa.String(length=8), nullable=False),
        sa.Column("subject_id", sa.String(length=32), nullable=False),
        sa.Column("monthly_cap", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=True),
        sa.Column(
            "capture_sources",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("valid_from", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("valid_until", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(length=32), nullable=True),
        sa.Column("created_by", sa.String(length=32), nullable=False),
        sa.Column("created_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", chronote_billing.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "subject_type in ('member', 'server')", name=op.f("ck_spend_authorizations_subject_type")
        ),
        sa.CheckConstraint(
            "monthly_cap is null or monthly_cap >= 0", name=op.f("ck_spend_authorizations_cap_nonneg")
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_spend_authorizations_org_id_organizations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spend_authorizations")),
    )
    op.create_index(op.f("ix_spend_authorizations_org_id"), "spend_authorizations", ["org_id"], unique=False)
    op.create_index(
        "ix_spend_authorizations_subject",
        "spend_authorizations",
        ["subject_type", "subject_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_spend_authorizations_subject", table_name="spend_authorizations")
    op.drop_index(op.f("ix_spend_authorizations_org_id"), table_name="spend_authorizations")
    op.drop_table("spend_authorizations")
    op.drop_index(op.f("ix_org_servers_org_id"), table_name="org_servers")
    op.drop_table("org_servers")
    op.drop_index("ix_org_members_user_id", table_name="org_members")
    op.drop_table("org_members")
    op.drop_index("ix_org_audit_log_org_id", table_name="org_audit_log")
    op.drop_table("org_audit_log")
    op.drop_index("ix_usage_records_payer_created", table_name="usage_records")
    op.drop_index("ix_usage_records_meeting_id", table_name="usage_records")
    op.drop_index("ix_usage_records_authorization_id", table_name="usage_records")
    op.drop_table("usage_records")
    op.drop_table("organizations")
    op.drop_table("meeting_attributions")
    op.drop_table("meeting_shares")
    op.drop_table("funding_preferences")
