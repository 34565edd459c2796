"""Changes that read a row to decide how to change it do not lose a concurrent change."""

from __future__ import annotations

import threading

import pytest

from batchserve.states import BatchState
from batchserve.store import RevisionMismatch, Store, upgrade
from batchserve.store.models import Batch
from tests.unit.test_store import add_batch, add_service


@pytest.fixture
def store(tmp_path):
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    upgrade(url)
    store = Store(url)
    yield store
    store.close()


def test_two_moves_from_the_same_state_do_not_both_happen(store):
    owner = store.add_user("ann", "hash", "owner")
    service = add_service(store, owner, "svc", "v1")
    for _ in range(30):
        batch = add_batch(store, service, owner, chunks=[4])
        store.transition(batch.id, BatchState.PENDING)
        barrier = threading.Barrier(2)
        moved: dict[str, Batch | None] = {}

        def move(wanted: BatchState, batch_id: str = batch.id) -> None:
            barrier.wait()
            moved[wanted.value] = store.transition(
                batch_id, wanted, only_from=[BatchState.PENDING]
            )

        threads = [
            threading.Thread(target=move, args=(w,))
            for w in (BatchState.RUNNING, BatchState.PAUSING)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [w for w, b in moved.items() if b is not None]
        assert len(winners) == 1, moved  # the other saw the new state and did nothing
        final = store.get_batch(batch.id)
        assert final.state == winners[0]
        assert final.previous_state == BatchState.PENDING.value


def test_two_updates_with_the_same_etag_do_not_both_apply(store):
    owner = store.add_user("ann", "hash", "owner")
    service = add_service(store, owner, "svc", "v1")
    for _ in range(30):
        batch = add_batch(store, service, owner, chunks=[4])
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def update(priority: int, batch_id: str = batch.id, revision: int = batch.revision) -> None:
            barrier.wait()
            try:
                store.update_batch(batch_id, expect_revision=revision, priority=priority)
                outcomes.append("applied")
            except RevisionMismatch:
                outcomes.append("refused")

        threads = [threading.Thread(target=update, args=(p,)) for p in (5, 7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["applied", "refused"]
        assert store.get_batch(batch.id).revision == batch.revision + 1
