"""Deleting a batch: it is gone for users at once, and its rows and files are removed by the
scheduler once its workers are stopped, however long they take to stop."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest

from batchserve.blobs import LocalBlobStore
from batchserve.engine import batches as batch_ops
from batchserve.engine.batches import BatchOps
from batchserve.engine.errors import Conflict, NotFound
from batchserve.engine.ingest import JSONL
from batchserve.engine.scheduler import Scheduler
from batchserve.engine.services import ServiceOps
from batchserve.engine.tasks import ChunkTask, ConsumeTask, Finished, Lost, Progress


class HeldWorkers:
    """An executor whose chunks run until they are stopped. A stop waits for ``release`` (set
    by default): cleared, it plays workers that are slow to stop."""

    def __init__(self, slots: int = 2) -> None:
        self.slots = slots
        self.running: dict[str, ChunkTask] = {}
        self.submitted: list[ChunkTask] = []
        self.stopped: list[str] = []
        self.release = threading.Event()
        self.release.set()
        self.report = None
        self.missing: str | None = None  # why no worker can be placed now, if set

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def slots_for(self, spec: object) -> int:
        return 1

    def free_slots(self) -> int:
        return self.slots - len(self.running)

    def capacity(self) -> int:
        return self.slots

    def unavailable(self, resources: dict[str, object]) -> str | None:
        return self.missing

    def submit(self, task: ChunkTask | ConsumeTask) -> None:
        assert isinstance(task, ChunkTask)
        self.submitted.append(task)
        self.running[task.task_id] = task

    def stop_task(self, task_id: str) -> bool:
        self.release.wait()
        if self.running.pop(task_id, None) is None:
            return False
        self.stopped.append(task_id)
        self.report(Lost(task_id, "stopped", stopped=True))
        return True

    def workers(self) -> list[dict[str, object]]:
        return []

    def owed_releases(self) -> set[str]:
        return set()

    def release(self, batch_id: str) -> None:
        pass

    def of(self, batch_id: str) -> list[str]:
        return [t.task_id for t in list(self.submitted) if t.batch_id == batch_id]


def wait_until(what, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def workers():
    return HeldWorkers()


@pytest.fixture
def scheduler(store, tmp_path, workers):
    scheduler = Scheduler(store, LocalBlobStore(tmp_path / "blobs"))
    workers.report = scheduler.post
    scheduler.start(workers)
    yield scheduler
    workers.release.set()
    scheduler.stop()


@pytest.fixture
def ops(store, scheduler):
    return BatchOps(store, scheduler.blobs, scheduler)


@pytest.fixture
def service(squares):
    return squares


def records(n: int) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps({"n": i}) + "\n" for i in range(n)).encode())


def running(ops, who, service, workers, n=16):
    """A batch of ``n`` records in chunks of 4, two of them running."""
    batch = ops.create(who, service, records(n), JSONL, parallel_count=2, chunk_size=4)
    wait_until("two chunks to run", lambda: len(workers.of(batch.id)) == 2)
    return batch


def files(ops, batch_id):
    return ops.blobs.list(f"batches/{batch_id}")


def test_deleting_a_running_batch_stops_its_workers_then_removes_it(
    ops, who, service, workers, monkeypatch
):
    monkeypatch.setattr(batch_ops, "DELETE_WAIT_SECONDS", 60.0)
    batch = running(ops, who, service, workers)
    assert files(ops, batch.id)
    assert ops.delete(who, batch.id) is True  # removed while the call waited
    assert sorted(workers.stopped) == sorted(workers.of(batch.id))
    assert ops.store.get_batch(batch.id) is None
    assert ops.store.chunks(batch.id) == []
    assert files(ops, batch.id) == []
    with pytest.raises(NotFound, match="No batch"):
        ops.get(who, batch.id)


def test_a_delete_answers_before_slow_workers_stop_and_the_removal_follows(
    ops, who, service, workers, monkeypatch
):
    monkeypatch.setattr(batch_ops, "DELETE_WAIT_SECONDS", 0.0)
    batch = running(ops, who, service, workers)
    kept = ops.create(who, service, records(4), JSONL, start=False)
    workers.release.clear()
    assert ops.delete(who, batch.id) is False  # the removal goes on after the call
    # Gone for users at once.
    for read in (ops.get, ops.status, ops.delete):
        with pytest.raises(NotFound, match="No batch"):
            read(who, batch.id)
    assert [b.id for b in ops.list_batches(who)] == [kept.id]
    # Its rows and files wait for its workers to stop.
    assert ops.store.get_batch(batch.id) is not None
    assert files(ops, batch.id)
    workers.release.set()
    wait_until("the batch to be removed", lambda: ops.store.get_batch(batch.id) is None)
    assert files(ops, batch.id) == []
    assert sorted(workers.stopped) == sorted(workers.of(batch.id))
    assert ops.get(who, kept.id).state == "created"


def test_a_batch_whose_removal_goes_on_is_deleting_for_its_owner_and_in_listings_that_ask(
    ops, who, service, workers, monkeypatch
):
    monkeypatch.setattr(batch_ops, "DELETE_WAIT_SECONDS", 0.0)
    batch = running(ops, who, service, workers)
    workers.release.clear()
    assert ops.delete(who, batch.id) is False
    left = ops.being_deleted(who, batch.id)
    assert left is not None
    assert (left.state, left.previous_state) == ("deleting", "running")
    assert [b.id for b in ops.list_batches(who, states=["deleting"])] == [batch.id]
    assert ops.list_batches(who, states=["running"]) == []
    workers.release.set()
    wait_until("the batch to be removed", lambda: ops.store.get_batch(batch.id) is None)
    assert ops.being_deleted(who, batch.id) is None
    assert ops.list_batches(who, states=["deleting"]) == []


def test_deleting_a_finished_batch_removes_it_without_waiting_for_workers(
    ops, who, service, workers
):
    batch = ops.create(who, service, records(8), JSONL, start=False)
    assert ops.cancel(who, batch.id).state == "cancelled"
    workers.release.clear()  # no worker of it runs: nothing to wait for
    assert ops.delete(who, batch.id) is True
    assert ops.store.get_batch(batch.id) is None
    assert files(ops, batch.id) == []


def test_a_batch_marked_for_deletion_gets_no_new_chunk_and_the_scheduler_removes_it(
    ops, who, service, workers, scheduler
):
    batch = running(ops, who, service, workers)
    first = workers.of(batch.id)
    # Marked with no removal asked of the scheduler (as when asking failed): a worker that
    # frees up gets no chunk of it, and the scheduler removes it on its own.
    done = first[0]
    del workers.running[done]
    assert ops.store.mark_deleting(batch.id)
    scheduler.post(Finished(done, {"succeeded": 4, "failed": 0}))
    wait_until("the batch to be removed", lambda: ops.store.get_batch(batch.id) is None)
    assert workers.of(batch.id) == first
    assert workers.stopped == [first[1]]
    assert files(ops, batch.id) == []


def test_events_of_a_deleted_batchs_workers_change_nothing(
    ops, who, service, workers, scheduler, caplog
):
    caplog.set_level(logging.WARNING)
    batch = running(ops, who, service, workers)
    assert ops.delete(who, batch.id) is True
    stopped = workers.of(batch.id)
    for task_id in stopped:
        scheduler.post(Progress(task_id, succeeded=2, failed=1))
        scheduler.post(Finished(task_id, {"succeeded": 4, "failed": 0}))
        scheduler.post(Lost(task_id, "the worker died", stopped=False))
    # The scheduler goes on: the next batch runs, and the deleted one stays gone.
    after = running(ops, who, service, workers)
    wait_until("the next batch to run", lambda: ops.get(who, after.id).state == "running")
    assert ops.store.get_batch(batch.id) is None
    assert files(ops, batch.id) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_service_is_deleted_only_once_its_deleted_batches_are_removed(
    ops, who, service, workers, scheduler, monkeypatch
):
    monkeypatch.setattr(batch_ops, "DELETE_WAIT_SECONDS", 0.0)
    services = ServiceOps(ops.store, ops.blobs, scheduler)
    batch = running(ops, who, service, workers)
    workers.release.clear()
    assert ops.delete(who, batch.id) is False
    with pytest.raises(Conflict, match="removal is not finished"):
        services.delete(who, "squares", "v1")
    workers.release.set()
    wait_until("the batch to be removed", lambda: ops.store.get_batch(batch.id) is None)
    services.delete(who, "squares", "v1")
    assert ops.store.get_service("squares", "v1") is None
