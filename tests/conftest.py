"""Fixtures shared by every kind of test: the services some tests need (PostgreSQL), and what a
test does when such a service is missing."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from batchserve.settings import with_driver
from batchserve.store import upgrade
from batchserve.store.models import Base

#: The PostgreSQL server of the tests, overridden by ``BATCHSERVE_TEST_POSTGRES_URL``: a database
#: to connect to while the tests' own databases are created and dropped beside it.
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def missing_service(message: str) -> NoReturn:
    """A service the test needs is not there: skip on a laptop, fail in CI (``CI=true``), where
    a skipped test would pass unnoticed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (with CI=true a missing service fails the test)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of a reachable PostgreSQL server (of its maintenance database)."""
    url = with_driver(os.environ.get("BATCHSERVE_TEST_POSTGRES_URL", POSTGRES_URL))
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        missing_service(
            f"PostgreSQL is not reachable at {make_url(url).render_as_string()} "
            f"({' '.join(str(exc.orig).split())}); start it, or point "
            "BATCHSERVE_TEST_POSTGRES_URL at one"
        )
    finally:
        engine.dispose()
    return url


@contextmanager
def throwaway_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server of ``server_url``, dropped on exit: its URL."""
    name = f"batchserve_test_{secrets.token_hex(4)}"
    # CREATE and DROP DATABASE cannot run in a transaction.
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            # Sessions on it run in a zone far from UTC (as a server's TimeZone may be), so that
            # a time read back in the session's zone rather than in UTC shows in the tests.
            conn.execute(text(f"ALTER DATABASE \"{name}\" SET timezone TO 'Pacific/Chatham'"))
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            # FORCE: a server process the test killed may have left connections behind.
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A migrated database of the test session's own; tests empty it (:func:`empty_tables`)
    rather than create a database each, which would cost far more than the tests."""
    with throwaway_database(postgres_server) as url:
        upgrade(url)
        yield url


def empty_tables(engine: Engine) -> None:
    """Remove every row the tests may have left (not the migrations' version) and restart ids."""
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
