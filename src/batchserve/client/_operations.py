"""Batches as asyncio batch-task operations: the ``aclient.batch`` domain and
:class:`AsyncBatchTaskOperation`.

The logic of each call is a sans-IO operation (see ``_wire.py``) run by the client's
:class:`~batchserve.client._runner.AsyncRunner`; the ``async`` methods here only choose the
operation, its request timeout and, for :meth:`AsyncBatchTaskOperation.wait`, the bound on the
whole wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from batchserve.client import _ops
from batchserve.client._responses import BatchResponse, ServiceResponse
from batchserve.client._taskinfo import (
    BatchTaskErrorsInfo,
    BatchTaskInfo,
    BatchTaskStatus,
    errors_info,
    states_for_filter,
    task_info,
)
from batchserve.client._wire import Op, Request, Response, call, sleep
from batchserve.errors import UsageError

if TYPE_CHECKING:
    from batchserve.client._runner import AsyncRunner, Runner

T = TypeVar("T")

#: Seconds a request may take unless a call says otherwise (``timeout=``).
DEFAULT_TIMEOUT = 60.0
#: How long wait() may run unless ``poll_timeout`` says otherwise (72 h, as the task API's).
DEFAULT_POLL_TIMEOUT = 72 * 3600.0
#: Seconds between polls in wait() unless ``poll_interval`` says otherwise.
DEFAULT_POLL_INTERVAL = 10.0
#: The longest the server holds a poll open (its ``wait`` parameter's limit).
MAX_LONG_POLL = 60.0
#: Batches per page of a listing unless ``page_size`` says otherwise, and the most a page holds.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: An older server lists at most this many batches in one answer and hands out no cursor.
_UNPAGED_LIMIT = 10_000


def with_timeout(op: Op[T], seconds: float | None) -> Op[T]:
    """``op`` with each of its requests limited to ``seconds`` (None: the client's timeout)."""
    reply: Response | None = None
    error: Exception | None = None
    try:
        while True:
            try:
                step = op.throw(error) if error is not None else op.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            if isinstance(step, Request) and seconds is not None:
                step = dataclasses.replace(step, timeout=seconds)
            try:
                reply = yield step
            except Exception as exc:  # an error response or a transport error: the op decides
                error = exc
    finally:
        op.close()


def _seconds(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UsageError(f"{what} must be a number of seconds greater than 0, not {value!r}.")
    return float(value)


# -- operations ---------------------------------------------------------------------------------


def describe(task_id: str) -> Op[dict[str, Any]]:
    return (yield from _ops.get_batch(task_id))


def read_task_info(data: dict[str, Any]) -> Op[BatchTaskInfo]:
    """The task info of the batch described by ``data``, with its failed records read from the
    server when it has any (one read of its results)."""
    errors = BatchTaskErrorsInfo(message=data.get("error"))
    if int(data.get("failed_item_count") or 0) > 0:
        content = yield from _ops.results_arrow(str(data["id"]))
        errors = errors_info(data.get("error"), _failed_rows(content), data.get("chunk_size"))
    return task_info(data, errors)


def _failed_rows(content: bytes) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.ipc.open_stream(pa.py_buffer(content)).read_all()
    failed = table.filter(pc.equal(table.column("status"), "failed"))
    wanted = [c for c in ("index", "error", "error_type") if c in failed.column_names]
    rows: list[dict[str, Any]] = failed.select(wanted).sort_by("index").to_pylist()
    return rows


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


# -- the objects --------------------------------------------------------------------------------


class BatchTaskResult(BatchResponse):
    """The results of a completed batch: ``async for record in result`` streams its records
    (:class:`ServiceResponse`, a page at a time), ``await result.to_pandas()`` gives them as a
    DataFrame and ``await result.export(path)`` writes them to a file."""

    async def records(
        self, *, page_size: int = _ops.RESULTS_PAGE_SIZE
    ) -> AsyncIterator[ServiceResponse]:
        """Every record's result in index order, read ``page_size`` records at a time."""
        runner = cast("AsyncRunner", self._runner)
        start: int | None = 0
        while start is not None:
            page = await runner.run(_ops.results_page(self.execution_id, start, page_size))
            for raw in page["results"]:
                yield ServiceResponse(raw, self._runner, execution_id=self.execution_id)
            start = page.get("next_start")

    def __aiter__(self) -> AsyncIterator[ServiceResponse]:
        return self.records()


class AsyncBatchTaskOperation:
    """A batch followed as an asyncio operation: its status, info and result; wait for it,
    cancel it, delete it. ``await operation`` is ``await operation.wait()``.

    Every method takes ``timeout``: the seconds each request it sends may take (a
    :class:`~batchserve.errors.TransportError` past it).
    """

    def __init__(self, task_id: str, runner: AsyncRunner) -> None:
        self._task_id = task_id
        self._runner = runner

    @property
    def id(self) -> str:
        """The batch's id (its execution id)."""
        return self._task_id

    @property
    def task_id(self) -> str:
        return self._task_id

    async def _run(self, op: Op[T], timeout: float | None) -> T:
        return await self._runner.run(with_timeout(op, _seconds(timeout, "timeout")))

    async def get_status(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> BatchTaskStatus:
        """The batch's status now."""
        data = await self._run(describe(self._task_id), timeout)
        return BatchTaskStatus.of_state(data["state"])

    async def get_task_info(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> BatchTaskInfo:
        """The batch's details now, its errors included (reading them reads its results once
        when it has failed records)."""
        return await self._run(self._info(), timeout)

    def _info(self) -> Op[BatchTaskInfo]:
        data = yield from describe(self._task_id)
        return (yield from read_task_info(data))

    async def get_result(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> BatchTaskResult:
        """The results of the completed batch.

        Raises ``RuntimeError`` when the batch has no result: it failed, was cancelled, or is not
        finished yet.
        """
        data = await self._run(describe(self._task_id), timeout)
        return self._result(data)

    def _result(self, data: dict[str, Any]) -> BatchTaskResult:
        status = BatchTaskStatus.of_state(data["state"])
        if status is not BatchTaskStatus.COMPLETED:
            if status.is_failed:
                why = f": {data['error']}" if data.get("error") else ""
                what = "failed" if status is BatchTaskStatus.FAILED else "was cancelled"
                ref = data.get("service") or {}
                advice = (
                    "The records that finished before it stopped are kept: svc = await "
                    f"client.get_service({ref.get('name')!r}, version={ref.get('version')!r}), "
                    f"then await (await svc.get_batch({self._task_id!r})).results()."
                )
                raise RuntimeError(
                    f"Batch {self._task_id} has no result: it {what}{why} (state "
                    f"{data['state']}). {advice}"
                )
            raise RuntimeError(
                f"Batch {self._task_id} has no result yet: it is {status.name} (state "
                f"{data['state']}, {data.get('completed_item_count')} of "
                f"{data.get('total_item_count')} records finished). Await operation.wait() "
                "first."
            )
        # Typed for the blocking runner, as every results object is (see Runner).
        return BatchTaskResult(data, cast("Runner", self._runner), show_partial_results=False)

    async def wait(
        self,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        poll_timeout: float | None = None,
        poll_interval: float | None = None,
    ) -> BatchTaskResult:
        """Wait until the batch is finished and return its result (see :meth:`get_result`: a
        failed or cancelled batch raises ``RuntimeError``).

        Each poll asks the server to answer as soon as the batch finishes, or after
        ``poll_interval`` seconds (default 10), so the wait ends as soon as the batch does.
        ``poll_timeout`` (default 72 hours) bounds the whole wait: past it,
        ``asyncio.TimeoutError`` is raised and the batch goes on. ``timeout`` bounds each request.
        """
        request_timeout = _seconds(timeout, "timeout")
        interval = _seconds(poll_interval, "poll_interval") or DEFAULT_POLL_INTERVAL
        bound = _seconds(poll_timeout, "poll_timeout") or DEFAULT_POLL_TIMEOUT
        # The server holds a poll open for up to ``window`` s: well inside the request timeout
        # (this call's, else the client's).
        window = min(interval, MAX_LONG_POLL)
        read_limit = request_timeout or self._runner.http.timeout.read
        if read_limit is not None:
            window = min(window, read_limit / 2)
        poll = self._runner.run(with_timeout(self._poll(window, interval), request_timeout))
        data = await asyncio.wait_for(poll, bound)
        return self._result(data)

    def _poll(self, window: float, interval: float) -> Op[dict[str, Any]]:
        while True:
            before = time.monotonic()
            data = yield from _ops.get_batch(self._task_id, wait=window)
            if not BatchTaskStatus.of_state(data["state"]).is_running:
                return data
            # A server that answered early (an older one, or a proxy) is polled every interval.
            pause = interval - (time.monotonic() - before)
            if pause > 0:
                yield from sleep(pause)

    def __await__(self) -> Generator[Any, None, BatchTaskResult]:
        return self.wait().__await__()

    async def cancel(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Cancel the batch: no more of its records run; those finished keep their results.
        A batch already finished cannot be cancelled (:class:`~batchserve.errors.ConflictError`)."""
        await self._run(_ops.cancel_batch(self._task_id), timeout)

    async def delete(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Delete the batch from the history, with its records and results (a batch still
        running is stopped first). It is gone at once, even while its data is being removed."""
        await self._run(_ops.delete_batch(self._task_id), timeout)

    def __repr__(self) -> str:
        return f"<AsyncBatchTaskOperation {self._task_id}>"


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
        if isinstance(task, BatchTaskInfo):
            return AsyncBatchTaskOperation(task.task_id, self._runner)
        if not isinstance(task, str) or not task:
            raise UsageError(f"get() takes a batch id or a BatchTaskInfo, not {task!r}.")
        operation = AsyncBatchTaskOperation(task, self._runner)
        await operation._run(describe(task), timeout)
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
        pages = self._pages(page_size, status, timeout)
        return self._operations(pages)

    def list_info(
        self,
        *,
        page_size: int | None = None,
        status: BatchTaskStatus | int | str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> AsyncIterator[BatchTaskInfo]:
        """As :meth:`list_operations`, as :class:`BatchTaskInfo` objects; the errors of a batch
        with failed records are read with it (one read of its results each)."""
        pages = self._pages(page_size, status, timeout)
        return self._infos(pages, _seconds(timeout, "timeout"))

    def _pages(
        self,
        page_size: int | None,
        status: BatchTaskStatus | int | str | None,
        timeout: float | None,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        # Arguments are checked here, when the listing is asked for, not at its first step.
        states = states_for_filter(status)
        size = _page_size(page_size)
        request_timeout = _seconds(timeout, "timeout")

        async def pages() -> AsyncIterator[list[dict[str, Any]]]:
            pager = _Pager(size)
            while not pager.done:
                op = with_timeout(list_page(states, pager.limit, pager.cursor), request_timeout)
                page = await self._runner.run(op)
                batches = pager.take(page)
                if batches:
                    yield batches

        return pages()

    async def _operations(
        self, pages: AsyncIterator[list[dict[str, Any]]]
    ) -> AsyncIterator[AsyncBatchTaskOperation]:
        async for batches in pages:
            for data in batches:
                yield AsyncBatchTaskOperation(str(data["id"]), self._runner)

    async def _infos(
        self, pages: AsyncIterator[list[dict[str, Any]]], timeout: float | None
    ) -> AsyncIterator[BatchTaskInfo]:
        async for batches in pages:
            for data in batches:
                yield await self._runner.run(with_timeout(read_task_info(data), timeout))


def _page_size(value: int | None) -> int:
    if value is None or value == 0:  # 0: the server's default, as the task API has it
        return DEFAULT_PAGE_SIZE
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PAGE_SIZE:
        raise UsageError(
            f"page_size must be a whole number from 1 to {MAX_PAGE_SIZE}, not {value!r}."
        )
    return value
