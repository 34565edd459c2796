"""accounts: case-insensitive usernames, deactivation, token generations

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

``users.username_key`` holds the username in lower case, unique, so that no two users differ
only in case and logins ignore case. Users an earlier version let in that differ only in case
keep their rows: the first (lowest id) gets the plain key, the others a key no new name can
take (``name#id``), and they log in with their exact names.

``users.active`` lets a user who owns services or batches be deactivated rather than deleted.
``users.token_generation`` and ``tokens.generation``: a token is valid only while its generation
is its user's; changing a password or deactivating a user bumps it.

The columns are added in place (``ALTER TABLE ... ADD COLUMN``), not through a copy of the
table: on SQLite, a copy would drop the old ``users`` table, which other tables refer to.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("username_key", sa.String(length=200), nullable=True))
    op.add_column(
        "users", sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true())
    )
    op.add_column(
        "users", sa.Column("token_generation", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column(
        "tokens", sa.Column("generation", sa.Integer(), nullable=False, server_default="0")
    )
    users = sa.table(
        "users",
        sa.column("id", sa.Integer()),
        sa.column("username", sa.String()),
        sa.column("username_key", sa.String()),
    )
    conn = op.get_bind()
    taken: set[str] = set()
    for user_id, username in conn.execute(
        sa.select(users.c.id, users.c.username).order_by(users.c.id)
    ).all():
        key = username.lower()
        if key in taken:
            key = f"{key}#{user_id}"[:200]
        taken.add(key)
        conn.execute(users.update().where(users.c.id == user_id).values(username_key=key))
    if conn.dialect.name != "sqlite":  # SQLite cannot change a column's nullability in place
        op.alter_column("users", "username_key", nullable=False)
    op.create_index("ix_users_username_key", "users", ["username_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_users_username_key", table_name="users")
    op.drop_column("tokens", "generation")
    op.drop_column("users", "token_generation")
    op.drop_column("users", "active")
    op.drop_column("users", "username_key")
