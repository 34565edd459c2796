"""Batch options: priority orders waiting work; names, metadata and environment travel along."""

from __future__ import annotations

import pytest

from batchserve import BatchState, errors

pytestmark = pytest.mark.e2e


def nap(x: float) -> float:
    import time

    time.sleep(0.1)
    return x


def read_env(name: str) -> str:
    import os

    return os.environ.get(name, "<unset>")


def test_a_higher_priority_batch_overtakes_a_waiting_lower_one(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=nap, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    low = svc.batch({"x": [1.0] * 40}, parallel_count=2, chunk_size=1, priority=-5).start()
    high = svc.batch({"x": [2.0] * 4}, parallel_count=2, chunk_size=1, priority=500).start()
    assert high.wait(timeout=120).state is BatchState.COMPLETED
    # Had the batches been served first-come, the 40 earlier records would all be done by now.
    assert low.refresh().state is BatchState.RUNNING
    assert low.wait(timeout=120).completed_item_count == 40


def test_display_name_metadata_and_environment_are_kept_and_applied(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=read_env, inputs={"name": str}, outputs={"value": str}, version="v1"
    )
    batch = svc.batch(
        {"name": ["SCORING_MODE", "HOME_REGION"]},
        display_name="nightly",
        metadata={"team": "risk"},
        environment={"SCORING_MODE": "strict"},
    ).start()
    frame = batch.wait(timeout=60).to_pandas()
    assert frame["value"].tolist() == ["strict", "<unset>"]
    info = batch.refresh().data
    assert info["display_name"] == "nightly"
    assert info["metadata"] == {"team": "risk"}
    assert info["priority"] == 0


def test_bad_options_are_refused_before_anything_is_sent(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=nap, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    with pytest.raises(errors.UsageError, match="priority"):
        svc.batch({"x": [1.0]}, priority=5000)
    with pytest.raises(errors.UsageError, match="metadata"):
        svc.batch({"x": [1.0]}, metadata={"n": 1})


def test_metadata_that_is_not_a_json_object_of_text_is_a_400(client, server, unique_name):  # type: ignore[no-untyped-def]
    import httpx

    client.publish_service(
        unique_name, code=nap, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    r = httpx.post(
        f"{server.url}/v1/services/{unique_name}/v1/batches",
        params={"metadata": "[1, 2]"},
        content=b"x\n1\n",
        headers={"Authorization": f"Bearer {client.token}", "Content-Type": "text/csv"},
    )
    assert r.status_code == 400
    assert "metadata" in r.json()["error"]["message"]


def fail_on_negative(x: float) -> float:
    import time

    time.sleep(0.02)
    if x < 0:
        raise ValueError("negative input")
    return x


def test_terminatejob_fails_the_batch_at_its_first_failed_record(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=fail_on_negative, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    xs = [1.0] * 5 + [-1.0] + [1.0] * 100
    final = (
        svc.batch({"x": xs}, parallel_count=1, chunk_size=2, task_failure_mode="terminatejob")
        .start()
        .wait(timeout=120)
    )
    assert final.state is BatchState.FAILED
    info = svc.get_batch(final.execution_id).data
    assert info["termination_reason"] == "TaskFailed"
    assert "1 record(s) failed" in info["error"]
    frame = final.to_pandas()
    assert frame.loc[5, "status"] == "failed"
    assert (frame["status"] == "cancelled").sum() > 50  # the rest never ran
    assert frame.loc[:4, "status"].tolist() == ["succeeded"] * 5


def test_max_failed_records_tolerates_that_many_failures(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=fail_on_negative, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    xs = [-1.0, 1.0, -1.0, 1.0]
    ok = svc.batch({"x": xs}, max_failed_records=2).start().wait(timeout=60)
    assert ok.state is BatchState.COMPLETED
    assert ok.failed_item_count == 2
    too_many = svc.batch({"x": xs}, max_failed_records=1).start().wait(timeout=60)
    assert too_many.state is BatchState.FAILED


def test_update_with_a_stale_etag_is_refused_and_a_fresh_one_applies(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=nap, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    batch = svc.batch({"x": [1.0] * 60}, parallel_count=1, chunk_size=1).start()
    stale = batch.refresh().etag
    batch.update(metadata={"owner": "ana"})  # someone else changes it first
    with pytest.raises(errors.PreconditionFailedError) as info:
        batch.update(priority=10, if_match=stale)
    assert "etag" in str(info.value)
    fresh = batch.refresh().etag
    assert fresh != stale
    batch.update(priority=10, parallel_count=2, if_match=fresh)
    info_now = batch.refresh().data
    assert (info_now["priority"], info_now["parallel_count"]) == (10, 2)
    assert info_now["metadata"] == {"owner": "ana"}
    stopped = batch.terminate(reason="no longer needed")
    final = batch.wait(timeout=60)
    assert final.state is BatchState.CANCELLED
    assert batch.refresh().data["termination_reason"] == "no longer needed"
    assert stopped.execution_id == batch.execution_id
    with pytest.raises(errors.ConflictError) as conflict:
        batch.update(priority=1)
    assert "cancelled" in str(conflict.value) and "running" in str(conflict.value)


def test_info_describes_the_batch_as_an_azure_batch_job(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=fail_on_negative, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    batch = svc.batch(
        {"x": [1.0, -1.0, 2.0]},
        parallel_count=3,
        priority=7,
        display_name="scoring",
        metadata={"team": "risk"},
        environment={"MODE": "fast"},
        max_failed_records=5,
    ).start()
    batch.wait(timeout=60)
    job = batch.info()
    assert (job.id, job.display_name, job.state, job.batch_state) == (
        batch.execution_id,
        "scoring",
        "completed",
        "completed",
    )
    assert job.previous_state == "active"
    assert (job.priority, job.max_parallel_tasks) == (7, 3)
    assert job.constraints.max_failed_records == 5
    assert [(m.name, m.value) for m in job.metadata] == [("team", "risk")]
    assert [(e.name, e.value) for e in job.common_environment_settings] == [("MODE", "fast")]
    assert job.execution_info.termination_reason == "AllTasksComplete"
    assert job.execution_info.end_time >= job.execution_info.start_time
    stats = job.job_statistics
    assert (stats.succeeded_records, stats.failed_records, stats.total_records) == (2, 1, 3)
    assert job.url.endswith(f"/v1/batches/{batch.execution_id}")
    writable = job.as_dict(exclude_readonly=True)
    assert "etag" not in writable and "job_statistics" not in writable
    assert writable["metadata"] == [{"name": "team", "value": "risk"}]
    assert job.as_dict()["etag"] == batch.etag


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_results_export_to_the_format_of_the_file_extension(client, unique_name, tmp_path, suffix):  # type: ignore[no-untyped-def]
    import pandas as pd

    svc = client.publish_service(
        unique_name, code=fail_on_negative, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    batch = svc.batch({"x": [1.0, -1.0, 3.0]}).start()
    batch.wait(timeout=60)
    path = tmp_path / f"results{suffix}"
    assert batch.export_results(path) == str(path)
    read = {
        ".csv": pd.read_csv,
        ".parquet": pd.read_parquet,
        ".jsonl": lambda p: pd.read_json(p, lines=True),
    }[suffix]
    frame = read(path)
    assert frame["index"].tolist() == [0, 1, 2]
    assert frame["status"].tolist() == ["succeeded", "failed", "succeeded"]
    assert frame.loc[2, "y"] == 3.0
    assert frame.loc[1, "error"] == "negative input"


def test_exporting_to_an_unknown_format_names_the_formats(client, unique_name, tmp_path):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=fail_on_negative, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    batch = svc.batch({"x": [1.0]}).start()
    batch.wait(timeout=60)
    with pytest.raises(errors.UsageError, match=r"\.csv, \.jsonl or \.parquet"):
        batch.export_results(tmp_path / "results.xlsx")
