"""usage: auto-recorded server meetings have no starting user; the recording path's functions

Revision ID: 0008
Revises: 0007

Decision 0029: a server's auto-recorded meeting is started by nobody, so a usage record's user
and a meeting attribution's owner may be empty.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.alter_column("user_id", existing_type=sa.String(length=32), nullable=True)
    with op.batch_alter_table("meeting_attributions") as batch:
        batch.alter_column("owner_user_id", existing_type=sa.String(length=32), nullable=True)


def downgrade() -> None:
    # Before this revision every recording had a user: auto-recorded ones keep an empty one.
    op.execute("UPDATE meeting_attributions SET owner_user_id = '' WHERE owner_user_id IS NULL")
    op.execute("UPDATE usage_records SET user_id = '' WHERE user_id IS NULL")
    with op.batch_alter_table("meeting_attributions") as batch:
        batch.alter_column("owner_user_id", existing_type=sa.String(length=32), nullable=False)
    with op.batch_alter_table("usage_records") as batch:
        batch.alter_column("user_id", existing_type=sa.String(length=32), nullable=False)
