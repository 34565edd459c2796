"""A program using both clients as their users do, type-checked by tests/unit/test_sdk_typing.py
(``mypy --strict``) against the installed package. It is never run, and pytest does not collect it.
"""

from __future__ import annotations

import pandas as pd

from batchserve import (
    AsyncBatchExecution,
    AsyncBatchResponse,
    AsyncBatchTaskOperation,
    AsyncBatchTaskResult,
    AsyncClient,
    AsyncService,
    AsyncServiceResponse,
    Batch,
    BatchResponse,
    BatchState,
    BatchTaskInfo,
    BatchTaskOperation,
    BatchTaskResult,
    BatchTaskStatus,
    Client,
    Service,
    ServiceResponse,
)

RECORDS = [{"hp": 120.0, "wt": 2.8}, {"hp": 90.0, "wt": 3.1}]


def blocking(url: str, password: str) -> None:
    with Client(url, username="admin", password=password) as client:
        svc: Service = client.get_service("mtService", version="v1.0.0")
        services: list[Service] = client.list_services("mtService")
        answer: ServiceResponse = svc.consume(hp=120, wt=2.8)
        value: float = answer.output("answer")
        artifact: bytes = answer.artifact("plot.png")

        batch: Batch = svc.batch(RECORDS, parallel_count=2, priority=5).start()
        state: BatchState | None = batch.refresh().state
        snapshot: BatchResponse = batch.wait(timeout=600)
        frame: pd.DataFrame = snapshot.to_pandas()
        record: ServiceResponse = snapshot.execution(0)
        names: list[str] = batch.list_artifacts(0)
        for result in batch.iter_results(page_size=100):
            print(result.index, result.outputs)
        for listed in client.list_batches(state="completed", service="mtService"):
            print(listed.execution_id)
        ids: list[str] = svc.list_batch_executions()

        operation: BatchTaskOperation = svc.run_deferred(RECORDS, parallel_count=2)
        status: BatchTaskStatus = operation.get_status(timeout=10)
        info: BatchTaskInfo = operation.get_task_info()
        model: str = info.model_uri
        done: BatchTaskResult = operation.wait(poll_timeout=3600, poll_interval=5)
        for result in done:
            print(result.output("answer"))
        same: BatchTaskOperation = client.batch.get(operation.id)
        for other in client.batch.list_operations(status="cancelled", page_size=50):
            other.delete()
        for task in client.batch.list_info(status=BatchTaskStatus.FAILED):
            print(task.errors.message)
        print(services, value, artifact, state, frame, record, names, ids, status, model, same)


async def asynchronous(url: str, password: str) -> None:
    async with AsyncClient(url, username="admin", password=password) as client:
        svc: AsyncService = await client.get_service("mtService", version="v1.0.0")
        services: list[AsyncService] = await client.list_services("mtService")
        answer: AsyncServiceResponse = await svc.consume(hp=120, wt=2.8)
        value: float = answer.output("answer")
        artifact: bytes = await answer.artifact("plot.png")

        batch: AsyncBatchExecution = await svc.batch(RECORDS, parallel_count=2).start()
        refreshed: AsyncBatchExecution = await batch.refresh()
        snapshot: AsyncBatchResponse = await batch.wait(timeout=600)
        frame: pd.DataFrame = await snapshot.to_pandas()
        record: AsyncServiceResponse = await snapshot.execution(0)
        names: list[str] = await batch.list_artifacts(0)
        async for result in batch.iter_results(page_size=100):
            print(result.index, await result.artifact("plot.png"))
        async for listed in client.list_batches(state="completed"):
            print(await listed.results())
        fetched: AsyncBatchExecution = await svc.get_batch(batch.execution_id or "")
        ids: list[str] = await svc.list_batch_executions()
        await batch.cancel()

        operation: AsyncBatchTaskOperation = await svc.run_deferred(RECORDS, parallel_count=2)
        status: BatchTaskStatus = await operation.get_status(timeout=10)
        info: BatchTaskInfo = await operation.get_task_info()
        done: AsyncBatchTaskResult = await operation
        async for result in done:
            print(result.output("answer"))
        try:
            await operation.wait(poll_timeout=1)
        except TimeoutError as exc:
            print(exc)
        same: AsyncBatchTaskOperation = await client.batch.get(info)
        async for other in client.batch.list_operations(status="canceled"):
            await other.delete()
        async for task in client.batch.list_info(page_size=10):
            print(task.task_id, task.status.status_name)
        print(services, value, artifact, refreshed, frame, record, names, fetched, ids, status)
        print(same)


if __name__ == "__main__":
    raise SystemExit("This program is type-checked, not run.")
