"""Batches on both executors: the local pool on a folder, and Ray actors with data in S3.

The tests that take ``backend`` run once on each (``any_server``); the last ones are of the Ray
cluster alone: a node killed in the middle of a batch, a server killed and started again, and a
service asking for more than any node has.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import S3Server

from batchserve import BatchState, Client, errors

from .conftest import ADMIN_PASSWORD, RayCluster, ServerProcess, scaleout_env
from .test_job_control import running_chunks, until

pytestmark = pytest.mark.e2e


def slow_double(x: float) -> float:
    import time

    time.sleep(0.1)
    return 2 * x


def with_artifact(x: float) -> float:
    with open("note.txt", "w") as f:
        f.write(f"record {x}")
    return x + 1


@pytest.fixture
def backend(any_server: ServerProcess) -> Iterator[Client]:
    with Client(any_server.url, username="admin", password=ADMIN_PASSWORD) as c:
        yield c


@pytest.fixture
def doubler(backend: Client, unique_name: str):  # type: ignore[no-untyped-def]
    return backend.publish_service(
        unique_name, code=slow_double, inputs={"x": float}, outputs={"y": float}, version="v1"
    )


def exactly_one_result_each(batch, total: int):  # type: ignore[no-untyped-def]
    frame = batch.results().to_pandas()
    assert sorted(frame["index"].tolist()) == list(range(total))
    return frame


def test_results_and_artifacts_of_every_record(backend, unique_name):  # type: ignore[no-untyped-def]
    svc = backend.publish_service(
        unique_name,
        code=with_artifact,
        inputs={"x": float},
        outputs={"y": float},
        artifacts=["note.txt"],
        version="v1",
    )
    batch = svc.batch([{"x": float(i)} for i in range(40)], parallel_count=2).start()
    result = batch.wait(timeout=180)
    assert result.state is BatchState.COMPLETED
    frame = exactly_one_result_each(batch, 40)
    assert (frame["y"] == frame["index"] + 1).all()
    assert batch.list_artifacts(7) == ["note.txt"]
    assert batch.artifact(7, "note.txt") == b"record 7.0"


def test_partial_results_are_visible_while_a_chunk_runs(backend, doubler):  # type: ignore[no-untyped-def]
    # One chunk of 60 records, 6 s of work: its first results show long before it ends.
    batch = doubler.batch(
        [{"x": float(i)} for i in range(60)], parallel_count=1, chunk_size=60
    ).start()
    partial = until(
        "partial results",
        lambda: (r := batch.results(show_partial_results=True)).completed_item_count > 0 and r,
        timeout=120,
    )
    assert partial.state is BatchState.RUNNING
    frame = partial.to_pandas()
    done = frame[frame["status"] == "succeeded"]
    assert 0 < len(done) < 60
    assert (done["y"] == 2 * done["index"]).all()
    assert batch.wait(timeout=180).state is BatchState.COMPLETED
    exactly_one_result_each(batch, 60)


def test_cancel_stops_running_chunks_and_keeps_finished_results(backend, doubler):  # type: ignore[no-untyped-def]
    batch = doubler.batch([{"x": float(i)} for i in range(400)], parallel_count=2).start()
    until("some results", lambda: batch.results().completed_item_count >= 6, timeout=120)
    batch.cancel()
    final = until(
        "cancelled",
        lambda: (r := batch.results()).state is BatchState.CANCELLED and r,
        timeout=30,
    )
    finished = final.completed_item_count
    assert 6 <= finished < 400
    frame = final.to_pandas()
    assert len(frame) == 400
    done = frame[frame["status"] == "succeeded"]
    assert len(done) == finished
    assert (done["y"] == 2 * done["index"]).all()
    assert running_chunks(backend, batch.execution_id) == 0
    time.sleep(1.0)  # stopped means stopped: nothing more finishes
    assert batch.results().completed_item_count == finished


def test_disable_requeues_running_chunks_and_enable_finishes_every_record(backend, doubler):  # type: ignore[no-untyped-def]
    batch = doubler.batch(
        [{"x": float(i)} for i in range(80)], parallel_count=2, chunk_size=10
    ).start()
    until("a running chunk", lambda: running_chunks(backend, batch.execution_id) >= 1)
    batch.disable("requeue")
    until("paused", lambda: batch.refresh().state is BatchState.PAUSED, timeout=30)
    assert running_chunks(backend, batch.execution_id) == 0
    assert batch.refresh().data["completed_item_count"] < 80
    batch.enable()
    result = batch.wait(timeout=180)
    assert result.state is BatchState.COMPLETED
    assert result.info["succeeded_item_count"] == 80
    frame = exactly_one_result_each(batch, 80)
    assert (frame["y"] == 2 * frame["index"]).all()


# --- the Ray cluster alone ----------------------------------------------------------------------


@pytest.fixture
def ray_client(scaleout_server: ServerProcess) -> Iterator[Client]:
    with Client(scaleout_server.url, username="admin", password=ADMIN_PASSWORD) as c:
        yield c


def test_a_killed_node_loses_no_record_and_repeats_none(ray_client, ray_cluster, unique_name):  # type: ignore[no-untyped-def]
    svc = ray_client.publish_service(
        unique_name, code=slow_double, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    batch = svc.batch(
        [{"x": float(i)} for i in range(100)], parallel_count=2, chunk_size=10
    ).start()
    # One actor on each node (a CPU each): two chunks running means one runs on the second.
    until("two running chunks", lambda: running_chunks(ray_client, batch.execution_id) == 2)
    ray_cluster.kill_second_node()
    try:
        result = batch.wait(timeout=240)
    finally:
        ray_cluster.start_second_node()
    assert result.state is BatchState.COMPLETED
    frame = exactly_one_result_each(batch, 100)
    assert set(frame["status"]) == {"succeeded"}
    assert (frame["y"] == 2 * frame["index"]).all()
    # The chunk on the dead node ran again from its start, under a new attempt.
    assert frame["attempts"].max() >= 2


def test_a_killed_server_resumes_its_batch_on_the_cluster(  # type: ignore[no-untyped-def]
    ray_cluster: RayCluster, s3_server: S3Server, s3_bucket_url: str, tmp_path: Path
):
    proc = ServerProcess(
        tmp_path / "home",
        workers=None,
        env=scaleout_env(ray_cluster, s3_server, s3_bucket_url.rstrip("/") + "-restart"),
    ).start(timeout=120)
    try:
        with Client(proc.url, username="admin", password=ADMIN_PASSWORD) as c:
            svc = c.publish_service(
                "restarted", code=slow_double, inputs={"x": float}, outputs={"y": float}
            )
            batch = svc.batch(
                [{"x": float(i)} for i in range(40)], parallel_count=2, chunk_size=5
            ).start()
            until("some results", lambda: batch.results().completed_item_count >= 5)
            batch_id = batch.execution_id
        proc.kill()
        proc.start(timeout=120)
        with Client(proc.url, username="admin", password=ADMIN_PASSWORD) as c:
            again = c.get_service("restarted").get_batch(batch_id)
            result = again.wait(timeout=240)
            assert result.state is BatchState.COMPLETED
            frame = exactly_one_result_each(again, 40)
            assert (frame["y"] == 2 * frame["index"]).all()
    finally:
        proc.stop()


def test_a_batch_whose_resources_left_the_cluster_waits_and_says_why(  # type: ignore[no-untyped-def]
    ray_client, ray_cluster, unique_name
):
    # The second node offers a GPU (a logical one: Ray takes the count as given) while the
    # service is published; then it leaves, and the batch's workers fit on no node.
    ray_cluster.kill_second_node()
    ray_cluster.wait_for_nodes(1)
    ray_cluster.start_second_node("--num-gpus", "1")
    try:
        svc = ray_client.publish_service(
            unique_name,
            code=slow_double,
            inputs={"x": float},
            outputs={"y": float},
            resources={"num_gpus": 1},
        )
        ray_cluster.kill_second_node()
        ray_cluster.wait_for_nodes(1)
        batch = svc.batch([{"x": float(i)} for i in range(6)], chunk_size=2).start()
        error = until(
            "the batch's scheduling error",
            lambda: batch.info().execution_info.scheduling_error,
            timeout=60,
        )
        assert (error.category, error.code) == ("servererror", "ResourcesUnavailable")
        assert "GPU 1" in error.message and "no node of the Ray cluster" in error.message
        assert batch.refresh().data["completed_item_count"] == 0
        assert running_chunks(ray_client, batch.execution_id) == 0  # nothing claimed

        # The GPU node is back: the batch runs, and the error is gone.
        ray_cluster.start_second_node("--num-gpus", "1")
        done = batch.wait(timeout=180)
        assert done.state is BatchState.COMPLETED
        frame = exactly_one_result_each(batch, 6)
        assert (frame["y"] == 2 * frame["index"]).all()
        assert batch.info().execution_info.scheduling_error is None
    finally:
        ray_cluster.kill_second_node()
        ray_cluster.wait_for_nodes(1)
        ray_cluster.start_second_node()


def test_a_service_asking_for_more_than_any_node_has_is_refused(ray_client, unique_name):  # type: ignore[no-untyped-def]
    with pytest.raises(errors.BatchserveError, match="no node"):
        ray_client.publish_service(
            unique_name,
            code=slow_double,
            inputs={"x": float},
            outputs={"y": float},
            resources={"num_cpus": 64},
        )
