"""The asyncio client: :class:`AsyncClient`, the client's operations as coroutines.

It is :class:`~batchserve.client._client.ClientBase` (every operation, written once) over an
:class:`~batchserve.client._runner.AsyncRunner` and an ``httpx.AsyncClient``: each method of the
client and of the objects it returns (services, batches, results) returns an awaitable. On top of
that it has the batch-task operations of ``_operations.py``: ``aclient.batch`` and
:meth:`AsyncService.run_deferred`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, cast

import httpx

from batchserve.client import _ops
from batchserve.client._batch import Batch
from batchserve.client._client import DEFAULT_TIMEOUT, USER_AGENT, ClientBase, _session
from batchserve.client._operations import AsyncBatch, AsyncBatchTaskOperation, list_ids
from batchserve.client._runner import AsyncRunner, Runner
from batchserve.client._service import Service, batch_from_info, listing_filters
from batchserve.client._wire import Op, q
from batchserve.errors import UsageError


class AsyncService(Service):
    """A service of an :class:`AsyncClient`: its methods return awaitables, and
    :meth:`run_deferred` starts a batch as an :class:`AsyncBatchTaskOperation`."""

    async def run_deferred(self, records: Any, **batch_options: Any) -> AsyncBatchTaskOperation:
        """Upload ``records`` as a batch of this service, start it, and return its operation.

        ``records`` and ``batch_options`` are those of :meth:`Service.batch` (``parallel_count``,
        ``chunk_size``, ``priority``, ``metadata``, ``max_task_retry_count``, ...). Bad options
        raise before anything is sent; records the service cannot take are refused by the
        server (:class:`~batchserve.errors.BadRequestError`), and no batch is made.
        """
        runner = cast(AsyncRunner, self._runner)
        batch = self.batch(records, **batch_options)
        await runner.run(batch._start())
        assert batch.execution_id is not None
        return AsyncBatchTaskOperation(batch.execution_id, runner)

    async def list_batches(  # type: ignore[override]
        self,
        *,
        state: str | Iterable[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int = _ops.BATCHES_PAGE_SIZE,
    ) -> AsyncIterator[Batch]:
        """This version's batches, newest first, a page per request as the iteration goes on
        (``async for batch in svc.list_batches(...)``); the filters of the blocking SDK."""
        filters = listing_filters(state, metadata, created_after, created_before, page_size)
        runner = cast(AsyncRunner, self._runner)
        async for info in apaged(
            runner,
            lambda cursor: _ops.list_service_batches(
                self.name, self.version, filters, cursor, page_size
            ),
        ):
            yield batch_from_info(self, info)

    async def list_batch_executions(self) -> list[str]:  # type: ignore[override]
        """The execution ids of this service version's batches, newest first."""
        # Read page by page here: the blocking listing cannot be driven by the asyncio runner.
        path = f"/v1/services/{q(self.name)}/{q(self.version)}/batches"
        return await list_ids(cast(AsyncRunner, self._runner), path)


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


def _async_service(service: Service) -> AsyncService:
    """``service`` as an :class:`AsyncService` that keeps its class's alias method."""
    # Each service object has a class of its own (for its alias method): derive from it.
    cls = type(service)
    acls = type(cls.__name__, (AsyncService, cls), {"__module__": cls.__module__})
    return acls(service.info, service._runner)


class AsyncClient(ClientBase):
    """An asyncio client of a batchserve server; use it as ``async with AsyncClient(...) as c``.

    Every operation of :class:`~batchserve.Client` is a coroutine here
    (``await c.get_service(...)``, ``await svc.consume(...)``, ``await batch.wait()``), and
    :attr:`batch` finds and lists batches as :class:`AsyncBatchTaskOperation` objects.

    Log in with ``username`` and ``password`` (on entering the ``async with``, or at the first
    request), or give an access ``token``. ``timeout`` is in seconds per request unless a call
    gives its own. ``transport`` is an ``httpx`` async transport to use instead of the network.
    """

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
        # ClientBase types its runner as the blocking one sees it (see Runner).
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

    # The services this client hands out are AsyncService objects.

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
    ) -> AsyncIterator[Batch]:
        """The batches you may see, newest first, a page per request as the iteration goes on
        (``async for batch in aclient.list_batches(...)``); the filters of the blocking SDK."""
        if version is not None and service is None:
            raise UsageError("version= needs service=, the name of the service it belongs to.")
        filters = listing_filters(state, metadata, created_after, created_before, page_size)
        if service is not None:
            filters["service"] = service
            if version is not None:
                filters["version"] = version
        services: dict[tuple[str, str], Service] = {}
        async for info in apaged(
            self._async_runner, lambda cursor: _ops.list_batches(filters, cursor, page_size)
        ):
            ref = info.get("service") or {}
            key = (str(ref.get("name")), str(ref.get("version")))
            if key not in services:
                services[key] = await cast(Any, self.get_service(*key))
            yield batch_from_info(services[key], info)

    def _publish(self, name: str, code: Any, **options: Any) -> Op[Service]:
        return _async_service((yield from super()._publish(name, code, **options)))

    def _get_service(self, name: str, version: str | None) -> Op[Service]:
        return _async_service((yield from super()._get_service(name, version)))

    def _list_services(self, name: str | None) -> Op[list[Service]]:
        services = yield from super()._list_services(name)
        return [_async_service(s) for s in services]

    def __repr__(self) -> str:
        return f"<AsyncClient {self.url}>"
