"""A batch that cannot run says why in its scheduling error (Azure Batch's JobSchedulingError)."""

from __future__ import annotations

import pytest
from tests.unit.test_deletion import HeldWorkers, records, wait_until

from batchserve.blobs import LocalBlobStore
from batchserve.engine import placement
from batchserve.engine.batches import BatchOps
from batchserve.engine.ingest import JSONL
from batchserve.engine.scheduler import Scheduler


@pytest.fixture
def workers():  # type: ignore[no-untyped-def]
    return HeldWorkers(slots=0)  # an API node: no workers of its own


@pytest.fixture
def ops(store, tmp_path, workers):  # type: ignore[no-untyped-def]
    scheduler = Scheduler(store, LocalBlobStore(tmp_path / "blobs"))
    workers.report = scheduler.post
    scheduler.start(workers)
    yield BatchOps(store, scheduler.blobs, scheduler)
    scheduler.stop()


def test_a_batch_waiting_while_no_node_has_workers_says_so_until_one_has(  # type: ignore[no-untyped-def]
    ops, who, squares, workers
):
    batch = ops.create(who, squares, records(8), JSONL, chunk_size=4)
    wait_until("a scheduling error", lambda: ops.get(who, batch.id).scheduling_error)
    error = ops.get(who, batch.id).scheduling_error
    assert (error["category"], error["code"]) == ("servererror", "NoComputeNodes")
    assert "start a compute node" in error["message"]
    assert ops.get(who, batch.id).state == "pending"  # it waits; it is not failed
    workers.slots = 2  # workers join
    wait_until("the error to go", lambda: ops.get(who, batch.id).scheduling_error is None)
    wait_until("its chunks to run", lambda: len(workers.of(batch.id)) == 2)


def test_a_batch_whose_workers_cannot_be_placed_waits_and_says_why_until_they_can(  # type: ignore[no-untyped-def]
    ops, who, squares, workers, monkeypatch
):
    monkeypatch.setattr(placement, "LOOK_SECONDS", 0.0)  # each dispatch asks again
    workers.slots = 2
    workers.missing = "no node of the Ray cluster has GPU 1; its nodes have: CPU 2, GPU 0"
    batch = ops.create(who, squares, records(8), JSONL, chunk_size=4)
    wait_until("a scheduling error", lambda: ops.get(who, batch.id).scheduling_error)
    error = ops.get(who, batch.id).scheduling_error
    assert (error["category"], error["code"]) == ("servererror", "ResourcesUnavailable")
    assert error["message"] == f"The batch waits: {workers.missing}"
    assert ops.get(who, batch.id).state == "pending"
    assert workers.of(batch.id) == []  # nothing claimed: another node may take it
    workers.missing = None  # a GPU node joins
    wait_until("its chunks to run", lambda: len(workers.of(batch.id)) == 2)
    wait_until("the error to go", lambda: ops.get(who, batch.id).scheduling_error is None)
