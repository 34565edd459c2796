"""A batch execution of a service over a set of records (ML Server's ``Batch``).

``Service.batch(records)`` only prepares the upload; nothing exists on the server until
:meth:`Batch.start`, which streams the records and gives the batch its ``execution_id``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from batchserve.client import _ops
from batchserve.client._checks import (
    check_destination,
    check_parallel_count,
    record_index,
    retry_count,
    seconds,
)
from batchserve.client._inputs import BatchRecords
from batchserve.client._jobinfo import BatchJobInfo, job_info
from batchserve.client._records import RecordsBody, records_body
from batchserve.client._responses import (
    BatchResponse,
    ServiceResponse,
    batch_url,
    export_results,
)
from batchserve.client._wire import Op, sleep
from batchserve.errors import UsageError, WaitTimeout
from batchserve.states import BatchState

if TYPE_CHECKING:
    from batchserve.client._service import Service

T = TypeVar("T")


#: Seconds the server may hold a wait() poll open.
LONG_POLL = 10.0


def poll_batch(
    execution_id: str,
    finished: Callable[[dict[str, Any]], bool],
    *,
    timeout: float | None,
    window: float,
    interval: float,
) -> Op[tuple[dict[str, Any], bool]]:
    """Read the batch until ``finished`` says so of what the server answers, or ``timeout``
    seconds (None: no limit) have passed: the last answer, and whether it was finished.

    Each read asks the server to hold its answer until the batch is finished, for at most
    ``window`` seconds (the last read, until the deadline), so the wait ends as soon as the batch
    does rather than at the next read. A server that answers early (an older one, or a proxy) is
    read again every ``interval`` seconds. ``Batch.wait`` and the batch-task operations' ``wait``
    both wait with this loop.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        before = time.monotonic()
        hold = window if deadline is None else min(window, max(0.0, deadline - before))
        data = yield from _ops.get_batch(execution_id, wait=hold)
        if finished(data):
            return data, True
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return data, False
        pause = interval - (now - before)
        if deadline is not None:
            pause = min(pause, deadline - now)
        if pause > 0:
            yield from sleep(pause)


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
        job_tasks: dict[str, tuple[bytes, str]] | None = None,
    ) -> None:
        self.service = service
        # The job preparation and release to attach before it starts: kind -> (bundle, name).
        self._job_tasks = dict(job_tasks or {})
        self._records = records
        self._stored_records: BatchRecords | None = None
        self._parallel_count = parallel_count
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

    @property
    def id_column(self) -> str | None:
        """The column of the records whose values are the results' ids, if the batch has one
        (given to :meth:`Service.batch`, or as the server describes a fetched batch)."""
        given = self.options.get("id_column")
        if given is None and self.data is not None:
            given = self.data.get("id_column")
        return None if given is None else str(given)

    @property
    def api(self) -> str | None:
        """The batch's absolute REST URL (``GET`` it for its state); None until :meth:`start`."""
        if self.data is None:
            return None
        return batch_url(self._runner.base_url, str(self.data["id"]))

    @property
    def records(self) -> Any:
        """The batch's input records: those given to :meth:`Service.batch`, or, for a batch
        found again on the server (:meth:`Service.get_batch`, a listing), a
        :class:`~batchserve.client._inputs.BatchRecords` that reads them from the server as
        they are used (``len()``, ``records[i]``, iteration, ``to_pandas()``)."""
        if self._records is not None or self.data is None:
            return self._records
        if self._stored_records is None:
            self._stored_records = BatchRecords(
                str(self.data["id"]), int(self.data.get("total_item_count") or 0), self._runner
            )
        return self._stored_records

    @property
    def parallel_count(self) -> int:
        """How many of the batch's chunks may run at once: the server's value when it was last
        asked (after :meth:`update`, :meth:`refresh`, ...), the requested one before start."""
        if self.data is not None and self.data.get("parallel_count") is not None:
            return int(self.data["parallel_count"])
        return self._parallel_count

    @parallel_count.setter
    def parallel_count(self, value: int) -> None:
        if self.data is not None:
            raise UsageError(
                "This batch has started: change its parallel count on the server with "
                f"batch.update(parallel_count={value!r})."
            )
        self._parallel_count = value

    @property
    def total_item_count(self) -> int | None:
        """The number of records, when the server was last asked; None before start."""
        return None if self.data is None else int(self.data.get("total_item_count") or 0)

    @property
    def completed_item_count(self) -> int | None:
        """Records that ran to a result, succeeded or failed (see
        :attr:`BatchResponse.completed_item_count`), when the server was last asked."""
        return None if self.data is None else int(self.data.get("completed_item_count") or 0)

    @property
    def cancelled_item_count(self) -> int | None:
        """Records given up because the batch was stopped before they finished (see
        :attr:`BatchResponse.cancelled_item_count`), when the server was last asked."""
        return None if self.data is None else int(self.data.get("cancelled_item_count") or 0)

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
                start=not self._job_tasks,  # started once they are attached
            )
            if self._job_tasks:
                yield from self._attach_job_tasks()
        elif self.state is BatchState.CREATED:
            # Created without starting (through the REST API): starting is what is asked.
            self.data = yield from _ops.start_batch(self._require_id())
        return self

    def _attach_job_tasks(self) -> Op[None]:
        """Attach the job preparation and release to the batch just created, then start it; a
        batch they cannot be attached to is deleted, so nothing is left half made."""
        execution_id = self._require_id()
        try:
            for kind, (code, name) in self._job_tasks.items():
                self.data = yield from _ops.attach_job_task(execution_id, kind, code, name)
        except BaseException:
            with contextlib.suppress(Exception):
                yield from _ops.delete_batch(execution_id)
            self.data = None
            raise
        self.data = yield from _ops.start_batch(execution_id)

    def refresh(self) -> Batch:
        """Read the batch's current state and counts from the server; returns the batch."""
        return self._runner.run(self._refresh())

    def _refresh(self) -> Op[Batch]:
        self.data = yield from _ops.get_batch(self._require_id())
        return self

    # cancel, terminate, disable, enable and update all return the batch itself, refreshed with
    # the server's answer, so that calls chain (``batch.update(priority=5).wait()``). ML Server's
    # ``cancel()`` gives a BatchResponse: ``batch.results()`` gives one here.

    def cancel(self, *, if_match: str | None = None) -> Batch:
        """Stop the batch; records already finished keep their results. Returns the batch,
        refreshed (``cancelling``, or ``cancelled`` at once when nothing of it ran); for a
        :class:`BatchResponse`, as ML Server's ``cancel()`` gives, call :meth:`results`.

        With ``if_match`` (an :attr:`etag`) the batch is cancelled only if nobody changed it
        since; otherwise :class:`~batchserve.errors.PreconditionFailedError` is raised.
        """
        return self._runner.run(self._set(_ops.cancel_batch, if_match))

    def terminate(self, reason: str | None = None, *, if_match: str | None = None) -> Batch:
        """Stop the batch, recording ``reason`` (default ``UserTerminate``) as its
        termination reason; records already finished keep their results. Returns the batch,
        refreshed; ``if_match`` as for :meth:`cancel`."""
        return self._runner.run(self._set(_ops.terminate_batch, reason, if_match))

    def disable(self, disable_tasks: str = "requeue", *, if_match: str | None = None) -> Batch:
        """Pause the batch: none of its chunks starts until :meth:`enable`. Returns the batch,
        refreshed.

        ``disable_tasks`` says what happens to chunks running now: ``"requeue"`` stops them
        and queues them again (their records run again later), ``"terminate"`` stops them and
        fails their unfinished records, ``"wait"`` lets them finish. The batch is ``pausing``
        until none runs, then ``paused``. ``if_match`` as for :meth:`cancel`.
        """
        if disable_tasks not in ("requeue", "terminate", "wait"):
            raise UsageError(
                f"disable_tasks must be 'requeue', 'terminate' or 'wait', not {disable_tasks!r}."
            )
        return self._runner.run(self._set(_ops.disable_batch, disable_tasks, if_match))

    def enable(self, *, if_match: str | None = None) -> Batch:
        """Let a paused batch run again. Returns the batch, refreshed; ``if_match`` as for
        :meth:`cancel`."""
        return self._runner.run(self._set(_ops.enable_batch, if_match))

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
        """The batch's etag when the server was last asked: pass it as ``if_match=`` to
        :meth:`update`, :meth:`cancel`, :meth:`terminate`, :meth:`disable`, :meth:`enable` or
        :meth:`delete` to change the batch only if nobody changed it since."""
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
        allow_preemption: bool | None = None,
        display_name: str | None = None,
        on_all_tasks_complete: str | None = None,
        if_match: str | None = None,
    ) -> Batch:
        """Change settings of the batch while it is not finished; returns the batch, refreshed
        (so that ``batch.update(priority=5).wait()`` chains). Settings left None stay as they
        are; ``parallel_count=-1`` lifts the limit (only the workers limit it);
        ``display_name=""`` removes the display name. ``on_all_tasks_complete="terminatejob"``
        closes an open batch, as :meth:`close` does.

        With ``if_match`` (an :attr:`etag`) the change is made only if nobody changed the batch
        since; otherwise :class:`~batchserve.errors.PreconditionFailedError` is raised.
        """
        if allow_preemption is not None and not isinstance(allow_preemption, bool):
            raise UsageError(f"allow_preemption must be True or False, not {allow_preemption!r}.")
        if display_name is not None and not isinstance(display_name, str):
            raise UsageError(f"display_name must be text, not {display_name!r}.")
        changes = {
            k: v
            for k, v in {
                "priority": priority,
                "parallel_count": check_parallel_count(parallel_count),
                "allow_preemption": allow_preemption,
                "display_name": display_name,
                "on_all_tasks_complete": on_all_tasks_complete,
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

    def add(self, records: Any, *, format: str | None = None) -> range:
        """Add ``records`` (any records :meth:`Service.batch` takes) to this open batch, while
        it waits or runs; returns their indices, the batch's next ones. Raises
        :class:`~batchserve.errors.ConflictError` when the batch is not open, was closed, or is
        finished."""
        body = records_body(records, self.service.inputs, id_column=self.id_column, format=format)
        return self._runner.run(self._add(body))

    def _add(self, body: RecordsBody) -> Op[range]:
        added = yield from _ops.add_records(self._require_id(), body)
        self.data = added["batch"]
        first = int(added["first_index"])
        return range(first, first + int(added["count"]))

    def close(self, *, if_match: str | None = None) -> Batch:
        """Close this open batch: it takes no more records, and completes once they are all done
        (Azure Batch's ``on_all_tasks_complete`` becoming ``terminatejob``). Returns the batch,
        refreshed; ``if_match`` as for :meth:`cancel`. Closing a batch that is not open changes
        nothing."""
        return self._runner.run(self._set(_ops.close_batch, if_match))

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

    def delete(self, *, if_match: str | None = None) -> None:
        """Remove the batch and its results from the server (stopping it first if it runs). It is
        gone at once, even while its data is being removed. ``if_match`` as for :meth:`cancel`."""
        return self._runner.run(self._with_id(_ops.delete_batch, if_match))

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
        self.data, finished = yield from poll_batch(
            execution_id,
            lambda data: BatchState(data["state"]).is_final,
            timeout=timeout,
            window=LONG_POLL,
            interval=poll_interval,
        )
        if finished:
            return self._response(self.data, show_partial_results=True)
        assert timeout is not None
        state = BatchState(self.data["state"])
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
        self,
        index: int,
        file_name: str | None = None,
        destination: str | Path = ".",
        *,
        per_record: bool = False,
    ) -> list[str]:
        """Save one artifact of record ``index`` (or all of them when ``file_name`` is None)
        into the existing directory ``destination``; returns the paths written.

        Records' files often share names (every record writes ``Histogram.png``): with
        ``per_record=True`` they go to ``destination/<index>/<name>`` instead, the layout of
        :meth:`download_all`, so that one record's files never overwrite another's.
        """
        return self._runner.run(self._download(index, file_name, Path(destination), per_record))

    def _download(
        self, index: int, file_name: str | None, destination: Path, per_record: bool = False
    ) -> Op[list[str]]:
        execution_id = self._require_id()
        index = record_index(index)
        check_destination(destination)
        names = (
            [file_name]
            if file_name is not None
            else (yield from _ops.list_artifacts(execution_id, index))
        )
        return (yield from self._save(execution_id, index, names, destination, per_record))

    def download_all(self, destination: str | Path = ".") -> list[str]:
        """Save the files of every record that has a final result as
        ``destination/<index>/<name>`` (``destination`` must exist; the record folders are
        made); returns the paths written, in index order.

        The records' results are read a page at a time, and their files one at a time, so a
        batch of any size is saved without holding it in memory. Records still running are
        left out: call it once the batch is finished (:meth:`wait`) to have them all.
        """
        return self._runner.run(self._download_all(Path(destination)))

    def _download_all(self, destination: Path) -> Op[list[str]]:
        execution_id = self._require_id()
        check_destination(destination)
        paths: list[str] = []
        start: int | None = 0
        while start is not None:
            page = yield from _ops.results_page(execution_id, start)
            for raw in page["results"]:
                names = [str(name) for name in raw.get("artifacts") or []]
                if names:
                    index = int(raw["index"])
                    paths += yield from self._save(execution_id, index, names, destination, True)
            start = page["next_start"]
        return paths

    def _save(
        self, execution_id: str, index: int, names: list[str], destination: Path, per_record: bool
    ) -> Op[list[str]]:
        folder = destination / str(index) if per_record else destination
        paths = []
        for name in names:
            # Only the last part of a name is used, so a name can never write outside destination.
            safe_name = Path(name).name
            if safe_name in ("", ".", ".."):
                raise UsageError(f"Cannot save an artifact named {name!r} as a file.")
            folder.mkdir(exist_ok=True)
            target = folder / safe_name
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
