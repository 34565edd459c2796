"""The executor port's contract, on every executor: the local pool of sandboxed processes and Ray
actors on a real local cluster (two nodes), each running chunks of a real service bundle.

The tests talk to the executor as the scheduler does: they submit tasks and read the events
it reports.
"""

from __future__ import annotations

import itertools
import queue
import sys
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pyarrow as pa
import pytest
from tests.conftest import RAY_ENV, RayCluster

from batchserve.blobs import LocalBlobStore, keys
from batchserve.blobs.segments import open_stream_reader
from batchserve.engine.inputs import PartRef
from batchserve.engine.results import read_results
from batchserve.engine.tasks import (
    ChunkTask,
    ConsumeTask,
    Finished,
    LoadTask,
    Lost,
    Progress,
    ServiceSpec,
    TaskEvent,
)
from batchserve.executors import Executor, ProcessExecutor
from batchserve.worker.sandbox import WorkerSandbox

RECORDS = 40
_ids = itertools.count()
# Service functions travel by value, as the SDK sends a notebook's: a Ray worker cannot import
# this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Events:
    """What the executor reports, as the scheduler's queue would get it."""

    def __init__(self) -> None:
        self.queue: queue.Queue[TaskEvent] = queue.Queue()

    def __call__(self, event: TaskEvent) -> None:
        self.queue.put(event)

    def end_of(self, task_id: str, timeout: float = 120.0) -> Finished | Lost:
        deadline = time.monotonic() + timeout
        while True:
            event = self.queue.get(timeout=max(0.1, deadline - time.monotonic()))
            if event.task_id == task_id and isinstance(event, (Finished, Lost)):
                return event


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> LocalBlobStore:
    return LocalBlobStore(tmp_path_factory.mktemp("blobs"))


@pytest.fixture(scope="module", params=["local", "ray"])
def executor(
    request: pytest.FixtureRequest, blobs: LocalBlobStore, monkeypatch_module: Any
) -> Iterator[tuple[Executor, Events]]:
    events = Events()
    made: Any
    if request.param == "local":
        made = ProcessExecutor(2, blobs, events, WorkerSandbox.create("auto", [], network="none"))
    else:
        cluster: RayCluster = request.getfixturevalue("ray_cluster")
        for name, value in RAY_ENV.items():
            monkeypatch_module.setenv(name, value)
        from batchserve.executors.ray import RayExecutor

        made = RayExecutor(cluster.address, blobs.url, events)
    made.start()
    yield made, events
    made.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def publish(blobs: LocalBlobStore, code: Any) -> ServiceSpec:
    key = keys.bundle_key("contract", f"v{next(_ids)}", "bundle")
    bundle = {"format": 1, "kind": "callable", "code": code, "init": None}
    blobs.write_bytes(key, cloudpickle.dumps({**bundle, "models": {}, "objects": {}}))
    return ServiceSpec(
        key=key,
        bundle_key=key,
        mode="row",
        inputs={"x": "float"},
        outputs={"y": "float"},
        artifacts=(),
        publisher="1",
    )


def chunk(blobs: LocalBlobStore, spec: ServiceSpec, attempt: int = 1) -> ChunkTask:
    batch_id = f"contract{next(_ids)}"
    part = keys.part_key(batch_id, 0)
    with blobs.open_write(part) as f, pa.ipc.new_file(f, pa.schema([("x", pa.float64())])) as w:
        w.write_table(pa.table({"x": [float(i) for i in range(RECORDS)]}))
    return ChunkTask(
        task_id=f"t{next(_ids)}",
        batch_id=batch_id,
        chunk_id=next(_ids),
        start_index=0,
        count=RECORDS,
        attempt=attempt,
        parts=(PartRef(part, 0, RECORDS),),
        result_key=keys.result_key(batch_id, 0, attempt, segmented=not blobs.appends),
        service=spec,
    )


def results(blobs: LocalBlobStore, task: ChunkTask) -> pa.Table:
    with open_stream_reader(blobs, task.result_key) as f:
        return read_results(f, {"y": "float"})


def double(x: float) -> float:
    return 2 * x


def slow(x: float) -> float:
    import time

    time.sleep(0.2)
    return x


def test_a_chunk_runs_and_its_results_are_in_the_store(executor, blobs):  # type: ignore[no-untyped-def]
    ex, events = executor
    assert ex.free_slots() == ex.capacity() >= 1
    task = chunk(blobs, publish(blobs, double))
    ex.submit(task)
    end = events.end_of(task.task_id)
    assert isinstance(end, Finished)
    assert end.result.get("succeeded") == RECORDS, end.result
    assert end.result["failed"] == 0
    table = results(blobs, task)
    assert table.column("index").to_pylist() == list(range(RECORDS))
    assert [o["y"] for o in table.column("outputs").to_pylist()] == [2.0 * i for i in range(40)]


def test_stopping_a_running_chunk_reports_it_lost_as_stopped(executor, blobs):  # type: ignore[no-untyped-def]
    ex, events = executor
    task = chunk(blobs, publish(blobs, slow))
    ex.submit(task)
    deadline = time.monotonic() + 60
    while not any(w.get("task") == task.task_id for w in ex.workers()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)  # a few records in
    assert ex.stop_task(task.task_id)
    end = events.end_of(task.task_id)
    assert isinstance(end, Lost) and end.stopped
    done = results(blobs, task).num_rows if blobs.exists(task.result_key) else 0
    assert done < RECORDS  # stopped, not run to its end
    assert not ex.stop_task(task.task_id)  # not running any more
    deadline = time.monotonic() + 30
    while ex.free_slots() < ex.capacity():  # its slot is free again
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_consume_returns_its_record(executor, blobs):  # type: ignore[no-untyped-def]
    ex, events = executor
    spec = publish(blobs, double)
    task = ConsumeTask(f"c{next(_ids)}", {"x": 21.0}, spec)
    ex.submit(task)
    end = events.end_of(task.task_id)
    assert isinstance(end, Finished)
    assert end.result["status"] == "succeeded"
    assert end.result["outputs"] == {"y": 42.0}


def test_loading_a_service_ahead_finishes(executor, blobs):  # type: ignore[no-untyped-def]
    ex, events = executor
    task = LoadTask(f"l{next(_ids)}", publish(blobs, double))
    ex.submit(task)
    assert isinstance(events.end_of(task.task_id), Finished)


def test_progress_is_reported_while_a_chunk_runs(executor, blobs):  # type: ignore[no-untyped-def]
    ex, events = executor
    task = chunk(blobs, publish(blobs, slow))
    ex.submit(task)
    seen: list[TaskEvent] = []
    while True:
        event = events.queue.get(timeout=120)
        if event.task_id != task.task_id:
            continue
        seen.append(event)
        if isinstance(event, (Finished, Lost)):
            break
    progress = [e for e in seen if isinstance(e, Progress)]
    assert progress, "no progress before the end"
    counts = [e.succeeded for e in progress]
    assert counts == sorted(counts) and counts[-1] <= RECORDS
    assert isinstance(seen[-1], Finished) and seen[-1].result["succeeded"] == RECORDS
