"""The batch domain of both clients, ``client.batch``: find batches by id, and list them page by
page, as batch-task operations or task infos (:class:`BatchTasks`, and :class:`AsyncBatch` for an
asyncio client).

A listing's arguments are checked when it is asked for; each page is a sans-IO operation (see
``_wire.py``) run by the client's runner as the iteration reaches it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from batchserve.client._operations import (
    DEFAULT_TIMEOUT,
    AsyncBatchTaskOperation,
    BatchTaskOperation,
    positive_seconds,
    read_task_info,
    with_timeout,
)
from batchserve.client._runner import AsyncRunner, SyncRunner
from batchserve.client._taskinfo import BatchTaskInfo, BatchTaskStatus, states_for_filter
from batchserve.client._wire import Op, Request, call
from batchserve.errors import UsageError

#: Batches per page of a listing unless ``page_size`` says otherwise, and the most a page holds.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: An older server lists at most this many batches in one answer and hands out no cursor.
_UNPAGED_LIMIT = 10_000


def list_page(
    states: list[str] | None, limit: int, cursor: str | None, path: str = "/v1/batches"
) -> Op[dict[str, Any]]:
    """One page of a batch listing (every batch, or a service version's at ``path``), newest
    first: ``{"batches": [...], "next_cursor": ...}`` (an older server sends no ``next_cursor``)."""
    params: dict[str, Any] = {"state": states, "limit": limit, "cursor": cursor}
    resp = yield from call(Request("GET", path, params=params))
    return dict(resp.json())


async def list_ids(runner: AsyncRunner, path: str) -> list[str]:
    """The ids of every batch of the listing at ``path``, newest first, page by page."""
    pager = _Pager(MAX_PAGE_SIZE)
    ids: list[str] = []
    while not pager.done:
        page = await runner.run(list_page(None, pager.limit, pager.cursor, path))
        ids.extend(str(b["id"]) for b in pager.take(page))
    return ids


class _Pager:
    """Where a listing is: the next page to ask for, and the batches already handed out.

    A server that pages hands out ``next_cursor`` with each page. An older one sends only the
    newest ``limit`` batches: the listing then asks for ever more of them and skips those it has
    handed out already, up to that server's longest answer.
    """

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.limit = page_size
        self.cursor: str | None = None
        self.seen: set[str] = set()
        self.done = False

    def take(self, page: dict[str, Any]) -> list[dict[str, Any]]:
        batches = [b for b in page.get("batches") or [] if str(b["id"]) not in self.seen]
        self.seen.update(str(b["id"]) for b in batches)
        if "next_cursor" in page:
            self.cursor = page["next_cursor"]
            self.done = not self.cursor or not page.get("batches")
        else:
            self.done = len(page.get("batches") or []) < self.limit or self.limit >= _UNPAGED_LIMIT
            self.limit = min(self.limit + self.page_size, _UNPAGED_LIMIT)
        return batches


class _Listing:
    """A batch listing's arguments, checked when the listing is asked for (not at its first
    step), and the operations of its pages."""

    def __init__(
        self,
        page_size: int | None,
        status: BatchTaskStatus | int | str | None,
        timeout: float | None,
    ) -> None:
        self.states = states_for_filter(status)
        self.pager = _Pager(_page_size(page_size))
        self.timeout = positive_seconds(timeout, "timeout")

    def next_page(self) -> Op[dict[str, Any]]:
        page = list_page(self.states, self.pager.limit, self.pager.cursor)
        return with_timeout(page, self.timeout)

    def info(self, data: dict[str, Any], base_url: str) -> Op[BatchTaskInfo]:
        return with_timeout(read_task_info(data, base_url), self.timeout)


class BatchTasks:
    """The batch domain of a blocking :class:`~batchserve.Client` (``client.batch``): find
    batches by id, list them, as :class:`BatchTaskOperation` or :class:`BatchTaskInfo`. The
    blocking twin of :class:`AsyncBatch`, with the same methods."""

    def __init__(self, runner: SyncRunner) -> None:
        self._runner = runner

    def get(
        self, task: str | BatchTaskInfo, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> BatchTaskOperation:
        """The operation of the batch ``task`` (its id, or its info); an id is checked with the
        server (:class:`~batchserve.errors.NotFoundError` if there is no such batch)."""
        operation = BatchTaskOperation(task_ref(task), self._runner)
        if not isinstance(task, BatchTaskInfo):
            self._runner.run(operation._get_status(timeout))
        return operation

    def list_operations(
        self,
        *,
        page_size: int | None = None,
        status: BatchTaskStatus | int | str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Iterator[BatchTaskOperation]:
        """Every batch you may see, newest first, as operations; see
        :meth:`AsyncBatch.list_operations`."""
        listing = _Listing(page_size, status, timeout)
        return (BatchTaskOperation(str(d["id"]), self._runner) for d in self._batches(listing))

    def list_info(
        self,
        *,
        page_size: int | None = None,
        status: BatchTaskStatus | int | str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Iterator[BatchTaskInfo]:
        """As :meth:`list_operations`, as :class:`BatchTaskInfo` objects; see
        :meth:`AsyncBatch.list_info`."""
        listing = _Listing(page_size, status, timeout)
        base_url = self._runner.base_url
        return (self._runner.run(listing.info(d, base_url)) for d in self._batches(listing))

    def _batches(self, listing: _Listing) -> Iterator[dict[str, Any]]:
        while not listing.pager.done:
            yield from listing.pager.take(self._runner.run(listing.next_page()))

    def __repr__(self) -> str:
        return f"<BatchTasks of {self._runner.base_url}>"


class AsyncBatch:
    """The batch domain of an :class:`~batchserve.AsyncClient` (``aclient.batch``): find
    batches by id, list them, as :class:`AsyncBatchTaskOperation` or :class:`BatchTaskInfo`."""

    def __init__(self, runner: AsyncRunner) -> None:
        self._runner = runner

    async def get(
        self, task: str | BatchTaskInfo, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> AsyncBatchTaskOperation:
        """The operation of the batch ``task`` (its id, or its info); an id is checked with the
        server (:class:`~batchserve.errors.NotFoundError` if there is no such batch)."""
        operation = AsyncBatchTaskOperation(task_ref(task), self._runner)
        if not isinstance(task, BatchTaskInfo):
            await self._runner.run(operation._get_status(timeout))
        return operation

    def list_operations(
        self,
        *,
        page_size: int | None = None,
        status: BatchTaskStatus | int | str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> AsyncIterator[AsyncBatchTaskOperation]:
        """Every batch you may see, newest first, as operations: ``async for op in ...``.

        ``status`` keeps the batches with that status (the enum, its number, or its name in any
        case; ValueError for another name). The server is asked ``page_size`` batches at a time
        (1 to 1000, default 100) as the iteration goes on; ``timeout`` bounds each request.
        """
        return self._operations(_Listing(page_size, status, timeout))

    def list_info(
        self,
        *,
        page_size: int | None = None,
        status: BatchTaskStatus | int | str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> AsyncIterator[BatchTaskInfo]:
        """As :meth:`list_operations`, as :class:`BatchTaskInfo` objects; the errors of a batch
        with failed records are read with it (one read of its results each)."""
        return self._infos(_Listing(page_size, status, timeout))

    async def _batches(self, listing: _Listing) -> AsyncIterator[dict[str, Any]]:
        while not listing.pager.done:
            for data in listing.pager.take(await self._runner.run(listing.next_page())):
                yield data

    async def _operations(self, listing: _Listing) -> AsyncIterator[AsyncBatchTaskOperation]:
        async for data in self._batches(listing):
            yield AsyncBatchTaskOperation(str(data["id"]), self._runner)

    async def _infos(self, listing: _Listing) -> AsyncIterator[BatchTaskInfo]:
        async for data in self._batches(listing):
            yield await self._runner.run(listing.info(data, self._runner.base_url))

    def __repr__(self) -> str:
        return f"<AsyncBatch of {self._runner.base_url}>"


def task_ref(task: str | BatchTaskInfo) -> str:
    """The batch id of ``task``, given as an id or a :class:`BatchTaskInfo`."""
    if isinstance(task, BatchTaskInfo):
        return task.task_id
    if not isinstance(task, str) or not task:
        raise UsageError(f"get() takes a batch id or a BatchTaskInfo, not {task!r}.")
    return task


def _page_size(value: int | None) -> int:
    if value is None or value == 0:  # 0: the server's default, as the task API has it
        return DEFAULT_PAGE_SIZE
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PAGE_SIZE:
        raise UsageError(
            f"page_size must be a whole number from 1 to {MAX_PAGE_SIZE}, not {value!r}."
        )
    return value
