"""Cancel keeps finished results; a killed server or worker loses and repeats nothing."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from batchserve import BatchState, Client, errors

from .conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.e2e


def slow_double(x: float) -> float:
    import time

    time.sleep(0.1)
    return 2 * x


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(interval)


def _publish(client, name):  # type: ignore[no-untyped-def]
    return client.publish_service(
        name, code=slow_double, inputs={"x": float}, outputs={"y": float}, version="v1"
    )


def test_cancel_in_the_middle_keeps_finished_results(client, unique_name):  # type: ignore[no-untyped-def]
    svc = _publish(client, unique_name)
    batch = svc.batch([{"x": float(i)} for i in range(200)], parallel_count=2).start()
    wait_for(lambda: batch.results().completed_item_count >= 6)
    batch.cancel()
    final = wait_for(lambda: (r := batch.results()).state is BatchState.CANCELLED and r)
    finished = final.completed_item_count
    assert 6 <= finished < 200
    frame = final.to_pandas()
    assert len(frame) == 200  # every record has a final status
    done = frame[frame["status"] == "succeeded"]
    assert len(done) == finished
    assert (done["y"] == 2 * done["index"]).all()
    assert set(frame["status"]) <= {"succeeded", "cancelled"}
    # Cancelled means stopped: nothing more finishes afterwards.
    time.sleep(0.5)
    assert batch.results().completed_item_count == finished


def test_a_killed_server_resumes_and_finishes_every_record_exactly_once(fresh_server):  # type: ignore[no-untyped-def]
    fresh_server.start()
    with Client(fresh_server.url, username="admin", password=ADMIN_PASSWORD) as client:
        svc = _publish(client, "durable")
        batch = svc.batch(
            [{"x": float(i)} for i in range(60)], parallel_count=2, chunk_size=5
        ).start()
        wait_for(lambda: batch.results().completed_item_count >= 10)
    fresh_server.kill()
    fresh_server.start()
    with Client(fresh_server.url, username="admin", password=ADMIN_PASSWORD) as client:
        batch = client.get_service("durable", version="v1").get_batch(batch.execution_id)
        final = batch.wait(timeout=120)
        assert final.state is BatchState.COMPLETED
        assert final.completed_item_count == 60
        frame = final.to_pandas()
        assert list(frame["index"]) == list(range(60))
        assert (frame["y"] == 2 * frame["index"]).all()
        assert frame["attempts"].max() >= 2  # something really was re-run after the crash


def test_a_killed_workers_chunk_is_retried_on_a_fresh_worker(client, server, unique_name):  # type: ignore[no-untyped-def]
    svc = _publish(client, unique_name)
    batch = svc.batch([{"x": float(i)} for i in range(40)], parallel_count=2, chunk_size=10).start()
    token = client.token
    headers = {"Authorization": f"Bearer {token}"}

    def busy_worker():  # type: ignore[no-untyped-def]
        workers = httpx.get(server.url + "/v1/workers", headers=headers).json()["workers"]
        return next((w for w in workers if w.get("batch_id") == batch.execution_id), None)

    victim = wait_for(busy_worker)
    os.kill(victim["pid"], signal.SIGKILL)
    final = batch.wait(timeout=120)
    assert final.state is BatchState.COMPLETED
    frame = final.to_pandas()
    assert list(frame["index"]) == list(range(40))
    assert set(frame["status"]) == {"succeeded"}
    assert frame["attempts"].max() == 2
    workers = httpx.get(server.url + "/v1/workers", headers=headers).json()["workers"]
    assert victim["pid"] not in [w["pid"] for w in workers]
    assert len(workers) == 2


def test_deleting_a_running_batch_stops_it_and_removes_it(client, unique_name):  # type: ignore[no-untyped-def]
    svc = _publish(client, unique_name)
    batch = svc.batch([{"x": float(i)} for i in range(100)], parallel_count=2).start()
    wait_for(lambda: batch.results().completed_item_count >= 2)
    batch.delete()
    assert batch.execution_id not in svc.list_batch_executions()
    with pytest.raises(errors.NotFoundError):
        svc.get_batch(batch.execution_id)
