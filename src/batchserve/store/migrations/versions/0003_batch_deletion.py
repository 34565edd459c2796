"""when a batch's deletion was asked for

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as t:
        t.add_column(sa.Column("deleting_since", sa.DateTime(timezone=True), nullable=True))
        t.create_index(t.f("ix_batches_deleting_since"), ["deleting_since"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("batches") as t:
        t.drop_index(t.f("ix_batches_deleting_since"))
        t.drop_column("deleting_since")
