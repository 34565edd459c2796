"""Fixtures shared by unit tests: a migrated SQLite store of the test's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batchserve.store import Store, upgrade


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    upgrade(url)
    store = Store(url)
    yield store
    store.close()
