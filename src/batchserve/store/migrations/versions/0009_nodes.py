"""nodes: many batchserve processes on one store

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

- ``nodes``: every running batchserve process (an API node, a compute node, or both), with the
  lease its heartbeat renews. A node whose lease ran out is dead: its chunks are claimed again.
- ``chunks.node_id``: the node running a chunk (its claim). Chunks left running before this
  revision have none, which reads as a dead node's.
- ``batches.upload_node``: the node receiving a batch's upload, so that only an upload whose
  node died is removed as abandoned.
- ``consumes``: one-record requests waiting for, or run by, a compute node, when the node that
  received them runs no service code.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("host_key", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(50), nullable=False),
        sa.Column("workers", sa.Integer(), nullable=False),
        sa.Column("executor", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("leader", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("chunks", sa.Column("node_id", sa.String(32), nullable=True))
    op.create_index("ix_chunks_node_state", "chunks", ["node_id", "state"])
    op.add_column("batches", sa.Column("upload_node", sa.String(32), nullable=True))
    op.create_table(
        "consumes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("node_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_consumes_state", "consumes", ["state", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_consumes_state", "consumes")
    op.drop_table("consumes")
    op.drop_column("batches", "upload_node")
    op.drop_index("ix_chunks_node_state", "chunks")
    op.drop_column("chunks", "node_id")
    op.drop_table("nodes")
