"""Mistakes the SDK's types catch, one per line marked ``# error: <mypy code>``: type-checked by
tests/unit/test_sdk_typing.py, which expects an error on each marked line and on no other. It is
never run, and pytest does not collect it.
"""

from __future__ import annotations

from batchserve import (
    AsyncBatchTaskResult,
    AsyncClient,
    AsyncService,
    BatchTaskResult,
    Client,
)


async def mistakes(client: Client, aclient: AsyncClient) -> None:
    await client.get_service("mtService")  # error: misc
    await client.batch.get("b1")  # error: misc
    svc: AsyncService = aclient.get_service("mtService")  # error: assignment
    batch = (await aclient.get_service("mtService")).batch([{"x": 1.0}])
    batch.start().wait()  # error: attr-defined
    started = await batch.start()
    started.results().to_pandas()  # error: attr-defined
    for record in started.iter_results():  # error: attr-defined
        print(record)
    operation = await aclient.batch.get("b1")
    result: BatchTaskResult = await operation.wait()  # error: assignment
    for op in aclient.batch.list_operations():  # error: attr-defined
        print(op)
    blocking = client.batch.get("b1")
    done: AsyncBatchTaskResult = blocking.wait()  # error: assignment
    print(svc, result, done)
