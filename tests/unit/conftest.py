"""Fixtures shared by unit tests: a migrated store of the test's own, on every backend.

Every test that asks for ``store`` runs twice: on a SQLite file (the embedded default) and on
PostgreSQL (a shared store), so the two agree on what the store does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.conftest import empty_tables

from batchserve.engine.auth import Principal
from batchserve.store import Store, upgrade
from batchserve.store.models import Service, User


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'meta.db'}"
        upgrade(url)
        store = Store(url)
    else:
        store = Store(request.getfixturevalue("postgres_url"))
        empty_tables(store.engine)
    yield store
    store.close()


@pytest.fixture
def owner(store: Store) -> User:
    """The user who owns the store's services and batches."""
    return store.add_user("ann", "hash-of-ann", "owner")


@pytest.fixture
def who(owner: User) -> Principal:
    """The owner, as the engine sees a caller."""
    return Principal(id=owner.id, username=owner.username, role=owner.role)


@pytest.fixture
def squares(store: Store, who: Principal) -> Service:
    """A row-mode service ``n -> sq`` (its bundle is never loaded by these tests)."""
    return store.add_service(
        name="squares",
        version="v1",
        alias="square",
        inputs={"n": "int"},
        outputs={"sq": "int"},
        artifacts=[],
        bundle_key="services/squares/v1/bundle.pkl",
        bundle_kind="callable",
        owner_id=who.id,
    )
