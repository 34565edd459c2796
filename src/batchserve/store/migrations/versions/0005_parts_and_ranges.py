"""upload parts apart from chunks; chunk costs and stage times

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Records are stored in large upload parts (``parts``), cut once as an upload streams; chunks
become record ranges over them, cut by the scheduler as it hands work out (``batches.claimed``
counts the records already in chunks). A chunk file of an earlier version becomes a part of
its own, so batches uploaded before run and read as they did.

Services keep what a chunk costs them (``chunk_seconds`` fixed per chunk, ``call_seconds``
fixed per call of a vectorized service, beside ``record_seconds``), and batches the times of
their stages.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "parts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("start_index", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("key", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("batch_id", "seq", name="uq_part_batch_seq"),
    )
    op.execute(
        "INSERT INTO parts (batch_id, seq, start_index, count, bytes, key) "
        "SELECT batch_id, seq, start_index, count, 0, input_key FROM chunks"
    )
    with op.batch_alter_table("batches") as t:
        t.add_column(sa.Column("claimed", sa.BigInteger(), nullable=False, server_default="0"))
        t.add_column(sa.Column("run_start_time", sa.DateTime(timezone=True), nullable=True))
        t.add_column(sa.Column("ingest_seconds", sa.Float(), nullable=True))
        t.add_column(sa.Column("export_seconds", sa.Float(), nullable=True))
    # Every record of an earlier batch is in a chunk already.
    op.execute("UPDATE batches SET claimed = total_count")
    with op.batch_alter_table("chunks") as t:
        t.drop_column("input_key")
        t.add_column(sa.Column("run_seconds", sa.Float(), nullable=False, server_default="0"))
    with op.batch_alter_table("services") as t:
        t.add_column(sa.Column("chunk_seconds", sa.Float(), nullable=True))
        t.add_column(sa.Column("call_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("services") as t:
        t.drop_column("call_seconds")
        t.drop_column("chunk_seconds")
    with op.batch_alter_table("chunks") as t:
        t.drop_column("run_seconds")
        t.add_column(
            sa.Column("input_key", sa.String(length=500), nullable=False, server_default="")
        )
    with op.batch_alter_table("batches") as t:
        t.drop_column("export_seconds")
        t.drop_column("ingest_seconds")
        t.drop_column("run_start_time")
        t.drop_column("claimed")
    op.drop_table("parts")
