"""Alembic environment: batchserve runs migrations itself (see ``batchserve.store.migrate``)."""

from alembic import context
from sqlalchemy import text

from batchserve.store.models import Base
from batchserve.store.sql import make_engine

config = context.config
target_metadata = Base.metadata

# The key of the PostgreSQL advisory lock that migrations hold (any fixed number: "bsmg").
_MIGRATION_LOCK = 0x62736D67


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Servers started together on one database migrate it one at a time: the others
                # wait here until the first commits, then find the schema current. (SQLite's
                # database belongs to one server.)
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                )
            context.run_migrations()
    engine.dispose()


run_migrations_online()
