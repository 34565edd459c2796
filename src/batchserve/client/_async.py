"""The asyncio client: :class:`AsyncClient`, and the services and batches it hands out.

Every operation is written once, as a sans-IO operation run by a runner (see ``_runner.py``).
The asyncio classes here are the shared classes (``ClientBase``, ``Service``, ``Batch``) with
each method that sends a request declared again as a coroutine, in one line: a twin made from
the blocking method (see ``_twins.py``), typed with its parameters and returning the asyncio
objects (an :class:`AsyncService` for a ``Service``, an :class:`AsyncBatchExecution` for a
``Batch``). Methods that only read what is already here are inherited unchanged. The few that
call the runner more than once (the paged listings) are written out here.

``tests/unit/test_async_twins.py`` checks that every public method of the blocking classes has
its twin here, so that nothing added to them later is silently synchronous in asyncio programs.
Like the blocking client, an asyncio client has the batch-task operations (``_operations.py``,
``_batchtasks.py``): ``aclient.batch`` and :meth:`AsyncService.run_deferred`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, cast

import httpx

from batchserve.client import _ops
from batchserve.client._async_responses import (
    AsyncServiceResponse,
    async_record,
    async_response,
)
from batchserve.client._batch import Batch
from batchserve.client._batchtasks import AsyncBatch, list_ids
from batchserve.client._client import DEFAULT_TIMEOUT, USER_AGENT, ClientBase, _session
from batchserve.client._operations import AsyncBatchTaskOperation
from batchserve.client._responses import ServiceResponse
from batchserve.client._runner import AsyncRunner, Runner
from batchserve.client._service import Service, batch_from_info, listing_filters
from batchserve.client._twins import arun, async_runner, retyped, twin
from batchserve.client._wire import Op, q
from batchserve.errors import UsageError


def async_service(service: Service) -> AsyncService:
    """``service`` as an :class:`AsyncService` that keeps its class's alias method."""
    if isinstance(service, AsyncService):
        return service
    # Each service object has a class of its own (for its alias method): derive from it.
    cls = type(service)
    acls = type(cls.__name__, (AsyncService, cls), {"__module__": cls.__module__})
    return acls(service.info, service._runner)


def async_services(services: list[Service]) -> list[AsyncService]:
    return [async_service(s) for s in services]


def async_batch(batch: Batch) -> AsyncBatchExecution:
    """``batch`` (a batch of an :class:`AsyncService`) as an :class:`AsyncBatchExecution`."""
    if isinstance(batch, AsyncBatchExecution):
        return batch
    # The same object's state, whatever the shared class keeps, under the asyncio class.
    twin_batch = AsyncBatchExecution.__new__(AsyncBatchExecution)
    twin_batch.__dict__.update(vars(batch))
    return twin_batch


def _async_records(records: AsyncIterator[ServiceResponse]) -> AsyncIterator[AsyncServiceResponse]:
    async def convert() -> AsyncIterator[AsyncServiceResponse]:
        async for record in records:
            yield async_record(record)

    return convert()


class AsyncBatchExecution(Batch):
    """A batch execution of an asyncio client: :class:`~batchserve.Batch` with every method
    that talks to the server a coroutine (``await batch.start()``, ``await batch.wait()``),
    and :meth:`iter_results` an asynchronous iterator (``async for record in ...``)."""

    service: AsyncService

    start = twin(Batch.start, async_batch)  # type: ignore[assignment]
    refresh = twin(Batch.refresh, async_batch)  # type: ignore[assignment]
    cancel = twin(Batch.cancel, async_batch)  # type: ignore[assignment]
    terminate = twin(Batch.terminate, async_batch)  # type: ignore[assignment]
    disable = twin(Batch.disable, async_batch)  # type: ignore[assignment]
    enable = twin(Batch.enable, async_batch)  # type: ignore[assignment]
    update = twin(Batch.update, async_batch)  # type: ignore[assignment]
    add = twin(Batch.add)  # type: ignore[assignment]
    close = twin(Batch.close, async_batch)  # type: ignore[assignment]
    info = twin(Batch.info)  # type: ignore[assignment]
    export_results = twin(Batch.export_results)  # type: ignore[assignment]
    delete = twin(Batch.delete)  # type: ignore[assignment]
    results = twin(Batch.results, async_response)  # type: ignore[assignment]
    wait = twin(Batch.wait, async_response)  # type: ignore[assignment]
    list_artifacts = twin(Batch.list_artifacts)  # type: ignore[assignment]
    artifact = twin(Batch.artifact)  # type: ignore[assignment]
    download = twin(Batch.download)  # type: ignore[assignment]
    download_all = twin(Batch.download_all)  # type: ignore[assignment]

    def iter_results(  # type: ignore[override]
        self, page_size: int = _ops.RESULTS_PAGE_SIZE
    ) -> AsyncIterator[AsyncServiceResponse]:
        """The finished records' results in index order, read from the server ``page_size`` at
        a time as the iteration reaches them: ``async for record in batch.iter_results()``."""
        # With the asyncio runner, Batch.iter_results hands out an asynchronous iterator.
        records = Batch.iter_results(self, page_size)
        return _async_records(cast(AsyncIterator[ServiceResponse], records))


# Made outside the class body, where mypy would infer its result from Service.batch's.
_prepare_batch = retyped(Service.batch, async_batch)


class AsyncService(Service):
    """A service of an :class:`AsyncClient`: its methods that talk to the server are coroutines
    (``await svc.consume(...)``, and its alias method), :meth:`batch` prepares an
    :class:`AsyncBatchExecution`, and :meth:`run_deferred` starts a batch as an
    :class:`AsyncBatchTaskOperation`."""

    consume = twin(Service.consume, async_record)  # type: ignore[assignment]
    batch = _prepare_batch
    get_batch = twin(Service.get_batch, async_batch)  # type: ignore[assignment]

    async def run_deferred(  # type: ignore[override]
        self, records: Any, **batch_options: Any
    ) -> AsyncBatchTaskOperation:
        """Upload ``records`` as a batch of this service, start it, and return its operation.

        ``records`` and ``batch_options`` are those of :meth:`Service.batch` (``parallel_count``,
        ``chunk_size``, ``priority``, ``metadata``, ``max_task_retry_count``, ...). Bad options
        raise before anything is sent; records the service cannot take are refused by the
        server (:class:`~batchserve.errors.BadRequestError`), and no batch is made.
        """
        batch_id = await arun(self._runner, self._run_deferred(records, batch_options))
        return AsyncBatchTaskOperation(batch_id, async_runner(self._runner))

    async def list_batches(  # type: ignore[override]
        self,
        *,
        state: str | Iterable[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int = _ops.BATCHES_PAGE_SIZE,
    ) -> AsyncIterator[AsyncBatchExecution]:
        """This version's batches, newest first, a page per request as the iteration goes on
        (``async for batch in svc.list_batches(...)``); the filters of the blocking SDK."""
        filters = listing_filters(state, metadata, created_after, created_before, page_size)
        async for info in apaged(
            async_runner(self._runner),
            lambda cursor: _ops.list_service_batches(
                self.name, self.version, filters, cursor, page_size
            ),
        ):
            yield async_batch(batch_from_info(self, info))

    async def list_batch_executions(self) -> list[str]:  # type: ignore[override]
        """The execution ids of this service version's batches, newest first."""
        path = f"/v1/services/{q(self.name)}/{q(self.version)}/batches"
        return await list_ids(async_runner(self._runner), path)

    async def get_batch_executions(self) -> list[str]:  # type: ignore[override]
        """The execution ids of this service version's batches, newest first: ML Server's name
        for :meth:`list_batch_executions`."""
        return await self.list_batch_executions()


async def apaged(
    runner: AsyncRunner, page: Callable[[str | None], Op[dict[str, Any]]]
) -> AsyncIterator[dict[str, Any]]:
    """The items of a cursor-paged listing, one request per page, as the iteration needs them."""
    cursor: str | None = None
    while True:
        answer = await runner.run(page(cursor))
        for item in answer.get("batches") or []:
            yield item
        cursor = answer.get("next_cursor")
        if not cursor:
            return


class AsyncClient(ClientBase):
    """An asyncio client of a batchserve server; use it as ``async with AsyncClient(...) as c``.

    Every operation of :class:`~batchserve.Client` is a coroutine here
    (``await c.get_service(...)``, ``await svc.consume(...)``, ``await batch.wait()``), and
    :attr:`batch` finds and lists batches as :class:`AsyncBatchTaskOperation` objects.

    Log in with ``username`` and ``password`` (on entering the ``async with``, or at the first
    request), or give an access ``token``. ``timeout`` is in seconds per request unless a call
    gives its own. ``transport`` is an ``httpx`` async transport to use instead of the network.
    """

    publish_service = twin(ClientBase.publish_service, async_service)  # type: ignore[assignment]
    get_service = twin(ClientBase.get_service, async_service)  # type: ignore[assignment]
    list_services = twin(ClientBase.list_services, async_services)  # type: ignore[assignment]
    delete_service = twin(ClientBase.delete_service)  # type: ignore[assignment]
    service_publishers = twin(ClientBase.service_publishers)  # type: ignore[assignment]
    grant_publisher = twin(ClientBase.grant_publisher)  # type: ignore[assignment]
    revoke_publisher = twin(ClientBase.revoke_publisher)  # type: ignore[assignment]
    whoami = twin(ClientBase.whoami)  # type: ignore[assignment]

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        session = _session(url, username, password, token)
        self.url = str(url).rstrip("/")
        self._session = session
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )
        self._async_runner = AsyncRunner(session, self._http)
        # The shared classes type their runner as the blocking one sees it (see Runner); the
        # asyncio classes take it back as the AsyncRunner it is.
        self._runner = cast(Runner, self._async_runner)
        #: The batch domain: ``await aclient.batch.get(id)``, ``aclient.batch.list_info()``.
        self.batch = AsyncBatch(self._async_runner)

    @property
    def token(self) -> str | None:
        """The access token in use (None before logging in; it changes when refreshed)."""
        return self._session.access_token

    async def login(self) -> None:
        """Log in now with the username and password given (else it happens at the first
        request); nothing to do with a token."""
        await self._async_runner.run(self._session.login())

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        try:
            await self.login()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def list_batches(  # type: ignore[override]
        self,
        *,
        state: str | Iterable[str] | None = None,
        service: str | None = None,
        version: str | None = None,
        metadata: Mapping[str, str] | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int = _ops.BATCHES_PAGE_SIZE,
    ) -> AsyncIterator[AsyncBatchExecution]:
        """The batches you may see, newest first, a page per request as the iteration goes on
        (``async for batch in aclient.list_batches(...)``); the filters of the blocking SDK."""
        if version is not None and service is None:
            raise UsageError("version= needs service=, the name of the service it belongs to.")
        filters = listing_filters(state, metadata, created_after, created_before, page_size)
        if service is not None:
            filters["service"] = service
            if version is not None:
                filters["version"] = version
        services: dict[tuple[str, str], AsyncService] = {}
        async for info in apaged(
            self._async_runner, lambda cursor: _ops.list_batches(filters, cursor, page_size)
        ):
            ref = info.get("service") or {}
            key = (str(ref.get("name")), str(ref.get("version")))
            if key not in services:
                services[key] = await self.get_service(*key)
            yield async_batch(batch_from_info(services[key], info))

    def __repr__(self) -> str:
        return f"<AsyncClient {self.url}>"
