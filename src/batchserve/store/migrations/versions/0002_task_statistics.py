"""task statistics per chunk, measured record time per service

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_CHUNK_COUNTERS = ("retried", "timed_out", "requeued")
_CHUNK_MEASURES = ("cpu_user", "cpu_system", "wait_seconds")
_CHUNK_BYTES = ("bytes_in", "bytes_out")


def upgrade() -> None:
    with op.batch_alter_table("chunks") as t:
        for name in _CHUNK_COUNTERS:
            t.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
        for name in _CHUNK_MEASURES:
            t.add_column(sa.Column(name, sa.Float(), nullable=False, server_default="0"))
        for name in _CHUNK_BYTES:
            t.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
        t.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("services") as t:
        t.add_column(sa.Column("record_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("services") as t:
        t.drop_column("record_seconds")
    with op.batch_alter_table("chunks") as t:
        t.drop_column("queued_at")
        for name in (*_CHUNK_BYTES, *_CHUNK_MEASURES, *_CHUNK_COUNTERS):
            t.drop_column(name)
