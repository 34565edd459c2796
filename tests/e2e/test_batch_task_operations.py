"""Batch-task operations with the blocking client against a real server: ``client.batch`` and
``Service.run_deferred``, the twins of the asyncio client's, doing what those do: status, task
info, wait (and its poll timeout), result, cancel, delete, listings filtered by status."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from batchserve import (
    BatchTaskInfo,
    BatchTaskOperation,
    BatchTaskResult,
    BatchTaskStatus,
    Client,
    errors,
)

pytestmark = pytest.mark.e2e


def double(x: float) -> float:
    return 2 * x


def nap(x: float) -> float:
    import time

    time.sleep(0.2)
    return x


def picky(x: float) -> float:
    if x < 0:
        raise ValueError(f"x must not be negative, got {x}")
    return x


def until_status(op: BatchTaskOperation, wanted: BatchTaskStatus, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (status := op.get_status()) is not wanted:
        if time.monotonic() > deadline:
            pytest.fail(f"batch {op.id} is still {status.name}, not {wanted.name}")
        time.sleep(0.05)


def test_run_deferred_waits_and_reads_the_result_and_the_task_info(client: Client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, double, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    op = svc.run_deferred(
        [{"x": float(i)} for i in range(25)], parallel_count=2, metadata={"team": "risk"}
    )
    assert isinstance(op, BatchTaskOperation)
    assert op.id == op.task_id

    result = op.wait(poll_interval=0.1)
    assert isinstance(result, BatchTaskResult)
    assert [(r.index, r.output("y")) for r in result] == [(i, 2.0 * i) for i in range(25)]
    assert list(result.to_pandas()["y"]) == [2.0 * i for i in range(25)]
    assert op.get_result().completed_item_count == 25
    assert op.get_status() is BatchTaskStatus.COMPLETED

    info = op.get_task_info()
    assert info.task_id == info.operation_id == op.id
    assert info.model_uri == f"{unique_name}:v1"
    assert info.source_dataset_id == f"{client.url}/v1/batches/{op.id}/records"
    assert info.result_dataset_id == f"{client.url}/v1/batches/{op.id}/results"
    assert info.status is BatchTaskStatus.COMPLETED
    assert info.status.status_name == "success"
    assert dict(info.labels) == {"team": "risk"}
    assert info.created_by == "admin"
    assert not info.errors
    # The locations are the addresses of the batch's records and results on the server.
    auth = {"Authorization": f"Bearer {client.token}"}
    inputs = httpx.get(info.source_dataset_id, headers=auth).json()["records"]
    assert [r["inputs"]["x"] for r in inputs] == [float(i) for i in range(25)]
    results = httpx.get(info.result_dataset_id, headers=auth).json()["results"]
    assert [r["outputs"]["y"] for r in results] == [2.0 * i for i in range(25)]

    same = client.batch.get(op.id)
    assert same.get_status() is BatchTaskStatus.COMPLETED
    assert client.batch.get(info).id == op.id
    with pytest.raises(errors.NotFoundError):
        client.batch.get("no-such-batch")


def test_wait_past_poll_timeout_names_the_batch_then_cancel_and_delete(client: Client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, nap, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    op = svc.run_deferred([{"x": float(i)} for i in range(200)], parallel_count=1)
    with pytest.raises(TimeoutError) as raised:
        op.wait(poll_timeout=0.5, poll_interval=0.1)
    message = str(raised.value)
    assert f"Batch {op.id} did not finish within poll_timeout=0.5 s" in message
    assert re.search(r"\(waited \d+\.\d s\)", message)
    assert isinstance(raised.value, errors.WaitTimeout)
    # The wait gave up; the batch goes on.
    assert op.get_status().is_running
    info = op.get_task_info()
    assert info.result_dataset_id is None
    assert info.status.status_name == "running"

    op.cancel()
    with pytest.raises(RuntimeError, match="was cancelled"):
        op.wait(poll_interval=0.1, poll_timeout=60)
    with pytest.raises(RuntimeError, match="no result"):
        op.get_result()
    info = op.get_task_info()
    assert info.status is BatchTaskStatus.CANCELLED is BatchTaskStatus.CANCELED
    assert info.status.status_name == "failed"
    assert info.result_dataset_id is None

    for spelling in ("cancelled", "canceled", "CANCELLED", BatchTaskStatus.CANCELLED, 6):
        listed = [o.id for o in client.batch.list_operations(status=spelling, page_size=1000)]
        assert op.id in listed, spelling

    op.delete()
    with pytest.raises(errors.NotFoundError):
        client.batch.get(op.id)
    assert op.id not in [o.id for o in client.batch.list_operations(page_size=1000)]


def test_listings_page_and_filter_by_status(client: Client, unique_name):  # type: ignore[no-untyped-def]
    good = client.publish_service(
        f"{unique_name}g", double, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    bad = client.publish_service(
        f"{unique_name}b", picky, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    completed = good.run_deferred([{"x": 1.0}])
    completed.wait(poll_interval=0.1)
    failed = bad.run_deferred([{"x": -1.0}], task_failure_mode="terminatejob")
    with pytest.raises(RuntimeError, match="failed"):
        failed.wait(poll_interval=0.1)
    try:
        paged = [info.task_id for info in client.batch.list_info(page_size=2)]
        whole = [op.id for op in client.batch.list_operations(page_size=1000)]
        assert paged == whole
        assert {completed.id, failed.id} <= set(paged)

        infos: list[BatchTaskInfo] = list(client.batch.list_info(status="failed"))
        assert {i.status for i in infos} == {BatchTaskStatus.FAILED}
        [mine] = [i for i in infos if i.task_id == failed.id]
        assert [e.index for e in mine.errors.line_errors] == [0]
        assert mine.model_uri == f"{unique_name}b:v1"
        done = [o.id for o in client.batch.list_operations(status=BatchTaskStatus.COMPLETED)]
        assert completed.id in done and failed.id not in done

        with pytest.raises(ValueError, match="not a batch task status"):
            client.batch.list_info(status="sleeping")
        with pytest.raises(ValueError, match="page_size"):
            client.batch.list_operations(page_size=5000)
    finally:
        completed.delete()
        failed.delete()


def test_bad_options_and_records_create_no_batch(client: Client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, double, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    with pytest.raises(errors.UsageError, match="priority"):
        svc.run_deferred([{"x": 1.0}], priority=5000)
    with pytest.raises(errors.BadRequestError, match="no column 'x'"):
        svc.run_deferred([{"z": 1.0}])
    with pytest.raises(errors.UsageError, match="poll_timeout"):
        svc.run_deferred([{"x": 1.0}]).wait(poll_timeout=-1)
    assert len(svc.list_batch_executions()) == 1
