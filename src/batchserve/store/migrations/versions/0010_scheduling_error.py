"""batches.scheduling_error: why a batch cannot run, or could not

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

- ``batches.scheduling_error``: Azure Batch's ``JobSchedulingError`` of the batch, a JSON object
  ``{"category", "code", "message", "details"}``: a batch it depends on that ended otherwise
  than completed, or no live node with workers to run it. Null when there is none (every batch
  written before this revision).
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("scheduling_error", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as t:
        t.drop_column("scheduling_error")
