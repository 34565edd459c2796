"""services: the resources each worker of a service needs

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

``services.resources`` holds what a service asked for when it was published: ``num_cpus``,
``num_gpus`` and ``memory`` (bytes). Services published earlier get ``{}``, which means the
defaults (one CPU, no GPU, no memory reserved): they keep running as they did.

The column is added in place (``ALTER TABLE ... ADD COLUMN``), not through a copy of the table:
on SQLite, a copy would drop the old ``services`` table, which other tables refer to.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "services",
        sa.Column("resources", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
    )


def downgrade() -> None:
    op.drop_column("services", "resources")
