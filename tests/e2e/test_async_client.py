"""The asyncio client against a real server: services as coroutines, and batches as batch-task
operations (create, list and filter, wait, result, cancel, delete)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from batchserve import (
    AsyncBatchExecution,
    AsyncBatchResponse,
    AsyncClient,
    AsyncService,
    AsyncServiceResponse,
    BatchTaskInfo,
    BatchTaskStatus,
    errors,
)

from .conftest import ADMIN_PASSWORD, ServerProcess

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


class CountingTransport(httpx.AsyncHTTPTransport):
    """The real transport, counting the requests of each path."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await super().handle_async_request(request)


def run(server: ServerProcess, main: Callable[[AsyncClient], Awaitable[Any]], **kwargs: Any) -> Any:
    async def go() -> Any:
        async with AsyncClient(
            server.url, username="admin", password=ADMIN_PASSWORD, **kwargs
        ) as client:
            return await main(client)

    return asyncio.run(go())


async def until_status(op: Any, wanted: BatchTaskStatus, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (status := await op.get_status()) is not wanted:
        if time.monotonic() > deadline:
            pytest.fail(f"batch {op.id} is still {status.name}, not {wanted.name}")
        await asyncio.sleep(0.05)


def test_the_async_flow_publishes_calls_runs_deferred_and_reads_the_result(server, unique_name):  # type: ignore[no-untyped-def]
    async def main(client: AsyncClient) -> None:
        svc = await client.publish_service(
            unique_name, double, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        assert (await svc.double(4.0)).output("y") == 8.0
        svc = await client.get_service(unique_name, version="v1")
        assert (await svc.consume(x=1.5)).output("y") == 3.0
        assert [s.version for s in await client.list_services(unique_name)] == ["v1"]

        records = [{"x": float(i)} for i in range(25)]
        op = await svc.run_deferred(
            records, parallel_count=2, chunk_size=10, metadata={"team": "risk"}
        )
        assert op.id == op.task_id
        assert await svc.list_batch_executions() == [op.id]
        result = await op  # await op is await op.wait()
        assert result.execution_id == op.id

        streamed = [(r.index, r.output("y")) async for r in result]
        assert streamed == [(i, 2.0 * i) for i in range(25)]
        frame = await result.to_pandas()
        assert list(frame["y"]) == [2.0 * i for i in range(25)]
        assert (await op.get_result()).completed_item_count == 25

        assert await op.get_status() is BatchTaskStatus.COMPLETED
        info = await op.get_task_info()
        assert info.task_id == op.id
        assert (info.service.name, info.service.version) == (unique_name, "v1")
        assert info.status is BatchTaskStatus.COMPLETED
        assert dict(info.labels) == {"team": "risk"}
        assert info.created_by == "admin"
        assert info.created_at is not None and info.finished_at is not None
        assert info.started_at is not None and info.started_at <= info.finished_at
        assert not info.errors

        same = await client.batch.get(op.id)
        assert await same.get_status() is BatchTaskStatus.COMPLETED
        assert (await client.batch.get(info)).id == op.id

    run(server, main)


def test_bad_batch_options_and_records_create_no_batch(server, unique_name):  # type: ignore[no-untyped-def]
    async def main(client: AsyncClient) -> None:
        svc = await client.publish_service(
            unique_name, double, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        with pytest.raises(errors.UsageError, match="priority"):
            await svc.run_deferred([{"x": 1.0}], priority=5000)
        with pytest.raises(errors.BadRequestError, match="no column 'x'"):
            await svc.run_deferred([{"z": 1.0}])
        assert await svc.list_batch_executions() == []

    run(server, main)


def test_wait_past_poll_timeout_raises_then_cancel_and_delete(server, unique_name):  # type: ignore[no-untyped-def]
    async def main(client: AsyncClient) -> None:
        svc = await client.publish_service(
            unique_name, nap, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        op = await svc.run_deferred([{"x": float(i)} for i in range(200)], parallel_count=1)
        with pytest.raises(asyncio.TimeoutError):
            await op.wait(poll_timeout=0.5, poll_interval=0.1)
        # The wait gave up; the batch goes on.
        assert (await op.get_status()).is_running

        await op.cancel()
        with pytest.raises(RuntimeError, match="was cancelled"):
            await op.wait(poll_interval=0.1, poll_timeout=60)
        with pytest.raises(RuntimeError, match="no result"):
            await op.get_result()
        info = await op.get_task_info()
        assert info.status is BatchTaskStatus.CANCELED
        assert info.completed_item_count < 200
        # What finished before the cancel is kept, and read as the error message says.
        svc = await client.get_service(info.service.name, version=info.service.version)
        partial = await (await svc.get_batch(op.id)).results()
        frame = await partial.to_pandas()
        assert set(frame["status"]) <= {"succeeded", "cancelled"}
        done = frame[frame["status"] == "succeeded"]
        assert (done["y"] == done["index"]).all()

        await op.delete()
        with pytest.raises(errors.NotFoundError):
            await client.batch.get(op.id)
        listed = [o.id async for o in client.batch.list_operations(page_size=1000)]
        assert op.id not in listed

    run(server, main)


def test_a_failed_batch_reports_its_errors_and_has_no_result(server, unique_name):  # type: ignore[no-untyped-def]
    async def main(client: AsyncClient) -> None:
        svc = await client.publish_service(
            unique_name, picky, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        records = [{"x": 1.0}, {"x": -2.0}, {"x": 3.0}]

        # Failed records alone do not fail a batch: it completes and reports them.
        tolerant = await svc.run_deferred(records, parallel_count=1)
        result = await tolerant.wait(poll_interval=0.1)
        assert result.failed_item_count == 1
        info = await tolerant.get_task_info()
        assert info.status is BatchTaskStatus.COMPLETED
        [line] = info.errors.line_errors
        assert line.index == 1 and "must not be negative" in line.message
        assert line.error_type == "ValueError"

        strict = await svc.run_deferred(
            records, parallel_count=1, chunk_size=1, task_failure_mode="terminatejob"
        )
        with pytest.raises(RuntimeError, match="failed"):
            await strict.wait(poll_interval=0.1)
        with pytest.raises(RuntimeError, match="no result"):
            await strict.get_result()
        info = await strict.get_task_info()
        assert info.status is BatchTaskStatus.FAILED
        assert [e.index for e in info.errors.line_errors] == [1]
        assert info.errors.message

    run(server, main)


def test_listing_pages_and_filters_by_each_status(server, unique_name):  # type: ignore[no-untyped-def]
    transport = CountingTransport()

    async def main(client: AsyncClient) -> None:
        fast = await client.publish_service(
            f"{unique_name}f", double, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        slow = await client.publish_service(
            f"{unique_name}s", nap, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        bad = await client.publish_service(
            f"{unique_name}b", picky, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        mine: dict[BatchTaskStatus, str] = {}

        completed = await fast.run_deferred([{"x": 1.0}])
        await completed.wait(poll_interval=0.1)
        mine[BatchTaskStatus.COMPLETED] = completed.id

        failed = await bad.run_deferred([{"x": -1.0}], task_failure_mode="terminatejob")
        with pytest.raises(RuntimeError):
            await failed.wait(poll_interval=0.1)
        mine[BatchTaskStatus.FAILED] = failed.id

        cancelled = await slow.run_deferred([{"x": 1.0}] * 50, parallel_count=1)
        await cancelled.cancel()
        mine[BatchTaskStatus.CANCELED] = cancelled.id

        running = await slow.run_deferred([{"x": 1.0}] * 1000, parallel_count=1)
        await until_status(running, BatchTaskStatus.IN_PROGRESS)
        mine[BatchTaskStatus.IN_PROGRESS] = running.id

        # Waits for the running batch it depends on.
        waiting = await fast.run_deferred([{"x": 1.0}], depends_on=[running.id])
        mine[BatchTaskStatus.PENDING] = waiting.id

        # Created without starting, through the REST API.
        created = httpx.post(
            f"{server.url}/v1/services/{unique_name}f/v1/batches",
            params={"start": "false"},
            content=b"x\n1\n2\n",
            headers={"Content-Type": "text/csv", "Authorization": f"Bearer {client.token}"},
        )
        assert created.status_code == 201, created.text
        mine[BatchTaskStatus.CREATED] = created.json()["id"]

        try:
            # Paging: small pages list the same batches, in the same order, as one big page.
            transport.paths.clear()
            paged = [info.task_id async for info in client.batch.list_info(page_size=2)]
            assert transport.paths.count("/v1/batches") > 1
            whole = [op.id async for op in client.batch.list_operations(page_size=1000)]
            assert paged == whole
            assert len(set(paged)) == len(paged)
            assert set(mine.values()) <= set(paged)

            # Each status filter, given as the enum, its number and its name in any case.
            for status, batch_id in mine.items():
                for given in (status, int(status), status.name.lower()):
                    infos: list[BatchTaskInfo] = [
                        i async for i in client.batch.list_info(status=given, page_size=2)
                    ]
                    assert {i.status for i in infos} == {status}, given
                    assert batch_id in {i.task_id for i in infos}, given
                ops = [o.id async for o in client.batch.list_operations(status=status)]
                assert batch_id in ops
                assert not set(ops) & (set(mine.values()) - {batch_id})

            with pytest.raises(ValueError, match="not a batch task status"):
                client.batch.list_info(status="sleeping")
        finally:
            for batch_id in reversed(list(mine.values())):
                await (await client.batch.get(batch_id)).delete()

    run(server, main, transport=transport)


def test_batches_are_listed_with_filters_as_async_iterators(server, unique_name):  # type: ignore[no-untyped-def]
    async def main(client: AsyncClient) -> None:
        svc = await client.publish_service(
            unique_name, code=double, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        ops = [
            await svc.run_deferred({"x": [float(i)]}, metadata={"tag": unique_name, "n": str(i)})
            for i in range(3)
        ]
        for op in ops:
            await op.wait(timeout=60)
        seen = [
            b.execution_id
            async for b in client.list_batches(metadata={"tag": unique_name}, page_size=1)
        ]
        assert seen == [op.id for op in reversed(ops)]  # newest first, across three pages
        one = [b.execution_id async for b in client.list_batches(metadata={"n": "1"})]
        assert ops[1].id in one and ops[0].id not in one
        done = [b async for b in svc.list_batches(state="completed", page_size=2)]
        assert {b.execution_id for b in done} == {op.id for op in ops}
        assert all(b.service.name == unique_name for b in done)
        with pytest.raises(errors.UsageError, match="version"):
            [b async for b in client.list_batches(version="v1")]

    run(server, main)


def test_services_batches_and_results_are_coroutines_and_async_iterators(server, unique_name):  # type: ignore[no-untyped-def]
    async def main(client: AsyncClient) -> None:
        svc = await client.publish_service(
            unique_name, double, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        assert isinstance(svc, AsyncService)
        answer = await svc.consume(x=2.0)
        assert isinstance(answer, AsyncServiceResponse) and answer.output("y") == 4.0

        batch = svc.batch([{"x": float(i)} for i in range(12)], parallel_count=2, chunk_size=5)
        assert isinstance(batch, AsyncBatchExecution) and batch.execution_id is None
        assert await batch.start() is batch
        snapshot = await batch.wait(timeout=60)
        assert isinstance(snapshot, AsyncBatchResponse)
        assert snapshot.completed_item_count == 12
        assert (await snapshot.execution(3)).output("y") == 6.0
        assert list((await snapshot.to_pandas())["y"]) == [2.0 * i for i in range(12)]
        streamed = [r.output("y") async for r in batch.iter_results(page_size=5)]
        assert streamed == [2.0 * i for i in range(12)]

        again = await svc.get_batch(str(batch.execution_id))
        assert isinstance(again, AsyncBatchExecution) and again.service.name == unique_name
        assert (await again.refresh()).state == "completed"
        assert (await again.results()).succeeded_item_count == 12
        assert await again.list_artifacts(0) == []
        await again.delete()
        with pytest.raises(errors.NotFoundError):
            await again.refresh()

    run(server, main)


def test_poll_timeout_names_the_batch_and_the_task_info_locates_it(server, unique_name):  # type: ignore[no-untyped-def]
    async def main(client: AsyncClient) -> None:
        svc = await client.publish_service(
            unique_name, nap, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        op = await svc.run_deferred([{"x": float(i)} for i in range(200)], parallel_count=1)
        with pytest.raises(asyncio.TimeoutError) as raised:
            await op.wait(poll_timeout=0.5, poll_interval=0.1)
        assert f"Batch {op.id} did not finish within poll_timeout=0.5 s" in str(raised.value)
        assert re.search(r"\(waited \d+\.\d s\)", str(raised.value))

        info = await op.get_task_info()
        assert info.operation_id == info.task_id == op.id
        assert info.model_uri == f"{unique_name}:v1"
        assert info.source_dataset_id == f"{server.url}/v1/batches/{op.id}/records"
        assert info.result_dataset_id is None
        assert info.status.status_name == "running"

        await op.cancel()
        for spelling in ("cancelled", "canceled", BatchTaskStatus.CANCELLED):
            listed = [i.task_id async for i in client.batch.list_info(status=spelling)]
            assert op.id in listed, spelling
        info = await op.get_task_info()
        assert info.status is BatchTaskStatus.CANCELLED
        assert info.status.status_name == "failed"
        await op.delete()

    run(server, main)
