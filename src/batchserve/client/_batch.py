"""A batch execution of a service over a set of records (ML Server's ``Batch``).

``Service.batch(records)`` only prepares the upload; nothing exists on the server until
:meth:`Batch.start`, which streams the records and gives the batch its ``execution_id``.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from batchserve.client import _ops
from batchserve.client._jobinfo import BatchJobInfo, job_info
from batchserve.client._records import RecordsBody
from batchserve.client._responses import BatchResponse, ServiceResponse, export_results
from batchserve.client._wire import Op, sleep
from batchserve.errors import UsageError, WaitTimeout
from batchserve.states import BatchState

if TYPE_CHECKING:
    from batchserve.client._service import Service

T = TypeVar("T")


#: Seconds the server may hold a wait() poll open.
LONG_POLL = 10.0


def seconds(value: float | timedelta | None, option: str) -> float | None:
    """A time limit given as seconds or a ``timedelta``, as seconds; UsageError if not > 0."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UsageError(
            f"{option} must be a number of seconds (or a timedelta) greater than 0, not {value!r}."
        )
    return float(value)


def retry_count(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise UsageError(
            "max_task_retry_count must be 0 (no retry), a number of retries, or -1 (no limit), "
            f"not {value!r}."
        )
    return value


class Batch:
    """A batch execution: start it, follow it, read its results and artifacts, cancel it."""

    #: The batch states, so that ``batch.STATE.complete`` reads as it does with ML Server.
    STATE = BatchState

    def __init__(
        self,
        service: Service,
        body: RecordsBody | None,
        *,
        records: Any = None,
        parallel_count: int = 10,
        chunk_size: int | None = None,
        options: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.service = service
        self.records = records  #: the records as given to ``Service.batch`` (None when fetched)
        self.parallel_count = parallel_count
        self.chunk_size = chunk_size
        self.options = dict(options or {})  #: priority, display_name, metadata, environment
        self.data = (
            info  #: the batch as the server last described it (``BatchPublic`` JSON), or None
        )
        self._body = body
        self._runner = service._runner

    @property
    def execution_id(self) -> str | None:
        """The batch's id on the server; None until :meth:`start`."""
        return None if self.data is None else str(self.data["id"])

    @property
    def state(self) -> BatchState | None:
        """The state when the server was last asked (see :meth:`refresh`); None before start."""
        return None if self.data is None else BatchState(self.data["state"])

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Batch:
        """Upload the records and start the batch; a batch already started is left alone."""
        return self._runner.run(self._start())

    def _start(self) -> Op[Batch]:
        if self.data is None:
            if self._body is None:
                raise UsageError("This batch has no records to start with.")
            self.data = yield from _ops.create_batch(
                self.service.name,
                self.service.version,
                self._body,
                parallel_count=self.parallel_count,
                chunk_size=self.chunk_size,
                options=self.options,
            )
        elif self.state is BatchState.CREATED:
            # Created without starting (through the REST API): starting is what is asked.
            self.data = yield from _ops.start_batch(self._require_id())
        return self

    def refresh(self) -> Batch:
        """Read the batch's current state and counts from the server; returns the batch."""
        return self._runner.run(self._refresh())

    def _refresh(self) -> Op[Batch]:
        self.data = yield from _ops.get_batch(self._require_id())
        return self

    def cancel(self) -> BatchResponse:
        """Stop the batch; records already finished keep their results."""
        return self._runner.run(self._cancel())

    def _cancel(self) -> Op[BatchResponse]:
        self.data = yield from _ops.cancel_batch(self._require_id())
        return self._response(self.data, show_partial_results=True)

    def terminate(self, reason: str | None = None) -> BatchResponse:
        """Stop the batch, recording ``reason`` (default ``UserTerminate``) as its
        termination reason; records already finished keep their results."""
        return self._runner.run(self._terminate(reason))

    def _terminate(self, reason: str | None) -> Op[BatchResponse]:
        self.data = yield from _ops.terminate_batch(self._require_id(), reason)
        return self._response(self.data, show_partial_results=True)

    def disable(self, disable_tasks: str = "requeue") -> Batch:
        """Pause the batch: none of its chunks starts until :meth:`enable`.

        ``disable_tasks`` says what happens to chunks running now: ``"requeue"`` stops them
        and queues them again (their records run again later), ``"terminate"`` stops them and
        fails their unfinished records, ``"wait"`` lets them finish. The batch is ``pausing``
        until none runs, then ``paused``.
        """
        if disable_tasks not in ("requeue", "terminate", "wait"):
            raise UsageError(
                f"disable_tasks must be 'requeue', 'terminate' or 'wait', not {disable_tasks!r}."
            )
        return self._runner.run(self._set(_ops.disable_batch, disable_tasks))

    def enable(self) -> Batch:
        """Let a paused batch run again."""
        return self._runner.run(self._set(_ops.enable_batch))

    def _set(self, make_op: Callable[..., Op[dict[str, Any]]], *args: Any) -> Op[Batch]:
        self.data = yield from make_op(self._require_id(), *args)
        return self

    def info(self) -> BatchJobInfo:
        """The batch as an Azure Batch ``BatchJob``-shaped object, read from the server now
        (``as_dict(exclude_readonly=False)`` gives plain values)."""
        return self._runner.run(self._info())

    def _info(self) -> Op[BatchJobInfo]:
        self.data = yield from _ops.get_batch(self._require_id())
        return job_info(self.data, self._runner.base_url)

    @property
    def etag(self) -> str | None:
        """The batch's etag when the server was last asked (for ``update(if_match=...)``)."""
        return None if self.data is None else str(self.data["etag"])

    def update(
        self,
        *,
        priority: int | None = None,
        parallel_count: int | None = None,
        metadata: dict[str, str] | None = None,
        max_failed_records: int | None = None,
        max_wall_clock_time: float | timedelta | None = None,
        max_task_retry_count: int | None = None,
        if_match: str | None = None,
    ) -> Batch:
        """Change settings of the running batch; returns the batch, refreshed.

        With ``if_match`` (an :attr:`etag`) the change is made only if nobody changed the batch
        since; otherwise :class:`~batchserve.errors.PreconditionFailedError` is raised.
        """
        changes = {
            k: v
            for k, v in {
                "priority": priority,
                "parallel_count": parallel_count,
                "metadata": metadata,
                "max_failed_records": max_failed_records,
                "max_wall_clock_time": seconds(max_wall_clock_time, "max_wall_clock_time"),
                "max_task_retry_count": retry_count(max_task_retry_count),
            }.items()
            if v is not None
        }
        return self._runner.run(self._update(changes, if_match))

    def _update(self, changes: dict[str, Any], if_match: str | None) -> Op[Batch]:
        self.data = yield from _ops.update_batch(self._require_id(), changes, if_match)
        return self

    def export_results(
        self, path: str | os.PathLike[str], columns: Sequence[str] | None = None
    ) -> str:
        """Write the batch's finished results to ``path``: one row per record with its index,
        id (when the batch has an ``id_column``), status, outputs and error, in index order.

        The format is the extension's: ``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``, ``.arrow``
        (Arrow IPC file) or ``.arrows`` (Arrow IPC stream). ``columns`` keeps only these result
        columns, in this order: ``index``, ``id``, ``status``, the outputs by name, ``error``,
        ``error_type``, ``console_output``, ``attempts``, ``duration_ms`` (an output named like
        one of these is ``output_<name>``). The results are streamed from the server into the
        file, never all held in memory. Returns the path.
        """
        return self._runner.run(self._export_results(Path(path), columns))

    def _export_results(self, path: Path, columns: Sequence[str] | None) -> Op[str]:
        return (yield from export_results(self._require_id(), path, columns))

    def iter_results(self, page_size: int = _ops.RESULTS_PAGE_SIZE) -> Iterator[ServiceResponse]:
        """The finished records' results in index order, read from the server ``page_size`` at a
        time as the iteration reaches them (records not finished yet are skipped).

        With an asyncio client this is an asynchronous iterator (``async for``).
        """
        if not isinstance(page_size, int) or not 1 <= page_size <= 100_000:
            raise UsageError(
                f"page_size must be a whole number from 1 to 100000, not {page_size!r}."
            )
        execution_id = self._require_id()
        if inspect.iscoroutinefunction(self._runner.run):
            return self._aiter_results(execution_id, page_size)  # type: ignore[return-value]
        return self._iter_results(execution_id, page_size)

    def _iter_results(self, execution_id: str, page_size: int) -> Iterator[ServiceResponse]:
        start: int | None = 0
        while start is not None:
            page = self._runner.run(_ops.results_page(execution_id, start, page_size))
            for raw in page["results"]:
                yield ServiceResponse(raw, self._runner, execution_id=execution_id)
            start = page["next_start"]

    async def _aiter_results(
        self, execution_id: str, page_size: int
    ) -> AsyncIterator[ServiceResponse]:
        start: int | None = 0
        while start is not None:
            page = await self._runner.run(  # type: ignore[misc]
                _ops.results_page(execution_id, start, page_size)
            )
            for raw in page["results"]:
                yield ServiceResponse(raw, self._runner, execution_id=execution_id)
            start = page["next_start"]

    def delete(self) -> None:
        """Remove the batch and its results from the server (stopping it first if it runs). It is
        gone at once, even while its data is being removed."""
        return self._runner.run(self._with_id(_ops.delete_batch))

    # -- results ----------------------------------------------------------------------------

    def results(self, show_partial_results: bool = True) -> BatchResponse:
        """A snapshot of the batch's state and counts, giving access to its records' results.

        With ``show_partial_results=False``, records can be read only once the batch is finished.
        """
        return self._runner.run(self._results(show_partial_results))

    def _results(self, show_partial_results: bool) -> Op[BatchResponse]:
        self.data = yield from _ops.get_batch(self._require_id())
        return self._response(self.data, show_partial_results=show_partial_results)

    def wait(self, timeout: float | None = None, poll_interval: float = 0.5) -> BatchResponse:
        """Poll until the batch is finished and return its final :class:`BatchResponse`.

        Raises :class:`~batchserve.errors.WaitTimeout` (a ``TimeoutError``) when ``timeout``
        seconds pass first; the batch itself goes on.
        """
        return self._runner.run(self._wait(timeout, poll_interval))

    def _wait(self, timeout: float | None, poll_interval: float) -> Op[BatchResponse]:
        execution_id = self._require_id()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # The server holds the request until the batch finishes (at most LONG_POLL s), so
            # wait() returns as soon as the batch is done rather than at the next poll.
            window = LONG_POLL if deadline is None else max(0.0, deadline - time.monotonic())
            before = time.monotonic()
            self.data = yield from _ops.get_batch(execution_id, wait=min(window, LONG_POLL))
            state = BatchState(self.data["state"])
            if state.is_final:
                return self._response(self.data, show_partial_results=True)
            if deadline is not None and time.monotonic() >= deadline:
                assert timeout is not None
                done = self.data.get("completed_item_count")
                total = self.data.get("total_item_count")
                raise WaitTimeout(
                    f"Batch {execution_id} did not finish within {timeout} s (state {state}, "
                    f"{done} of {total} records finished). It goes on running: call wait() "
                    "again, or cancel() it.",
                    execution_id=execution_id,
                    state=state.value,
                    timeout=timeout,
                )
            # A server that answered early (an older one, or a proxy) is polled at poll_interval.
            pause = poll_interval - (time.monotonic() - before)
            if deadline is not None:
                pause = min(pause, deadline - time.monotonic())
            if pause > 0:
                yield from sleep(pause)

    def _response(self, info: dict[str, Any], *, show_partial_results: bool) -> BatchResponse:
        return BatchResponse(
            info,
            self._runner,
            outputs=list(self.service.outputs),
            show_partial_results=show_partial_results,
        )

    # -- artifacts --------------------------------------------------------------------------

    def list_artifacts(self, index: int) -> list[str]:
        """The names of the files record ``index`` produced."""
        return self._runner.run(self._with_id(_ops.list_artifacts, index))

    def artifact(self, index: int, file_name: str) -> bytes:
        """The bytes of the file ``file_name`` of record ``index``."""
        return self._runner.run(self._with_id(_ops.artifact, index, file_name))

    def download(
        self, index: int, file_name: str | None = None, destination: str | Path = "."
    ) -> list[str]:
        """Save one artifact of record ``index`` (or all of them when ``file_name`` is None)
        into the existing directory ``destination``; returns the paths written."""
        return self._runner.run(self._download(index, file_name, Path(destination)))

    def _download(self, index: int, file_name: str | None, destination: Path) -> Op[list[str]]:
        execution_id = self._require_id()
        if not destination.is_dir():
            raise UsageError(
                f"The download destination '{destination}' does not exist or is not a directory; "
                "create it first."
            )
        names = (
            [file_name]
            if file_name is not None
            else (yield from _ops.list_artifacts(execution_id, index))
        )
        paths = []
        for name in names:
            # Only the last part of a name is used, so a name can never write outside destination.
            safe_name = Path(name).name
            if safe_name in ("", ".", ".."):
                raise UsageError(f"Cannot save an artifact named {name!r} as a file.")
            target = destination / safe_name
            yield from _ops.download_artifact(execution_id, index, name, target)
            paths.append(str(target))
        return paths

    def _with_id(self, make_op: Callable[..., Op[T]], *args: Any) -> Op[T]:
        # Inside the operation, so that "not started" is raised where the result is awaited.
        return (yield from make_op(self._require_id(), *args))

    def _require_id(self) -> str:
        if self.data is None:
            raise UsageError("This batch has not been started: call batch.start() first.")
        return str(self.data["id"])

    def __repr__(self) -> str:
        where = f"{self.service.name}/{self.service.version}"
        if self.data is None:
            source = self._body.source if self._body is not None else "no records"
            return f"<Batch of {where}, not started ({source})>"
        return f"<Batch {self.execution_id} of {where} state={self.state}>"
