"""A batch's job preparation and release on a real server: the preparation runs once in each
worker before its first chunk of the batch, the release once in each worker that ran it after
the batch ends, a failed preparation fails the records it held up, and only the service's
publisher may attach either."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from batchserve import BatchState, Client
from batchserve.errors import PermissionDeniedError, UsageError

from .conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.e2e


def prepare() -> None:
    import os

    # The job folder is the worker's own: one line per preparation this worker ran.
    with open(os.path.join(os.environ["BATCHSERVE_JOB_DIR"], "prepared"), "a") as f:
        f.write(f"{os.getpid()} {os.environ.get('STAGE', '')}\n")


def release() -> None:
    import os

    with open(os.path.join(os.environ["BATCHSERVE_JOB_DIR"], "prepared")) as f:
        lines = f.read().split("\n")
    if [line for line in lines if line] != [f"{os.getpid()} {os.environ.get('STAGE', '')}"]:
        raise RuntimeError(f"the release found another preparation: {lines}")


def slow_look(x: float) -> dict[str, Any]:
    """What the record sees of its worker's preparation (a little slowly, so that both workers
    take chunks)."""
    import os
    import time

    time.sleep(0.01)
    path = os.path.join(os.environ["BATCHSERVE_JOB_DIR"], "prepared")
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line]
    jobs = ",".join(sorted(os.listdir(os.path.dirname(os.environ["BATCHSERVE_JOB_DIR"]))))
    return {"pid": os.getpid(), "runs": len(lines), "seen": lines[0] if lines else "", "jobs": jobs}


def failing_release() -> None:
    raise RuntimeError("could not remove the staged files")


def broken_preparation() -> None:
    print("fetching the reference data")
    raise ConnectionError("the reference data server is down")


def double(x: float) -> float:
    return 2 * x


def releases_in_log(server, batch_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        line
        for line in server.log.read_text(errors="replace").splitlines()
        if "job release of batch" in line and batch_id in line
    ]


def test_preparation_once_per_worker_and_release_after_the_batch(  # type: ignore[no-untyped-def]
    client, server, unique_name
):
    svc = client.publish_service(
        unique_name,
        code=slow_look,
        inputs={"x": float},
        outputs={"pid": int, "runs": int, "seen": str, "jobs": str},
        version="v1",
    )
    records = [{"x": float(i)} for i in range(200)]
    batch = svc.batch(
        records,
        parallel_count=2,
        chunk_size=10,
        environment={"STAGE": "staged"},
        preparation=prepare,
        release=release,
    ).start()
    info = batch.info()
    assert info.job_preparation_task is not None and info.job_preparation_task.id == "prepare"
    assert info.job_release_task is not None and info.job_release_task.id == "release"
    assert info.as_dict()["job_preparation_task"]["wait_for_success"] is True
    done = batch.wait(timeout=120)
    assert done.state is BatchState.COMPLETED, done.data
    frame = done.to_pandas()
    assert len(frame) == 200 and (frame["status"] == "succeeded").all()
    # Every record ran after its worker's one preparation, which had the batch's environment.
    assert (frame["runs"] == 1).all(), frame["runs"].value_counts()
    assert (frame["seen"] == frame["pid"].astype(str) + " staged").all()
    assert len(set(frame["pid"])) == 2  # both workers ran it, each prepared once
    # After the batch, each of those workers ran its release, which removed the batch's job
    # folder: the next batch's records, on the same workers, no longer find it.
    deadline = time.monotonic() + 20
    while True:
        after = (
            svc.batch(
                records, parallel_count=2, chunk_size=10, preparation=prepare, release=release
            )
            .start()
            .wait(timeout=120)
            .to_pandas()
        )
        if len(set(after["pid"])) == 2 and not after["jobs"].str.contains(done.execution_id).any():
            break
        assert time.monotonic() < deadline, after["jobs"].unique()
    # And the release did not fail (a failed one is logged, as the next test shows).
    assert not releases_in_log(server, done.execution_id)


def test_a_failed_release_is_logged_with_its_worker(  # type: ignore[no-untyped-def]
    client, server, unique_name
):
    svc = client.publish_service(
        unique_name, code=double, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    done = svc.batch([{"x": 1.0}], release=failing_release).start().wait(timeout=60)
    assert done.state is BatchState.COMPLETED
    deadline = time.monotonic() + 15
    while not releases_in_log(server, done.execution_id):
        assert time.monotonic() < deadline, "no failed release was logged"
        time.sleep(0.2)
    (line,) = releases_in_log(server, done.execution_id)
    assert "RuntimeError: could not remove the staged files" in line
    assert "failed in worker" in line


def test_a_failed_preparation_fails_the_records_it_held_up(  # type: ignore[no-untyped-def]
    client, unique_name
):
    svc = client.publish_service(
        unique_name, code=double, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    done = (
        svc.batch([{"x": 1.0}, {"x": 2.0}, {"x": 3.0}], preparation=broken_preparation)
        .start()
        .wait(timeout=60)
    )
    assert done.state is BatchState.COMPLETED  # noaction: the records fail, the batch ends
    assert done.failed_item_count == 3
    failed = done.execution(0)
    assert failed.error_type == "PreparationFailed"
    assert "job preparation failed" in failed.error
    assert "ConnectionError: the reference data server is down" in failed.error
    assert "fetching the reference data" in failed.error  # what it printed
    # With terminatejob, the first such record fails the batch.
    stopped = (
        svc.batch(
            [{"x": 1.0}, {"x": 2.0}],
            preparation=broken_preparation,
            task_failure_mode="terminatejob",
        )
        .start()
        .wait(timeout=60)
    )
    assert stopped.state is BatchState.FAILED


def test_only_the_service_publisher_or_an_owner_attaches_job_tasks(  # type: ignore[no-untyped-def]
    client, server, unique_name
):
    client.publish_service(
        unique_name, code=double, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    password = "a-long-enough-password-1"
    user = f"c{unique_name}"[:60]
    token = httpx.post(
        f"{server.url}/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["access_token"]
    httpx.post(
        f"{server.url}/v1/users",
        json={"username": user, "password": password, "role": "contributor"},
        headers={"Authorization": f"Bearer {token}"},
    ).raise_for_status()
    with Client(server.url, username=user, password=password) as other:
        theirs = other.get_service(unique_name, "v1")
        with pytest.raises(PermissionDeniedError, match="only the publisher"):
            theirs.batch([{"x": 1.0}], preparation=prepare).start()
        # Nothing is left of the batch they tried to make.
        assert list(theirs.list_batches()) == []
        # Without job tasks the same user runs batches of the service as before.
        assert theirs.batch([{"x": 1.0}]).start().wait(timeout=60).state is BatchState.COMPLETED


def test_job_tasks_are_attached_before_the_start_and_bad_ones_are_refused(  # type: ignore[no-untyped-def]
    client, server, unique_name
):
    svc = client.publish_service(
        unique_name, code=double, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    with pytest.raises(UsageError, match="must be a function"):
        svc.batch([{"x": 1.0}], preparation=42)
    started = svc.batch([{"x": 1.0}]).start().wait(timeout=60)
    token = httpx.post(
        f"{server.url}/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    late = httpx.put(
        f"{server.url}/v1/batches/{started.execution_id}/preparation",
        content=b"code",
        headers=headers,
    )
    assert late.status_code == 409
    assert "before the batch starts" in late.json()["error"]["message"]
    unknown = httpx.put(
        f"{server.url}/v1/batches/no-such-batch/release", content=b"code", headers=headers
    )
    assert unknown.status_code == 404


def test_preparation_runs_on_ray_actors_too(scaleout_server, unique_name):  # type: ignore[no-untyped-def]
    with Client(scaleout_server.url, username="admin", password=ADMIN_PASSWORD) as client:
        svc = client.publish_service(
            unique_name,
            code=slow_look,
            inputs={"x": float},
            outputs={"pid": int, "runs": int, "seen": str, "jobs": str},
            version="v1",
        )
        done = (
            svc.batch(
                [{"x": float(i)} for i in range(40)],
                chunk_size=10,
                environment={"STAGE": "staged"},
                preparation=prepare,
                release=release,
            )
            .start()
            .wait(timeout=120)
        )
        frame = done.to_pandas()
        assert (frame["status"] == "succeeded").all(), frame["error"].unique()
        assert (frame["runs"] == 1).all()
        assert (frame["seen"] == frame["pid"].astype(str) + " staged").all()
