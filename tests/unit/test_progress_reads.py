"""The reads behind watching batches: many batches' progress in one statement, failed records
found from the chunks that hold them, and a listing of one owner's batches."""

from __future__ import annotations

import pytest
from tests.unit.test_store import add_batch

from batchserve.blobs import LocalBlobStore
from batchserve.engine.auth import Principal
from batchserve.engine.batch_results import ResultOps
from batchserve.engine.batches import BatchOps
from batchserve.states import ChunkState
from batchserve.store.models import Chunk


@pytest.fixture
def service(store, owner):
    return store.add_service(
        name="squares",
        version="v1",
        alias="squares",
        inputs={"x": "int"},
        outputs={"y": "int"},
        artifacts=[],
        bundle_key="services/squares/v1/bundle.pkl",
        bundle_kind="callable",
        owner_id=owner.id,
    )


def finish(store, batch_id, seq, state, **counts):
    """Mark chunk ``seq`` of the batch as ended in ``state`` with these counts."""
    with store.session() as s:
        chunk = s.query(Chunk).filter_by(batch_id=batch_id, seq=seq).one()
        chunk.state = state.value
        chunk.error = "the worker died" if state is ChunkState.FAILED else None
        for name, value in counts.items():
            setattr(chunk, name, value)


def test_many_batches_are_read_with_their_counts_and_owners(store, owner, service):
    first = add_batch(store, service, owner, chunks=(4, 4))
    second = add_batch(store, service, owner, chunks=(2,))
    finish(store, first.id, 0, ChunkState.SUCCEEDED, succeeded=3, failed=1)

    found = store.batch_statuses([second.id, "no-such-batch", first.id, second.id])

    assert [batch.id for batch, _, _ in found] == [second.id, first.id]
    counts = {batch.id: counts for batch, counts, _ in found}
    assert (counts[first.id].succeeded, counts[first.id].failed, counts[first.id].chunks) == (
        3,
        1,
        2,
    )
    assert counts[second.id].completed == 0
    assert {user for _, _, user in found} == {"ann"}
    assert store.batch_statuses([]) == []


def test_statuses_leave_out_the_batches_a_caller_may_not_see(store, owner, service):
    mine = add_batch(store, service, owner, chunks=(2,))
    other = store.add_user("bob", "hash-of-bob", "reader")
    theirs = add_batch(store, service, other, chunks=(2,))
    ops = BatchOps(store, blobs=None, scheduler=None)  # type: ignore[arg-type]
    bob = Principal(other.id, "bob", "reader")

    assert [b.id for b, _, _ in ops.statuses(bob, [mine.id, theirs.id])] == [theirs.id]


def test_chunks_with_failures_are_found_in_index_order_past_a_record(store, owner, service):
    batch = add_batch(store, service, owner, chunks=(4, 4, 4, 4))
    finish(store, batch.id, 0, ChunkState.SUCCEEDED, succeeded=4)
    finish(store, batch.id, 1, ChunkState.SUCCEEDED, succeeded=3, failed=1)
    finish(store, batch.id, 3, ChunkState.FAILED, failed=4)

    assert [c.seq for c in store.chunks_with_failures(batch.id, 0, 10)] == [1, 3]
    assert [c.seq for c in store.chunks_with_failures(batch.id, 0, 1)] == [1]
    assert [c.seq for c in store.chunks_with_failures(batch.id, 8, 10)] == [3]
    assert store.chunks_with_failures(batch.id, 16, 10) == []


def test_failed_records_come_a_page_at_a_time_from_a_chunk_of_any_size(
    store, owner, service, tmp_path
):
    batch = add_batch(store, service, owner, chunks=(4, 1_000_000))
    finish(store, batch.id, 0, ChunkState.SUCCEEDED, succeeded=4)
    finish(store, batch.id, 1, ChunkState.FAILED, failed=1_000_000)
    results = ResultOps(store, LocalBlobStore(tmp_path / "blobs"))

    rows, after = results.failures(batch, 0, 3)

    assert [r["index"] for r in rows] == [4, 5, 6]
    assert {r["status"] for r in rows} == {"failed"}
    assert rows[0]["error"] == "the worker died"
    rows, after = results.failures(batch, after, 2)
    assert [r["index"] for r in rows] == [7, 8]
    assert results.failures(batch, 1_000_004, 5) == ([], None)


def test_a_listing_keeps_one_owners_batches(store, owner, service, who):
    other = store.add_user("bob", "hash-of-bob", "reader")
    add_batch(store, service, owner, chunks=(1,))
    theirs = add_batch(store, service, other, chunks=(1,))
    ops = BatchOps(store, blobs=None, scheduler=None)  # type: ignore[arg-type]
    bob = Principal(other.id, "bob", "reader")

    assert [b.id for b in ops.list_page(who, owner="bob").batches] == [theirs.id]
    assert ops.list_page(who, owner="nobody").batches == []
    # A reader asking for someone else's batches gets none (they see only their own).
    assert ops.list_page(bob, owner="ann").batches == []
    assert [b.id for b in ops.list_page(bob, owner="bob").batches] == [theirs.id]
