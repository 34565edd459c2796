"""A batch is a job: disable/enable, dependencies, wall-clock limits, preemption, stuck workers.

Each test that watches the scheduler closely gets its own server (two workers), so batches of
other tests cannot take its workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import ADMIN_PASSWORD

from batchserve import BatchState, Client, errors

pytestmark = pytest.mark.e2e


def nap(x: float) -> float:
    import time

    time.sleep(0.05)
    return x


def stuck_when_negative(x: float) -> float:
    """Hangs past any timeout signal when x < 0, as a record stuck in native code would."""
    import signal
    import time

    if x < 0:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
    return x


def flaky(x: float) -> float:
    """Fails its first two tries of each record (the tries of a record run in one worker)."""
    tries = globals().setdefault("_tries", {})
    tries[x] = tries.get(x, 0) + 1
    if tries[x] <= 2:
        raise RuntimeError(f"try {tries[x]} of {x} failed")
    return x


def slow_when_negative(x: float) -> float:
    import time

    if x < 0:
        time.sleep(30)
    return x


def until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def own(fresh_server):  # type: ignore[no-untyped-def]
    fresh_server.start()
    with Client(fresh_server.url, username="admin", password=ADMIN_PASSWORD) as c:
        yield c


@pytest.fixture
def napper(own, unique_name):  # type: ignore[no-untyped-def]
    return own.publish_service(
        unique_name, code=nap, inputs={"x": float}, outputs={"y": float}, version="v1"
    )


def one_result_each(batch: Any, total: int) -> Any:
    frame = batch.results().to_pandas()
    assert sorted(frame["index"].tolist()) == list(range(total))
    return frame


def running_chunks(client: Client, batch_id: str) -> int:
    workers = client._runner.run(_workers())
    return sum(1 for w in workers if w.get("batch_id") == batch_id)


def _workers():  # type: ignore[no-untyped-def]
    from batchserve.client._wire import Request, call

    resp = yield from call(Request("GET", "/v1/workers"))
    return resp.json()["workers"]


# --- disable / enable ---------------------------------------------------------------------------


def test_disable_requeue_stops_running_chunks_and_enable_finishes_every_record(own, napper):  # type: ignore[no-untyped-def]
    batch = napper.batch({"x": [float(i) for i in range(160)]}, parallel_count=2, chunk_size=5)
    batch.start()
    until("a running chunk", lambda: running_chunks(own, batch.execution_id) >= 1)
    batch.disable("requeue")
    assert batch.state in (BatchState.PAUSING, BatchState.PAUSED)
    until("paused", lambda: batch.refresh().state is BatchState.PAUSED)
    assert running_chunks(own, batch.execution_id) == 0
    info = batch.info()
    assert info.state == "disabled"
    assert info.job_statistics.requeued_records >= 5  # at least one chunk went back
    done = batch.refresh().data["completed_item_count"]
    assert done < 160
    batch.enable()
    result = batch.wait(timeout=120)
    assert result.state is BatchState.COMPLETED
    assert result.info["succeeded_item_count"] == 160
    assert result.info["failed_item_count"] == 0
    one_result_each(batch, 160)


def test_disable_terminate_fails_the_unfinished_records_of_running_chunks(own, napper):  # type: ignore[no-untyped-def]
    batch = napper.batch({"x": [float(i) for i in range(160)]}, parallel_count=2, chunk_size=10)
    batch.start()
    until("a running chunk", lambda: running_chunks(own, batch.execution_id) >= 1)
    batch.disable("terminate")
    until("paused", lambda: batch.refresh().state is BatchState.PAUSED)
    failed_now = batch.data["failed_item_count"]
    assert failed_now > 0
    batch.enable()
    result = batch.wait(timeout=120)
    assert result.state is BatchState.COMPLETED
    frame = one_result_each(batch, 160)
    failed = frame[frame["status"] == "failed"]
    assert len(failed) == failed_now
    assert failed["error"].str.contains("disabled").all()
    assert (frame["status"] == "succeeded").sum() == 160 - failed_now


def test_disable_wait_lets_running_chunks_finish(own, napper):  # type: ignore[no-untyped-def]
    batch = napper.batch({"x": [float(i) for i in range(160)]}, parallel_count=2, chunk_size=10)
    batch.start()
    until("a running chunk", lambda: running_chunks(own, batch.execution_id) >= 1)
    assert batch.disable("wait").state is BatchState.PAUSING
    until("paused", lambda: batch.refresh().state is BatchState.PAUSED)
    paused = batch.data
    assert paused["failed_item_count"] == 0
    assert paused["statistics"]["requeued_records"] == 0
    assert paused["completed_item_count"] % 10 == 0  # only whole chunks ran
    batch.enable()
    result = batch.wait(timeout=120)
    assert result.info["succeeded_item_count"] == 160
    one_result_each(batch, 160)


def test_a_paused_batch_can_be_cancelled(own, napper):  # type: ignore[no-untyped-def]
    batch = napper.batch({"x": [1.0] * 40}, parallel_count=1, chunk_size=5).start()
    batch.disable("requeue")
    until("paused", lambda: batch.refresh().state is BatchState.PAUSED)
    batch.cancel()
    assert batch.wait(timeout=30).state is BatchState.CANCELLED
    frame = one_result_each(batch, 40)
    assert set(frame["status"]) <= {"succeeded", "cancelled"}


def test_actions_in_the_wrong_state_are_409s_naming_the_states_that_allow_them(  # type: ignore[no-untyped-def]
    own, napper, fresh_server
):
    headers = {"Authorization": f"Bearer {own.token}"}
    created = httpx.post(
        f"{fresh_server.url}/v1/services/{napper.name}/v1/batches",
        params={"start": "false"},
        content=b"x\n1\n2\n",
        headers={**headers, "Content-Type": "text/csv"},
    ).json()
    r = httpx.post(f"{fresh_server.url}/v1/batches/{created['id']}/disable", headers=headers)
    assert r.status_code == 409
    assert "pending, running" in r.json()["error"]["message"]
    r = httpx.post(f"{fresh_server.url}/v1/batches/{created['id']}/enable", headers=headers)
    assert r.status_code == 409
    assert "paused" in r.json()["error"]["message"]

    batch = napper.batch({"x": [1.0, 2.0]}).start()
    batch.wait(timeout=60)
    with pytest.raises(errors.ConflictError, match="created"):
        batch._runner.run(batch._set(lambda i: _post(f"/v1/batches/{i}/start")))
    with pytest.raises(errors.ConflictError, match="paused"):
        batch.enable()
    with pytest.raises(errors.ConflictError, match="pending, running"):
        batch.disable()
    r = httpx.post(
        f"{fresh_server.url}/v1/batches/{batch.execution_id}/disable",
        json={"disable_tasks": "later"},
        headers=headers,
    )
    assert r.status_code == 422  # validated before the state is looked at
    assert "disable_tasks" in r.text
    with pytest.raises(errors.UsageError, match="disable_tasks"):
        batch.disable("later")


def _post(path: str):  # type: ignore[no-untyped-def]
    from batchserve.client._wire import Request, call

    resp = yield from call(Request("POST", path))
    return resp.json()


# --- dependencies -------------------------------------------------------------------------------


def test_a_batch_waits_for_the_batches_it_depends_on(own, napper):  # type: ignore[no-untyped-def]
    first = napper.batch({"x": [1.0] * 20}, parallel_count=1, chunk_size=5).start()
    second = napper.batch({"x": [2.0] * 4}, depends_on=[first]).start()
    assert second.info().depends_on == (first.execution_id,)
    until("the first batch to run", lambda: first.refresh().data["completed_item_count"] > 0)
    assert second.refresh().state is BatchState.PENDING
    assert second.data["completed_item_count"] == 0
    assert first.wait(timeout=60).state is BatchState.COMPLETED
    assert second.wait(timeout=60).state is BatchState.COMPLETED
    assert second.results().to_pandas()["y"].tolist() == [2.0] * 4


def test_a_batch_whose_dependency_is_cancelled_fails(own, napper):  # type: ignore[no-untyped-def]
    first = napper.batch({"x": [1.0] * 40}, parallel_count=1, chunk_size=5).start()
    second = napper.batch({"x": [2.0] * 3}, depends_on=[first.execution_id]).start()
    first.cancel()
    result = second.wait(timeout=60)
    assert result.state is BatchState.FAILED
    assert second.data["termination_reason"] == "DependencyFailed"
    assert "cancelled" in second.data["error"]
    assert set(result.to_pandas()["status"]) == {"cancelled"}


def test_depending_on_an_unknown_or_unstarted_batch_is_refused(own, napper):  # type: ignore[no-untyped-def]
    with pytest.raises(errors.BadRequestError, match="depends_on"):
        napper.batch({"x": [1.0]}, depends_on=["0" * 32]).start()
    with pytest.raises(errors.UsageError, match="not started"):
        napper.batch({"x": [1.0]}, depends_on=[napper.batch({"x": [1.0]})])


# --- limits -------------------------------------------------------------------------------------


def test_a_batch_past_its_max_wall_clock_time_fails_and_keeps_what_finished(own, napper):  # type: ignore[no-untyped-def]
    batch = napper.batch(
        {"x": [1.0] * 200}, parallel_count=1, chunk_size=10, max_wall_clock_time=1.0
    ).start()
    result = batch.wait(timeout=60)
    assert result.state is BatchState.FAILED
    info = batch.info()
    assert info.execution_info.termination_reason == "MaxWallClockTimeExpiry"
    assert info.constraints.max_wall_clock_time.total_seconds() == 1.0
    frame = one_result_each(batch, 200)
    statuses = set(frame["status"])
    assert "cancelled" in statuses and "succeeded" in statuses
    assert "max_wall_clock_time" in batch.data["error"]


def test_limits_can_be_changed_while_a_batch_runs(own, napper):  # type: ignore[no-untyped-def]
    batch = napper.batch({"x": [1.0] * 40}, parallel_count=1, chunk_size=5).start()
    batch.update(max_wall_clock_time=600, max_task_retry_count=2)
    constraints = batch.info().constraints
    assert constraints.max_wall_clock_time.total_seconds() == 600
    assert constraints.max_task_retry_count == 2
    with pytest.raises(errors.UsageError, match="max_task_retry_count"):
        batch.update(max_task_retry_count=-2)
    batch.cancel()


def test_a_worker_stuck_past_the_task_timeout_is_killed_and_the_record_fails(own, unique_name):  # type: ignore[no-untyped-def]
    svc = own.publish_service(
        unique_name,
        code=stuck_when_negative,
        inputs={"x": float},
        outputs={"y": float},
        version="v1",
    )
    batch = svc.batch(
        {"x": [1.0, -1.0, 2.0]}, parallel_count=2, chunk_size=1, task_timeout=0.5
    ).start()
    result = batch.wait(timeout=90)
    assert result.state is BatchState.COMPLETED
    frame = result.to_pandas().set_index("index")
    assert frame.loc[0, "status"] == "succeeded" and frame.loc[2, "status"] == "succeeded"
    assert frame.loc[1, "status"] == "failed"
    assert "task_timeout" in frame.loc[1, "error"]
    assert batch.info().job_statistics.timed_out_tries == 1


# --- priority and preemption --------------------------------------------------------------------


def test_a_higher_priority_batch_preempts_a_preemptible_running_one(own, napper):  # type: ignore[no-untyped-def]
    low = napper.batch(
        {"x": [float(i) for i in range(160)]},
        parallel_count=2,
        chunk_size=10,
        allow_preemption=True,
    ).start()
    until("two running chunks", lambda: running_chunks(own, low.execution_id) == 2)
    high = napper.batch({"x": [5.0] * 4}, parallel_count=2, chunk_size=2, priority=100).start()
    assert high.wait(timeout=60).state is BatchState.COMPLETED
    assert low.refresh().state is BatchState.RUNNING  # it was overtaken, not finished first
    result = low.wait(timeout=120)
    assert result.info["succeeded_item_count"] == 160
    assert result.info["failed_item_count"] == 0
    assert low.info().job_statistics.requeued_records >= 10
    one_result_each(low, 160)


def test_a_batch_that_does_not_allow_preemption_keeps_its_workers(own, napper):  # type: ignore[no-untyped-def]
    low = napper.batch({"x": [float(i) for i in range(80)]}, parallel_count=2, chunk_size=10)
    low.start()
    until("two running chunks", lambda: running_chunks(own, low.execution_id) == 2)
    high = napper.batch({"x": [5.0] * 2}, parallel_count=2, chunk_size=1, priority=100).start()
    assert high.wait(timeout=60).state is BatchState.COMPLETED
    assert low.wait(timeout=60).info["statistics"]["requeued_records"] == 0
    assert low.info().job_statistics.requeued_records == 0


def test_preemption_allowed_by_an_update_lets_a_higher_priority_batch_take_the_workers(  # type: ignore[no-untyped-def]
    own, napper
):
    # Chunks of 2 s: none of them ends of itself, freeing a worker, before the update is seen.
    low = napper.batch({"x": [float(i) for i in range(160)]}, parallel_count=2, chunk_size=40)
    low.start()
    until("two running chunks", lambda: running_chunks(own, low.execution_id) == 2)
    assert low.update(allow_preemption=True).data["allow_preemption"] is True
    high = napper.batch({"x": [5.0] * 4}, parallel_count=2, chunk_size=2, priority=100).start()
    assert high.wait(timeout=60).state is BatchState.COMPLETED
    result = low.wait(timeout=120)
    assert result.info["succeeded_item_count"] == 160
    assert low.info().job_statistics.requeued_records >= 10
    one_result_each(low, 160)


def test_statistics_are_live_figures_of_the_batch(own, napper):  # type: ignore[no-untyped-def]
    batch = napper.batch({"x": [1.0] * 20}, parallel_count=2, chunk_size=5).start()
    batch.wait(timeout=60)
    stats = batch.info().job_statistics
    assert stats.succeeded_records == 20
    assert stats.wall_clock_time is not None and stats.wall_clock_time.total_seconds() > 0
    assert stats.records_per_second and stats.records_per_second > 0
    assert stats.wait_time.total_seconds() >= 0
    assert stats.retried_records == 0 and stats.requeued_records == 0
    assert stats.user_cpu_time.total_seconds() > 0
    assert stats.read_bytes > 0 and stats.write_bytes > 0


@pytest.mark.parametrize(
    ("retries", "status"), [(2, "succeeded"), (1, "failed"), (-1, "succeeded")]
)
def test_failed_records_are_tried_again_up_to_max_task_retry_count(
    own, unique_name, retries, status
):  # type: ignore[no-untyped-def]
    svc = own.publish_service(
        unique_name, code=flaky, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    batch = svc.batch(
        {"x": [1.0, 2.0, 3.0]}, parallel_count=1, max_task_retry_count=retries
    ).start()
    frame = batch.wait(timeout=60).to_pandas()
    assert set(frame["status"]) == {status}
    tries = 3 if status == "succeeded" else 2
    assert frame["attempts"].tolist() == [tries] * 3
    assert batch.info().job_statistics.retried_records == 3 * (tries - 1)
    if status == "failed":
        assert frame["error"].str.contains("try 2 of").all()


def test_a_record_past_the_task_timeout_is_stopped_and_its_neighbours_run(own, unique_name):  # type: ignore[no-untyped-def]
    svc = own.publish_service(
        unique_name, code=slow_when_negative, inputs={"x": float}, outputs={"y": float}
    )
    batch = svc.batch(
        {"x": [1.0, -1.0, 2.0]}, parallel_count=1, task_timeout=0.5, max_task_retry_count=1
    ).start()
    frame = batch.wait(timeout=60).to_pandas().set_index("index")
    assert frame["status"].tolist() == ["succeeded", "failed", "succeeded"]
    assert frame.loc[1, "error_type"] == "TaskTimeout"
    assert frame.loc[1, "attempts"] == 2  # the first try and one retry, each stopped
    stats = batch.info().job_statistics
    assert stats.timed_out_tries == 2 and stats.retried_records == 1


# --- parallel caps ------------------------------------------------------------------------------


def test_each_batch_is_capped_by_its_parallel_count_and_the_machine_by_its_workers(own, napper):  # type: ignore[no-untyped-def]
    one = napper.batch({"x": [1.0] * 30}, parallel_count=1, chunk_size=3).start()
    wide = napper.batch({"x": [2.0] * 30}, parallel_count=10, chunk_size=3).start()
    seen_one, seen_wide, seen_total = set(), set(), set()
    while not (one.refresh().state.is_final and wide.refresh().state.is_final):
        workers = own._runner.run(_workers())
        busy = [w.get("batch_id") for w in workers if w.get("busy")]
        seen_one.add(busy.count(one.execution_id))
        seen_wide.add(busy.count(wide.execution_id))
        seen_total.add(len(busy))
        time.sleep(0.02)
    assert max(seen_one) == 1  # it ran, one chunk at a time
    assert max(seen_total) <= 2  # two workers
    assert 1 in seen_wide  # the wide batch shared the machine with the capped one
    assert one.results().to_pandas()["y"].tolist() == [1.0] * 30
    assert wide.results().to_pandas()["y"].tolist() == [2.0] * 30


def test_a_parallel_count_of_minus_one_lets_a_batch_take_every_worker(own, napper):  # type: ignore[no-untyped-def]
    batch = napper.batch({"x": [1.0] * 160}, parallel_count=1, chunk_size=10).start()
    until("a running chunk", lambda: running_chunks(own, batch.execution_id) == 1)
    assert running_chunks(own, batch.execution_id) <= 1
    batch.update(parallel_count=-1)  # no limit but the workers: both of them
    until("two running chunks", lambda: running_chunks(own, batch.execution_id) == 2)
    assert batch.wait(timeout=120).info["succeeded_item_count"] == 160
    assert batch.info().max_parallel_tasks == -1


# --- a server killed while a batch is paused or pausing -----------------------------------------


def test_a_batch_pausing_or_paused_when_the_server_dies_is_paused_after_restart(  # type: ignore[no-untyped-def]
    fresh_server, unique_name
):
    fresh_server.start()
    with Client(fresh_server.url, username="admin", password=ADMIN_PASSWORD) as c:
        svc = c.publish_service(
            unique_name, code=nap, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        waiting = svc.batch({"x": [float(i) for i in range(120)]}, parallel_count=2, chunk_size=10)
        waiting.start()
        until("a running chunk", lambda: running_chunks(c, waiting.execution_id) >= 1)
        assert waiting.disable("wait").state is BatchState.PAUSING
        paused = svc.batch({"x": [float(i) for i in range(20)]}, parallel_count=1, chunk_size=5)
        paused.start().disable("requeue")
        until("paused", lambda: paused.refresh().state is BatchState.PAUSED)
        ids = waiting.execution_id, paused.execution_id
    fresh_server.kill()
    fresh_server.start()
    with Client(fresh_server.url, username="admin", password=ADMIN_PASSWORD) as c:
        svc = c.get_service(unique_name, version="v1")
        for batch_id, total in zip(ids, (120, 20), strict=True):
            batch = svc.get_batch(batch_id)
            until("paused after restart", lambda b=batch: b.refresh().state is BatchState.PAUSED)
            batch.enable()
            result = batch.wait(timeout=120)
            assert result.state is BatchState.COMPLETED
            assert result.info["succeeded_item_count"] == total
            one_result_each(batch, total)
