"""record counts and positions past 2**31

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

A batch's record count and a chunk's first record index become 64-bit on PostgreSQL, where
``integer`` stops at 2,147,483,647. SQLite keeps every integer in up to 8 bytes already.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

WIDENED = (("batches", "total_count"), ("chunks", "start_index"))


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column in WIDENED:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer())


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column in WIDENED:
        op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger())
