"""service names belong to their first publisher, who may grant them to others

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

A name already published by several users keeps working: the user who published under it
first (by time) owns it, and every other user who has a version under it is granted it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_names",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "service_publishers",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("granted_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["name"], ["service_names.name"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["granted_by"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("name", "user_id"),
    )
    op.create_index(
        "ix_service_publishers_user_id", "service_publishers", ["user_id"], unique=False
    )
    # The first version of each name (by time, then by id) names its owner.
    op.execute(
        "INSERT INTO service_names (name, owner_id, created_at) "
        "SELECT s.name, s.owner_id, s.created_at FROM services s WHERE NOT EXISTS ("
        " SELECT 1 FROM services e WHERE e.name = s.name AND (e.created_at < s.created_at"
        " OR (e.created_at = s.created_at AND e.id < s.id)))"
    )
    op.execute(
        "INSERT INTO service_publishers (name, user_id, granted_by, created_at) "
        "SELECT s.name, s.owner_id, NULL, MIN(s.created_at) FROM services s "
        "JOIN service_names n ON n.name = s.name WHERE s.owner_id <> n.owner_id "
        "GROUP BY s.name, s.owner_id"
    )


def downgrade() -> None:
    op.drop_index("ix_service_publishers_user_id", table_name="service_publishers")
    op.drop_table("service_publishers")
    op.drop_table("service_names")
