"""Statistics and chunk sizing of the job model: what the store sums, and how chunks are sized."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.unit.test_store import add_batch, add_service

from batchserve.engine.batches import choose_chunk_size
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


def test_has_pending_chunks(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4])
    assert store.has_pending_chunks(batch.id)
    store.claim_chunk(batch.id, lambda c: "k")
    assert not store.has_pending_chunks(batch.id)


def test_a_batch_has_unfinished_chunks_while_one_is_pending_or_running(store, service, owner):
    batch = add_batch(store, service, owner, chunks=[4, 4])
    other = add_batch(store, service, owner, chunks=[4])
    first = store.claim_chunk(batch.id, lambda c: "k")
    assert store.has_unfinished_chunks(batch.id)  # one running, one pending
    second = store.claim_chunk(batch.id, lambda c: "k")
    done = {"state": ChunkState.SUCCEEDED.value, "succeeded": 4}
    store.set_chunk(first.id, expect_state=ChunkState.RUNNING, **done)
    assert store.has_unfinished_chunks(batch.id)  # one running
    store.set_chunk(second.id, expect_state=ChunkState.RUNNING, **done)
    assert not store.has_unfinished_chunks(batch.id)
    assert store.has_unfinished_chunks(other.id)  # the other batch's chunk is its own
    assert not store.has_unfinished_chunks("no-such-batch")


def test_a_service_s_record_time_is_a_moving_average(store, service):
    assert store.get_service_by_id(service.id).record_seconds is None
    store.observe_record_seconds(service.id, 0.010)
    assert store.get_service_by_id(service.id).record_seconds == pytest.approx(0.010)
    store.observe_record_seconds(service.id, 0.020, weight=0.5)
    assert store.get_service_by_id(service.id).record_seconds == pytest.approx(0.015)
    store.observe_record_seconds(10_000, 1.0)  # an unknown service is ignored


def test_a_measured_record_time_sizes_chunks_to_the_target_seconds():
    # 10 ms a record, 0.5 s chunks: 50 records, whatever the default.
    assert choose_chunk_size(None, 2, 1000, 100_000, record_seconds=0.01) == 50
    assert choose_chunk_size(None, 2, 1000, 100_000, 0.01, target_seconds=2.0) == 200


def test_the_smaller_of_the_time_and_spread_sizes_wins_within_the_maximum():
    # 400 records on 2 slots: 50 a chunk spreads them; 1 µs records would allow 500,000.
    assert choose_chunk_size(400, 2, 1000, 100_000, record_seconds=1e-6) == 50
    assert choose_chunk_size(400, 2, 1000, 100_000, record_seconds=0.1) == 5
    assert choose_chunk_size(None, 2, 1000, 100_000, record_seconds=1e-7) == 100_000
    assert choose_chunk_size(None, 2, 1000, 100_000, record_seconds=100.0) == 1


def test_with_a_known_count_the_chunks_fill_every_slot_in_the_last_round():
    # 0.5 s at 13.5 ms a record is 37 records: 11 chunks would leave a slot idle at the end.
    size = choose_chunk_size(400, 2, 1000, 100_000, record_seconds=0.0135)
    assert size == 34 and -(-400 // size) % 2 == 0
    size = choose_chunk_size(1000, 4, 1000, 100_000, record_seconds=0.003)
    assert -(-1000 // size) % 4 == 0
