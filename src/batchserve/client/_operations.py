"""Batches as batch-task operations: :class:`BatchTaskOperation`, and
:class:`AsyncBatchTaskOperation` for an asyncio client, with their results.

What each call does is written once, in :class:`_TaskOperation`, as a sans-IO operation (see
``_wire.py``) that checks its arguments, limits its requests to the call's ``timeout`` and, for
``wait``, bounds the whole wait by ``poll_timeout``. The blocking and the asyncio classes only
run those operations with their client's runner, one line per method. The batch domain that
hands the operations out (``client.batch``) is in ``_batchtasks.py``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any, Generic, TypeVar, cast

from batchserve.client import _ops
from batchserve.client._async_responses import AsyncBatchResponse, AsyncServiceResponse
from batchserve.client._batch import poll_batch
from batchserve.client._responses import BatchResponse, ServiceResponse
from batchserve.client._runner import AsyncRunner, Runner, SyncRunner
from batchserve.client._taskinfo import (
    BatchTaskErrorsInfo,
    BatchTaskInfo,
    BatchTaskStatus,
    errors_info,
    task_info,
)
from batchserve.client._twins import arun
from batchserve.client._wire import Op, Request, Response
from batchserve.errors import UsageError, WaitTimeout

T = TypeVar("T")

#: Seconds a request may take unless a call says otherwise (``timeout=``).
DEFAULT_TIMEOUT = 60.0
#: How long wait() may run unless ``poll_timeout`` says otherwise (72 h, as the task API's).
DEFAULT_POLL_TIMEOUT = 72 * 3600.0
#: Seconds between polls in wait() unless ``poll_interval`` says otherwise.
DEFAULT_POLL_INTERVAL = 10.0
#: The longest the server holds a poll open (its ``wait`` parameter's limit).
MAX_LONG_POLL = 60.0


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


def positive_seconds(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UsageError(f"{what} must be a number of seconds greater than 0, not {value!r}.")
    return float(value)


# -- operations ---------------------------------------------------------------------------------


def describe(task_id: str) -> Op[dict[str, Any]]:
    return (yield from _ops.get_batch(task_id))


def read_task_info(data: dict[str, Any], base_url: str = "") -> Op[BatchTaskInfo]:
    """The task info of the batch described by ``data``, with its failed records read from the
    server when it has any (one read of its results); its locations start with ``base_url``."""
    errors = BatchTaskErrorsInfo(message=data.get("error"))
    if int(data.get("failed_item_count") or 0) > 0:
        content = yield from _ops.results_arrow(str(data["id"]))
        errors = errors_info(data.get("error"), _failed_rows(content), data.get("chunk_size"))
    return task_info(data, errors, base_url)


def _failed_rows(content: bytes) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.ipc.open_stream(pa.py_buffer(content)).read_all()
    failed = table.filter(pc.equal(table.column("status"), "failed"))
    wanted = [c for c in ("index", "error", "error_type") if c in failed.column_names]
    rows: list[dict[str, Any]] = failed.select(wanted).sort_by("index").to_pylist()
    return rows


# -- the objects --------------------------------------------------------------------------------


class BatchTaskResult(BatchResponse):
    """The results of a completed batch, from a blocking client: ``for record in result``
    streams its records (:class:`ServiceResponse`, a page at a time); ``result.to_pandas()``
    gives them as a DataFrame and ``result.export(path)`` writes them to a file."""

    def records(self, *, page_size: int = _ops.RESULTS_PAGE_SIZE) -> Iterator[ServiceResponse]:
        """Every record's result in index order, read ``page_size`` records at a time."""
        start: int | None = 0
        while start is not None:
            page = self._runner.run(_ops.results_page(self.execution_id, start, page_size))
            for raw in page["results"]:
                yield ServiceResponse(raw, self._runner, execution_id=self.execution_id)
            start = page.get("next_start")

    def __iter__(self) -> Iterator[ServiceResponse]:
        return self.records()


class AsyncBatchTaskResult(AsyncBatchResponse):
    """The results of a completed batch, from an asyncio client: ``async for record in result``
    streams its records (:class:`AsyncServiceResponse`, a page at a time), ``await
    result.to_pandas()`` gives them as a DataFrame and ``await result.export(path)`` writes
    them to a file."""

    async def records(
        self, *, page_size: int = _ops.RESULTS_PAGE_SIZE
    ) -> AsyncIterator[AsyncServiceResponse]:
        """Every record's result in index order, read ``page_size`` records at a time."""
        start: int | None = 0
        while start is not None:
            page = await arun(self._runner, _ops.results_page(self.execution_id, start, page_size))
            for raw in page["results"]:
                yield AsyncServiceResponse(raw, self._runner, execution_id=self.execution_id)
            start = page.get("next_start")

    def __aiter__(self) -> AsyncIterator[AsyncServiceResponse]:
        return self.records()


R = TypeVar("R", BatchTaskResult, AsyncBatchTaskResult)


class _TaskOperation(Generic[R]):
    """What a batch-task operation does, as sans-IO operations; :class:`BatchTaskOperation` and
    :class:`AsyncBatchTaskOperation` run them, with their client's runner.

    Each ``_name`` method checks its arguments when it is called and returns the operation.
    """

    _runner: SyncRunner | AsyncRunner
    _result_class: type[R]

    def __init__(self, task_id: str, runner: SyncRunner | AsyncRunner) -> None:
        self._task_id = task_id
        self._runner = runner

    @property
    def id(self) -> str:
        """The batch's id (its execution id)."""
        return self._task_id

    @property
    def task_id(self) -> str:
        return self._task_id

    def _get_status(self, timeout: float | None) -> Op[BatchTaskStatus]:
        return with_timeout(self._status(), positive_seconds(timeout, "timeout"))

    def _status(self) -> Op[BatchTaskStatus]:
        data = yield from describe(self._task_id)
        return BatchTaskStatus.of_state(data["state"])

    def _get_task_info(self, timeout: float | None) -> Op[BatchTaskInfo]:
        return with_timeout(self._info(), positive_seconds(timeout, "timeout"))

    def _info(self) -> Op[BatchTaskInfo]:
        data = yield from describe(self._task_id)
        return (yield from read_task_info(data, self._runner.base_url))

    def _get_result(self, timeout: float | None) -> Op[R]:
        return with_timeout(self._read_result(), positive_seconds(timeout, "timeout"))

    def _read_result(self) -> Op[R]:
        data = yield from describe(self._task_id)
        return self._result(data)

    def _result(self, data: dict[str, Any]) -> R:
        status = BatchTaskStatus.of_state(data["state"])
        if status is not BatchTaskStatus.COMPLETED:
            if status.is_failed:
                why = f": {data['error']}" if data.get("error") else ""
                what = "failed" if status is BatchTaskStatus.FAILED else "was cancelled"
                ref = data.get("service") or {}
                advice = (
                    "The records that finished before it stopped are kept: svc = "
                    f"client.get_service({ref.get('name')!r}, version={ref.get('version')!r}), "
                    f"then svc.get_batch({self._task_id!r}).results() (each awaited with an "
                    "AsyncClient)."
                )
                raise RuntimeError(
                    f"Batch {self._task_id} has no result: it {what}{why} (state "
                    f"{data['state']}). {advice}"
                )
            raise RuntimeError(
                f"Batch {self._task_id} has no result yet: it is {status.name} (state "
                f"{data['state']}, {data.get('completed_item_count')} of "
                f"{data.get('total_item_count')} records finished). Wait for it first: "
                "operation.wait()."
            )
        # Typed for the blocking runner, as every results object is (see Runner).
        return self._result_class(data, cast(Runner, self._runner), show_partial_results=False)

    def _wait(
        self, timeout: float | None, poll_timeout: float | None, poll_interval: float | None
    ) -> Op[R]:
        request_timeout = positive_seconds(timeout, "timeout")
        interval = positive_seconds(poll_interval, "poll_interval") or DEFAULT_POLL_INTERVAL
        bound = positive_seconds(poll_timeout, "poll_timeout") or DEFAULT_POLL_TIMEOUT
        # The server holds a poll open for up to ``window`` s: well inside the request timeout
        # (this call's, else the client's).
        window = min(interval, MAX_LONG_POLL)
        read_limit = request_timeout or self._runner.http.timeout.read
        if read_limit is not None:
            window = min(window, read_limit / 2)
        return with_timeout(self._poll(window, interval, bound), request_timeout)

    def _poll(self, window: float, interval: float, bound: float) -> Op[R]:
        began = time.monotonic()
        data, finished = yield from poll_batch(
            self._task_id,
            lambda data: not BatchTaskStatus.of_state(data["state"]).is_running,
            timeout=bound,
            window=window,
            interval=interval,
        )
        if finished:
            return self._result(data)
        raise WaitTimeout(
            f"Batch {self._task_id} did not finish within poll_timeout={bound:g} s "
            f"(waited {time.monotonic() - began:.1f} s): it is "
            f"{BatchTaskStatus.of_state(data['state']).name} (state {data['state']}, "
            f"{data.get('completed_item_count')} of {data.get('total_item_count')} records "
            "finished). It goes on running: wait() again, or cancel() it.",
            execution_id=self._task_id,
            state=str(data["state"]),
            timeout=bound,
        )

    def _cancel(self, timeout: float | None) -> Op[None]:
        return with_timeout(self._send(_ops.cancel_batch), positive_seconds(timeout, "timeout"))

    def _delete(self, timeout: float | None) -> Op[None]:
        return with_timeout(self._send(_ops.delete_batch), positive_seconds(timeout, "timeout"))

    def _send(self, make_op: Callable[[str], Op[Any]]) -> Op[None]:
        yield from make_op(self._task_id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._task_id}>"


def sync_runner(runner: Runner) -> SyncRunner:
    """The runner of an object of a blocking client, as what it is."""
    if not isinstance(runner, SyncRunner):
        raise TypeError(f"an object of a blocking client runs with a SyncRunner, not {runner!r}")
    return runner


class BatchTaskOperation(_TaskOperation[BatchTaskResult]):
    """A batch followed as a batch-task operation, with a blocking client: its status, info
    and result; wait for it, cancel it, delete it. The blocking twin of
    :class:`AsyncBatchTaskOperation`, with the same methods.

    Every method takes ``timeout``: the seconds each request it sends may take (a
    :class:`~batchserve.errors.TransportError` past it; None: the client's timeout).
    """

    _runner: SyncRunner
    _result_class = BatchTaskResult

    def __init__(self, task_id: str, runner: SyncRunner) -> None:
        super().__init__(task_id, runner)

    def get_status(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> BatchTaskStatus:
        """The batch's status now."""
        return self._runner.run(self._get_status(timeout))

    def get_task_info(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> BatchTaskInfo:
        """The batch's details now, its errors included (reading them reads its results once
        when it has failed records)."""
        return self._runner.run(self._get_task_info(timeout))

    def get_result(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> BatchTaskResult:
        """The results of the completed batch.

        Raises ``RuntimeError`` when the batch has no result: it failed, was cancelled, or is not
        finished yet.
        """
        return self._runner.run(self._get_result(timeout))

    def wait(
        self,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        poll_timeout: float | None = None,
        poll_interval: float | None = None,
    ) -> BatchTaskResult:
        """Wait until the batch is finished and return its result; see
        :meth:`AsyncBatchTaskOperation.wait` (past ``poll_timeout``, a ``TimeoutError``)."""
        return self._runner.run(self._wait(timeout, poll_timeout, poll_interval))

    def cancel(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Cancel the batch: no more of its records run; those finished keep their results.
        A batch already finished cannot be cancelled (:class:`~batchserve.errors.ConflictError`)."""
        return self._runner.run(self._cancel(timeout))

    def delete(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Delete the batch from the history, with its records and results (a batch still
        running is stopped first). It is gone at once, even while its data is being removed."""
        return self._runner.run(self._delete(timeout))


class AsyncBatchTaskOperation(_TaskOperation[AsyncBatchTaskResult]):
    """A batch followed as an asyncio operation: its status, info and result; wait for it,
    cancel it, delete it. ``await operation`` is ``await operation.wait()``.

    Every method takes ``timeout``: the seconds each request it sends may take (a
    :class:`~batchserve.errors.TransportError` past it; None: the client's timeout).
    """

    _runner: AsyncRunner
    _result_class = AsyncBatchTaskResult

    def __init__(self, task_id: str, runner: AsyncRunner) -> None:
        super().__init__(task_id, runner)

    async def get_status(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> BatchTaskStatus:
        """The batch's status now."""
        return await self._runner.run(self._get_status(timeout))

    async def get_task_info(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> BatchTaskInfo:
        """The batch's details now, its errors included (reading them reads its results once
        when it has failed records)."""
        return await self._runner.run(self._get_task_info(timeout))

    async def get_result(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> AsyncBatchTaskResult:
        """The results of the completed batch.

        Raises ``RuntimeError`` when the batch has no result: it failed, was cancelled, or is not
        finished yet.
        """
        return await self._runner.run(self._get_result(timeout))

    async def wait(
        self,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        poll_timeout: float | None = None,
        poll_interval: float | None = None,
    ) -> AsyncBatchTaskResult:
        """Wait until the batch is finished and return its result (see :meth:`get_result`: a
        failed or cancelled batch raises ``RuntimeError``).

        Each poll asks the server to answer as soon as the batch finishes, or after
        ``poll_interval`` seconds (default 10), so the wait ends as soon as the batch does.
        ``poll_timeout`` (default 72 hours) bounds the whole wait: past it,
        ``asyncio.TimeoutError`` (a :class:`~batchserve.errors.WaitTimeout`) is raised, naming
        the batch and how long it waited, and the batch goes on. ``timeout`` bounds each request.
        """
        return await self._runner.run(self._wait(timeout, poll_timeout, poll_interval))

    def __await__(self) -> Generator[Any, None, AsyncBatchTaskResult]:
        return self.wait().__await__()

    async def cancel(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Cancel the batch: no more of its records run; those finished keep their results.
        A batch already finished cannot be cancelled (:class:`~batchserve.errors.ConflictError`)."""
        await self._runner.run(self._cancel(timeout))

    async def delete(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Delete the batch from the history, with its records and results (a batch still
        running is stopped first). It is gone at once, even while its data is being removed."""
        await self._runner.run(self._delete(timeout))
