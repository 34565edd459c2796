"""Every public method of the blocking SDK has its asyncio twin: a coroutine, or an asynchronous
iterator, on the matching class of the asyncio client. A method added to ``Client``,
``Service``, ``Batch``, the results or the batch-task operations without its twin in
``client/_async.py`` (or ``_async_responses.py``, ``_operations.py``, ``_batchtasks.py``) fails
here, instead of being silently synchronous for asyncio programs."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import httpx
import pytest

from batchserve import (
    AsyncBatch,
    AsyncBatchExecution,
    AsyncBatchResponse,
    AsyncBatchTaskOperation,
    AsyncBatchTaskResult,
    AsyncClient,
    AsyncService,
    AsyncServiceResponse,
    Batch,
    BatchResponse,
    BatchTaskOperation,
    BatchTaskResult,
    BatchTasks,
    Client,
    Service,
    ServiceResponse,
)
from batchserve.client._async import async_service
from batchserve.client._service import service_from_info
from batchserve.client._twins import twin

TWINS: list[tuple[type, type]] = [
    (Client, AsyncClient),
    (Service, AsyncService),
    (Batch, AsyncBatchExecution),
    (BatchResponse, AsyncBatchResponse),
    (ServiceResponse, AsyncServiceResponse),
    (BatchTasks, AsyncBatch),
    (BatchTaskOperation, AsyncBatchTaskOperation),
    (BatchTaskResult, AsyncBatchTaskResult),
]

#: Methods that send nothing: their twin is the same kind of call (it may return an asyncio
#: object, as ``AsyncService.batch`` returns an ``AsyncBatchExecution``).
SENDS_NOTHING = {"Service.batch", "ServiceResponse.output"}

#: The client's methods whose asyncio twin has another name.
RENAMED = {"close": "aclose", "__enter__": "__aenter__", "__exit__": "__aexit__"}


def renamed(cls: type) -> dict[str, str]:
    return RENAMED if cls is Client else {}


def public_methods(cls: type) -> list[str]:
    names = [n for n in dir(cls) if not n.startswith("_") or n in renamed(cls) or n == "__iter__"]
    return [n for n in names if inspect.isfunction(getattr(cls, n))]


def is_asynchronous(function: Any) -> bool:
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        return True
    # A plain method that hands out an asynchronous iterator (a listing checks its arguments
    # when it is called, before the first step).
    returns = str(inspect.signature(function).return_annotation)
    return returns.startswith("AsyncIterator[")


@pytest.mark.parametrize(("blocking", "asynchronous"), TWINS, ids=lambda c: c.__name__)
def test_every_public_method_has_an_asyncio_twin(blocking: type, asynchronous: type):
    missing, synchronous = [], []
    for name in public_methods(blocking):
        twin_name = "__aiter__" if name == "__iter__" else renamed(blocking).get(name, name)
        twin = getattr(asynchronous, twin_name, None)
        if twin is None:
            missing.append(name)
        elif f"{blocking.__name__}.{name}" not in SENDS_NOTHING and not (
            is_asynchronous(twin) or twin_name == "__aiter__"
        ):
            synchronous.append(name)
    assert not missing, f"{asynchronous.__name__} has no twin of {blocking.__name__}.{missing}"
    assert not synchronous, (
        f"{asynchronous.__name__}.{synchronous} are synchronous: declare their twins as "
        "coroutines (see client/_twins.py)"
    )


@pytest.mark.parametrize(("blocking", "asynchronous"), TWINS, ids=lambda c: c.__name__)
def test_every_public_attribute_is_there_on_the_twin(blocking: type, asynchronous: type):
    names = {n for n in dir(blocking) if not n.startswith("_")} - set(renamed(blocking))
    assert names <= set(dir(asynchronous)), names - set(dir(asynchronous))


def test_the_drift_check_finds_a_method_without_its_twin():
    class Grown(Batch):
        def download_everything(self) -> list[str]:
            return []

    assert "download_everything" in public_methods(Grown)
    assert not hasattr(AsyncBatchExecution, "download_everything")
    assert not is_asynchronous(Grown.download_everything)


def test_the_alias_method_of_an_async_service_is_a_coroutine():
    async def main() -> None:
        client = AsyncClient("http://testserver", token="t", transport=httpx.MockTransport(ok))
        info = {"name": "mtService", "version": "v1", "alias": "manual", "inputs": {"hp": "float"}}
        svc = async_service(service_from_info(info, client._runner))
        answer = svc.manual(120)  # type: ignore[attr-defined]
        assert inspect.isawaitable(answer)
        assert isinstance(await answer, AsyncServiceResponse)
        await client.aclose()

    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"index": 0, "status": "succeeded", "outputs": {"y": 1}})

    asyncio.run(main())


def test_a_twin_of_a_method_that_does_not_run_through_the_runner_says_so():
    class Counting:
        def count(self) -> int:
            return 3

    class AsyncCounting(Counting):
        count = twin(Counting.count)  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"count\(\) did not hand its work to the runner"):
        asyncio.run(AsyncCounting().count())


def test_an_async_service_prepares_async_batches_with_the_blocking_checks():
    async def main() -> None:
        client = AsyncClient("http://testserver", token="t", transport=httpx.MockTransport(ok))
        info = {"name": "mtService", "version": "v1", "inputs": {"hp": "float"}}
        svc = async_service(service_from_info(info, client._runner))
        batch = svc.batch([{"hp": 120.0}], parallel_count=2, priority=3)
        assert isinstance(batch, AsyncBatchExecution)
        assert batch.service is svc and batch.parallel_count == 2
        assert batch.execution_id is None
        with pytest.raises(ValueError, match="priority"):
            svc.batch([{"hp": 1.0}], priority=5000)
        await client.aclose()

    def ok(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"nothing is sent to prepare a batch, yet {request.url} was")

    asyncio.run(main())
