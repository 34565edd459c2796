"""Statistics of the job model: what the store sums over a batch's chunks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.unit.test_store import add_batch, add_service

from batchserve.states import ChunkState
from batchserve.store.models import Chunk


@pytest.fixture
def service(store, owner):
    return add_service(store, owner, "svc", "v1")


def test_statistics_of_every_chunk_add_up_in_the_batch_counts(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 4])
    for chunk in store.chunks(batch.id):
        store.set_chunk(
            chunk.id,
            retried=Chunk.retried + 2,
            cpu_user=Chunk.cpu_user + 0.25,
            cpu_system=Chunk.cpu_system + 0.5,
            bytes_in=Chunk.bytes_in + 100,
            bytes_out=Chunk.bytes_out + 40,
            requeued=Chunk.requeued + 4,
            timed_out=Chunk.timed_out + 1,
        )
    counts = store.batch_counts(batch.id)
    assert (counts.retried, counts.requeued, counts.timed_out) == (4, 8, 2)
    assert counts.cpu_user == pytest.approx(0.5)
    assert counts.cpu_system == pytest.approx(1.0)
    assert (counts.bytes_in, counts.bytes_out) == (200, 80)


def test_a_chunk_s_wait_runs_from_when_it_was_queued_to_when_it_was_claimed(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4])
    chunk = store.chunks(batch.id)[0]
    assert store.batch_counts(batch.id).wait_seconds == 0
    store.mark_queued(batch.id)
    queued = store.get_chunk(chunk.id).queued_at
    store.set_chunk(chunk.id, queued_at=queued - timedelta(seconds=3))
    claimed = store.claim_chunk(batch.id, lambda c: "k")
    assert claimed is not None and claimed.queued_at is None
    assert store.batch_counts(batch.id).wait_seconds == pytest.approx(3, abs=0.5)


def test_mark_queued_leaves_running_and_finished_chunks_alone(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 4])
    first = store.claim_chunk(batch.id, lambda c: "k")
    store.mark_queued(batch.id)
    assert store.get_chunk(first.id).queued_at is None
    assert all(c.queued_at is not None for c in store.chunks(batch.id, [ChunkState.PENDING]))


def test_has_waiting_records(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4])
    assert store.has_waiting_records(batch.id)
    store.claim_chunk(batch.id, lambda c: "k")
    assert not store.has_waiting_records(batch.id)


def test_a_batch_has_unfinished_records_while_a_chunk_is_pending_or_running(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 4])
    other = add_batch(store, service, owner, chunks=[4])
    first = store.claim_chunk(batch.id, lambda c: "k")
    assert store.has_unfinished_records(batch.id)  # one running, one pending
    second = store.claim_chunk(batch.id, lambda c: "k")
    done = {"state": ChunkState.SUCCEEDED.value, "succeeded": 4}
    store.set_chunk(first.id, expect_state=ChunkState.RUNNING, **done)
    assert store.has_unfinished_records(batch.id)  # one running
    store.set_chunk(second.id, expect_state=ChunkState.RUNNING, **done)
    assert not store.has_unfinished_records(batch.id)
    assert store.has_unfinished_records(other.id)  # the other batch's chunk is its own
    assert not store.has_unfinished_records("no-such-batch")


def test_the_workers_time_on_chunks_adds_up(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 4])
    for chunk in store.chunks(batch.id):
        store.set_chunk(chunk.id, run_seconds=Chunk.run_seconds + 0.25)
    assert store.batch_counts(batch.id).run_seconds == pytest.approx(0.5)
