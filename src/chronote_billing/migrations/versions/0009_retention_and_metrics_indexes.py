"""indexes for the retention purge and the metrics of the outbox and Stripe events

Revision ID: 0009
Revises: 0008

Decisions 0036 and 0037. The purge deletes delivered outbox rows and the idempotency records of
non-money scopes by age; /metrics counts dead outbox rows and reads the Stripe events of the
last hours. Each reads an index: partial ones where most rows would not be in it. The list of
non-money scopes is frozen here as it stands in ``chronote_billing/retention.py`` today.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

NON_MONEY_OPERATIONS = (
    "orgs.create",
    "orgs.add_member",
    "orgs.remove_member",
    "orgs.set_role",
    "orgs.link_server",
    "orgs.unlink_server",
    "orgs.authorize",
    "orgs.authorization_update",
    "orgs.authorization_revoke",
    "usage.share",
    "usage.funding_order",
    "notifications.alert_settings",
    "notifications.auto_recharge",
)
PURGEABLE = sa.text("(" + " OR ".join(f"scope LIKE '{op_}:%'" for op_ in NON_MONEY_OPERATIONS) + ")")
DELIVERED = sa.text("delivered_at IS NOT NULL")
DEAD = sa.text("dead_at IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_idempotency_records_purgeable",
        "idempotency_records",
        ["created_at"],
        postgresql_where=PURGEABLE,
        sqlite_where=PURGEABLE,
    )
    op.create_index(
        "ix_notification_outbox_delivered",
        "notification_outbox",
        ["delivered_at"],
        postgresql_where=DELIVERED,
        sqlite_where=DELIVERED,
    )
    op.create_index(
        "ix_notification_outbox_dead",
        "notification_outbox",
        ["dead_at"],
        postgresql_where=DEAD,
        sqlite_where=DEAD,
    )
    op.create_index(op.f("ix_stripe_events_received_at"), "stripe_events", ["received_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_stripe_events_received_at"), table_name="stripe_events")
    op.drop_index("ix_notification_outbox_dead", table_name="notification_outbox")
    op.drop_index("ix_notification_outbox_delivered", table_name="notification_outbox")
    op.drop_index("ix_idempotency_records_purgeable", table_name="idempotency_records")
