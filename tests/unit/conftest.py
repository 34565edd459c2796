"""Fixtures shared by unit tests: a migrated store of the test's own, on every backend.

Every test that asks for ``store`` runs twice: on a SQLite file (the embedded default) and on
PostgreSQL (a shared store), so the two agree on what the store does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.conftest import empty_tables

from batchserve.store import Store, upgrade


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
