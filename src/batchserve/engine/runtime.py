"""The service runtime, inside a worker process: run records, write results and artifacts.

This module is what worker processes import; it never touches the metadata store. A chunk's
inputs come from its Arrow file in the blob store; its results go to a result stream file and
its artifacts under the batch's folder; the scheduler only hears counts and statistics.

Row mode has two paths with the same results. A service without artifacts runs its records in
one tight loop (:meth:`Runtime._run_rows`): the chunk's columns are read as Python lists once,
the function is called with positional arguments where its signature allows, outputs of the
declared type pass a type test (others go through :func:`~batchserve.schema.coerce`), one
stdout for the whole chunk keeps what each record prints, and results are written as columns.
A service with artifacts needs a working directory per record, so its records run one by one
through :meth:`Runtime.run_record`.

A record whose call raises is tried again in place while the batch's ``max_task_retry_count``
allows, and each try may run ``task_timeout`` seconds (:class:`TryLimits`).
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import numpy as np
import pyarrow as pa

from batchserve.blobs import BlobNotFound, BlobStore
from batchserve.engine import bundles
from batchserve.engine.results import STATUS_SUCCEEDED, ResultWriter, failed_row
from batchserve.engine.tasks import ChunkTask, ConsumeTask, ServiceSpec
from batchserve.schema import (
    ARROW_TYPES,
    INT64_MAX,
    INT64_MIN,
    SchemaError,
    coerce,
    coerce_record,
)

MAX_CONSOLE_CHARS = 64 * 1024
FLUSH_INTERVAL = 0.02  # seconds of finished records a stopped chunk may lose at most


def artifact_key(batch_id: str, index: int, name: str) -> str:
    return f"batches/{batch_id}/artifacts/{index}/{name}"


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """Set a batch's environment variables for the service code, and put back the old ones."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- tries ---------------------------------------------------------------------------------


class TaskTimeout(BaseException):
    """A try ran past the batch's ``task_timeout``.

    A BaseException (as KeyboardInterrupt is), so that service code catching Exception does
    not swallow it.
    """


class TryLimits:
    """How long one try of a record (or of a vectorized call) may run, and how often it runs.

    It also counts what the tries of a task came to (``retried``, ``timed_out``). The time
    limit is a SIGALRM timer whose handler raises :class:`TaskTimeout` in the main thread, where
    workers run their tasks: it stops Python code, not a long call into native code (the
    scheduler kills a worker stuck that way). Use it as a context manager around a task: the
    handler is installed on entry and the previous one put back on exit. Without a limit, or
    off the main thread (where signals cannot be handled), :meth:`limit` adds nothing.
    """

    def __init__(
        self, max_retries: int = 0, timeout: float | None = None, what: str = "record"
    ) -> None:
        self.max_retries = max_retries  # -1: until it succeeds
        self.timeout = timeout if timeout and timeout > 0 else None
        self.retried = 0  # tries after the first
        self.timed_out = 0  # tries stopped by the time limit
        self._message = (
            f"the {what} ran longer than the task_timeout of {timeout:g} s and was stopped"
            if self.timeout
            else ""
        )
        self._active = False
        self._armed = False
        self._previous: Any = None

    def __enter__(self) -> TryLimits:
        if self.timeout is not None and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGALRM, self._ring)
            self._active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._armed = False
            self._active = False
            signal.signal(signal.SIGALRM, self._previous or signal.SIG_DFL)

    def _ring(self, signum: int, frame: FrameType | None) -> None:
        # A signal that arrives after its try ended (the timer is cleared right after the call,
        # but the handler runs between bytecodes) finds the limit disarmed and does nothing.
        if self._armed:
            self._armed = False
            raise TaskTimeout(self._message)

    def limit(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """``call``, stopped by :class:`TaskTimeout` when a call of it runs past the limit."""
        if not self._active or self.timeout is None:
            return call
        seconds = self.timeout

        def limited(*args: Any) -> Any:
            self._armed = True
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                return call(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                self._armed = False

        return limited

    def note(self, error: BaseException) -> None:
        """A try failed with ``error``."""
        if isinstance(error, TaskTimeout):
            self.timed_out += 1

    def again(self, tries: int, error: BaseException) -> bool:
        """Whether a record whose ``tries``-th try failed with ``error`` is tried once more.

        Schema and bundle errors are not: another try would fail the same way.
        """
        self.note(error)
        if isinstance(error, (SchemaError, bundles.BundleError)):
            return False
        if self.max_retries != -1 and tries > self.max_retries:
            return False
        self.retried += 1
        return True


def _failure(error: BaseException) -> tuple[str, str]:
    """A failed try as the result row's ``error`` and ``error_type``."""
    return str(error) or repr(error), type(error).__name__


# --- what records print --------------------------------------------------------------------


def _console_text(text: str) -> str:
    if len(text) > MAX_CONSOLE_CHARS:
        return text[:MAX_CONSOLE_CHARS] + "\n[console output truncated]\n"
    return text


class _Console(io.TextIOBase):
    """``sys.stdout`` while a chunk's records run: keeps what each record prints.

    One stream for the whole chunk instead of a redirect per record; what is written goes to
    the record running at the time, which the chunk's results know.
    """

    def __init__(self, results: _RowResults) -> None:
        super().__init__()
        self._results = results
        self._texts: dict[int, list[str]] = {}
        self._sizes: dict[int, int] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        record = self._results.running()
        size = self._sizes.get(record, 0)
        if size <= MAX_CONSOLE_CHARS:  # past the limit the text is cut anyway
            self._texts.setdefault(record, []).append(text)
            self._sizes[record] = size + len(text)
        return len(text)

    def forget(self, record: int) -> None:
        """A record tried again: its console output is that of its last try."""
        self._texts.pop(record, None)
        self._sizes.pop(record, None)

    def take(self) -> dict[int, str]:
        """What each record printed since the last take, by chunk offset."""
        texts = {r: _console_text("".join(parts)) for r, parts in self._texts.items()}
        self._texts.clear()
        self._sizes.clear()
        return texts


# --- checking values -----------------------------------------------------------------------


def _input_columns(
    table: pa.Table, inputs: dict[str, str]
) -> tuple[dict[str, list[Any]], dict[int, SchemaError]]:
    """Each input's values for the chunk's records, and the records whose inputs do not fit.

    A column of the declared Arrow type without nulls is taken as it is; others are checked
    value by value. A record's error is that of its first input (in declared order) that does
    not fit, as :func:`~batchserve.schema.coerce_record` reports.
    """
    columns: dict[str, list[Any]] = {}
    bad: dict[int, SchemaError] = {}
    for name, type_name in inputs.items():
        if name in table.column_names:
            column = table.column(name)
            if column.type == ARROW_TYPES[type_name] and column.null_count == 0:
                # numpy makes Python numbers from a column several times faster than Arrow.
                columns[name] = (
                    column.to_pylist() if type_name == "str" else column.to_numpy().tolist()
                )
                continue
            raw = column.to_pylist()
        else:
            raw = [None] * table.num_rows
        values: list[Any] = []
        for offset, value in enumerate(raw):
            try:
                values.append(coerce(value, type_name, name))
            except SchemaError as exc:
                values.append(None)
                bad.setdefault(offset, exc)
        columns[name] = values
    return columns, bad


_PYTHON_TYPES: dict[str, type] = {"float": float, "int": int, "str": str, "bool": bool}


def _fits_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX


# Checks beyond the exact type that coerce makes of an output: an int must fit the results'
# int64, and text must encode as UTF-8 (ASCII text always does).
_FURTHER_CHECKS: dict[str, Callable[[Any], bool]] = {"int": _fits_int64, "str": str.isascii}


class _NoFastTest:
    """The exact type of no value: outputs are always checked in full."""


class _OutputCheck:
    """Checks what a service returned for one record against its outputs.

    The rules are those of ``coerce(value, type, name, kind="output")``, which a value of the
    exact declared type passes unchanged (an int within int64, ASCII text): such values skip
    the call. Called with the returned value, it gives the single output's value or a tuple of
    every output's value, or raises :class:`SchemaError`. For a single output the caller may
    test ``exact_type`` and ``further`` itself and skip the call altogether.
    """

    def __init__(self, service: bundles.LoadedService, outputs: dict[str, str]) -> None:
        self._values = service.output_values
        self._outputs = [
            (name, type_name, _PYTHON_TYPES[type_name], _FURTHER_CHECKS.get(type_name))
            for name, type_name in outputs.items()
        ]
        self.single = len(self._outputs) == 1
        self.exact_type: type = self._outputs[0][2] if self.single else _NoFastTest
        self.further = self._outputs[0][3] if self.single else None
        self.null: Any = None if self.single else (None,) * len(self._outputs)

    def __call__(self, returned: Any) -> Any:
        checked = tuple(
            value
            if type(value) is exact and (further is None or further(value))
            else coerce(value, type_name, name, kind="output")
            for (name, type_name, exact, further), value in zip(
                self._outputs, self._values(returned), strict=True
            )
        )
        return checked[0] if self.single else checked


# --- row mode ------------------------------------------------------------------------------


class _RowResults:
    """The results of a chunk's records not yet written, kept as columns until a flush."""

    def __init__(self, task: ChunkTask, single_output: bool) -> None:
        self.task = task
        self.single = single_output
        self.first = 0  # chunk offset of the first record held
        self.started = 0.0  # perf_counter() when the first record held started
        self.outputs: list[Any] = []  # per record: its output's value, or a tuple of them
        self.ends: list[float] = []  # per record: perf_counter() when it ended
        self.failures: dict[int, tuple[str, str]] = {}  # by chunk offset
        self.retries: dict[int, int] = {}  # tries after the first, by chunk offset
        self.succeeded = self.failed = 0  # of the records written

    def running(self) -> int:
        """The chunk offset of the record running now (the loop keeps no counter)."""
        return self.first + len(self.ends)

    def write(self, writer: ResultWriter, consoles: dict[int, str]) -> None:
        count = len(self.ends)
        if not count:
            return
        first = self.first
        # A record's duration is the time from the end of the one before it: one clock
        # reading per record.
        durations = np.diff(np.array(self.ends), prepend=self.started) * 1000.0
        columns = (
            [self.outputs] if self.single else [list(c) for c in zip(*self.outputs, strict=True)]
        )
        writer.add_columns(
            self.task.start_index + first,
            columns,
            durations,
            self.task.attempt,
            failures={offset - first: f for offset, f in self.failures.items()},
            consoles={offset - first: text for offset, text in consoles.items()},
            retries={offset - first: n for offset, n in self.retries.items()},
        )
        self.failed += len(self.failures)
        self.succeeded += count - len(self.failures)
        self.first += count
        self.started = self.ends[-1]
        # Cleared in place: the loop holds their bound append methods.
        self.outputs.clear()
        self.ends.clear()
        self.failures.clear()
        self.retries.clear()


def _refusing_bad_inputs(
    call: Callable[..., Any], bad: dict[int, SchemaError], results: _RowResults
) -> Callable[..., Any]:
    """``call``, but raising the input error of a record whose inputs do not fit instead."""

    def refusing(*values: Any) -> Any:
        error = bad.get(results.running())
        if error is not None:
            raise error
        return call(*values)

    return refusing


class _Progress:
    """Flushes a chunk's results and reports its counts every ``interval`` seconds."""

    def __init__(
        self, writer: ResultWriter, report: Callable[[int, int], None], interval: float
    ) -> None:
        self.writer = writer
        self._report = report
        self.interval = interval
        self.succeeded = self.failed = 0  # of the records flushed
        self._last = time.perf_counter()

    def flushed(self, succeeded: int, failed: int) -> None:
        """Every record counted is written: make them readable, and report when it is time."""
        self.writer.flush()
        self.succeeded, self.failed = succeeded, failed
        self.beat()

    def beat(self) -> None:
        """Report the counts when it is time: a record tried again and again is no silence."""
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._report(self.succeeded, self.failed)
            self._last = now


class Runtime:
    """Loads services (once per process each) and runs records for one worker process."""

    def __init__(self, blobs: BlobStore, scratch: str | None = None, cache_size: int = 4) -> None:
        self.blobs = blobs
        self._cache: OrderedDict[str, bundles.LoadedService | bundles.BundleError] = OrderedDict()
        self._cache_size = cache_size
        self.scratch = scratch or tempfile.mkdtemp(prefix="batchserve-worker-")
        os.makedirs(self.scratch, exist_ok=True)

    def service(self, spec: ServiceSpec) -> bundles.LoadedService:
        """The loaded service; init runs on first use. A failed load is remembered and re-raised."""
        if spec.key not in self._cache:
            try:
                data = self.blobs.read_bytes(spec.bundle_key)
                self._cache[spec.key] = bundles.load(data, spec.outputs)
            except BlobNotFound:
                self._cache[spec.key] = bundles.BundleError(
                    f"the service bundle {spec.bundle_key} is missing from the blob store"
                )
            except bundles.BundleError as exc:
                self._cache[spec.key] = exc
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(spec.key)
        loaded = self._cache[spec.key]
        if isinstance(loaded, bundles.BundleError):
            raise loaded
        return loaded

    def run_record(
        self,
        spec: ServiceSpec,
        raw_inputs: dict[str, Any],
        *,
        index: int,
        artifact_sink: Callable[[int, str, bytes], None] | None,
        checked: frozenset[str] = frozenset(),
        limits: TryLimits | None = None,
        attempt: int = 1,
        heartbeat: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Run one record: check inputs, call the service, check outputs, collect artifacts.

        ``checked`` names inputs whose values are known to have the declared type already (a
        column of the declared Arrow type without nulls), which skips their per-value check.
        A failed call is tried again as ``limits`` allow, each try in a fresh working directory;
        the row holds the last try's outputs or error, console output and artifacts, and
        ``attempts``: ``attempt`` plus the tries after the first. ``heartbeat`` is called after
        each failed try.
        """
        limits = limits or TryLimits()
        started = time.perf_counter()
        try:
            if checked:
                inputs = {
                    n: raw_inputs[n] if n in checked else coerce(raw_inputs.get(n), t, n)
                    for n, t in spec.inputs.items()
                }
            else:
                inputs = coerce_record(raw_inputs, spec.inputs)
            service = self.service(spec)
        except (SchemaError, bundles.BundleError) as exc:
            row = failed_row(index, *_failure(exc), attempt, "")
            row["duration_ms"] = (time.perf_counter() - started) * 1000.0
            return row
        call = limits.limit(service.call_one_row if spec.mode == "vectorized" else service.call)
        tries = 0
        while True:
            tries += 1
            console = io.StringIO()
            workdir = tempfile.mkdtemp(dir=self.scratch) if spec.artifacts else None
            try:
                outputs = self._try_record(call, inputs, spec.outputs, console, workdir)
                error: BaseException | None = None
            except (Exception, TaskTimeout) as exc:
                error = exc
            if error is None or not limits.again(tries, error):
                break
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
            if heartbeat is not None:
                heartbeat()
        if error is None:
            row = {"index": index, "status": STATUS_SUCCEEDED, "outputs": outputs}
        else:
            row = failed_row(index, *_failure(error), attempt)
        row["attempts"] = attempt + tries - 1
        row["artifacts"] = []
        if workdir is not None:
            for name in spec.artifacts:
                path = os.path.join(workdir, name)
                if os.path.isfile(path):
                    with open(path, "rb") as f:
                        data = f.read()
                    if artifact_sink is not None:
                        artifact_sink(index, name, data)
                    row["artifacts"].append(name)
            shutil.rmtree(workdir, ignore_errors=True)
        row["console_output"] = _console_text(console.getvalue())
        row["duration_ms"] = (time.perf_counter() - started) * 1000.0
        return row

    @staticmethod
    def _try_record(
        call: Callable[[dict[str, Any]], dict[str, Any]],
        inputs: dict[str, Any],
        outputs: dict[str, str],
        console: io.StringIO,
        workdir: str | None,
    ) -> dict[str, Any]:
        cwd = os.getcwd() if workdir is not None else ""
        try:
            if workdir is not None:
                os.chdir(workdir)  # a record's files are its own
            with contextlib.redirect_stdout(console):
                raw = call(inputs)
        finally:
            if workdir is not None:
                os.chdir(cwd)
        return {n: coerce(raw.get(n), t, n, kind="output") for n, t in outputs.items()}

    def run_chunk(
        self, task: ChunkTask, report: Callable[[int, int], None], progress_interval: float = 0.25
    ) -> dict[str, Any]:
        """Run every record of a chunk; returns its counts and statistics.

        The keys are those of :class:`~batchserve.engine.tasks.Finished`: ``succeeded``,
        ``failed``, ``retried``, ``timed_out``, ``cpu_user``, ``cpu_system``, ``bytes_in``,
        ``bytes_out``. Results are flushed to the result file often (every ``FLUSH_INTERVAL``
        seconds), so a chunk stopped by a cancel keeps nearly every record it finished; the
        counts of flushed records go to ``report`` every ``progress_interval`` seconds.
        """
        spec = task.service
        usage = resource.getrusage(resource.RUSAGE_SELF)
        what = "call" if spec.mode == "vectorized" else "record"
        limits = TryLimits(task.max_task_retry_count, task.task_timeout, what)
        # Read whole, then parsed: Arrow reading a Python file object costs more than the read.
        data = self.blobs.read_bytes(task.input_key)
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        writer = ResultWriter(self.blobs.open_append_stream(task.result_key), spec.outputs)
        try:
            with _environment(task.environment), limits:
                if spec.mode == "vectorized":
                    succeeded, failed = self._run_vectorized(task, table, writer, limits)
                else:
                    progress = _Progress(writer, report, progress_interval)
                    run = self._run_records if spec.artifacts else self._run_rows
                    succeeded, failed = run(task, table, writer, limits, progress)
        finally:
            writer.close()
        spent = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "succeeded": succeeded,
            "failed": failed,
            "retried": limits.retried,
            "timed_out": limits.timed_out,
            # getrusage rather than os.times(): the same figures, in microseconds, not ticks
            "cpu_user": spent.ru_utime - usage.ru_utime,
            "cpu_system": spent.ru_stime - usage.ru_stime,
            "bytes_in": len(data),
            "bytes_out": writer.bytes_written,
        }

    def _run_rows(
        self,
        task: ChunkTask,
        table: pa.Table,
        writer: ResultWriter,
        limits: TryLimits,
        progress: _Progress,
    ) -> tuple[int, int]:
        """Row mode without artifacts: every record of the chunk in one tight loop.

        With a cheap function this loop is most of the cost of a batch, so per record it only
        calls, tests the output's type and reads the clock; the rest is done per chunk or per
        flush, or only for the rare record that fails, prints or has a bad input.
        """
        spec = task.service
        count = table.num_rows
        columns, bad = _input_columns(table, spec.inputs)
        try:
            service = self.service(spec)
        except bundles.BundleError as exc:
            for offset in range(count):
                error = bad.get(offset, exc)
                writer.add(
                    failed_row(task.start_index + offset, *_failure(error), task.attempt, "")
                )
            return 0, count
        check = _OutputCheck(service, spec.outputs)
        results = _RowResults(task, check.single)
        call, order = service.row_function(list(spec.inputs))
        call = limits.limit(call)
        if bad:
            call = _refusing_bad_inputs(call, bad, results)
        rows = (
            zip(*(columns[n] for n in order), strict=True) if order else itertools.repeat((), count)
        )
        exact_type, further = check.exact_type, check.further
        add_output, add_end = results.outputs.append, results.ends.append
        console = _Console(results)
        flush_interval = FLUSH_INTERVAL
        clock = time.perf_counter
        stdout, sys.stdout = sys.stdout, console
        try:
            results.started = last_flush = clock()
            for row in rows:
                try:
                    value = call(*row)
                    if type(value) is not exact_type or (
                        further is not None and not further(value)
                    ):
                        value = check(value)
                except (Exception, TaskTimeout) as exc:
                    value = self._try_again(
                        call, row, check, limits, exc, results, console, progress
                    )
                add_output(value)
                now = clock()
                add_end(now)
                if now - last_flush >= flush_interval:
                    results.write(writer, console.take())
                    progress.flushed(results.succeeded, results.failed)
                    last_flush = now
        finally:
            sys.stdout = stdout
        results.write(writer, console.take())
        return results.succeeded, results.failed

    @staticmethod
    def _try_again(
        call: Callable[..., Any],
        row: tuple[Any, ...],
        check: _OutputCheck,
        limits: TryLimits,
        error: BaseException,
        results: _RowResults,
        console: _Console,
        progress: _Progress,
    ) -> Any:
        """The record running now failed its first try with ``error``: try it again while the
        limits allow. Returns its outputs (``check.null`` when it failed for good)."""
        offset = results.running()
        tries = 1
        while limits.again(tries, error):
            progress.beat()
            tries += 1
            console.forget(offset)
            try:
                value = check(call(*row))
            except (Exception, TaskTimeout) as exc:
                error = exc
            else:
                results.retries[offset] = tries - 1
                return value
        if tries > 1:
            results.retries[offset] = tries - 1
        results.failures[offset] = _failure(error)
        return check.null

    def _run_records(
        self,
        task: ChunkTask,
        table: pa.Table,
        writer: ResultWriter,
        limits: TryLimits,
        progress: _Progress,
    ) -> tuple[int, int]:
        """Row mode with artifacts: records one by one, each in its own working directory."""
        spec = task.service
        columns = [c for c in spec.inputs if c in table.column_names]
        checked = frozenset(
            c
            for c in columns
            if table.schema.field(c).type == ARROW_TYPES[spec.inputs[c]]
            and table.column(c).null_count == 0
        )
        records = table.select(columns).to_pylist()

        def sink(index: int, name: str, data: bytes) -> None:
            self.blobs.write_bytes(artifact_key(task.batch_id, index, name), data)

        succeeded = failed = 0
        last_flush = time.perf_counter()
        for offset, values in enumerate(records):
            row = self.run_record(
                spec,
                values,
                index=task.start_index + offset,
                artifact_sink=sink,
                checked=checked,
                limits=limits,
                attempt=task.attempt,
                heartbeat=progress.beat,
            )
            writer.add(row)
            if row["status"] == STATUS_SUCCEEDED:
                succeeded += 1
            else:
                failed += 1
            now = time.perf_counter()
            if now - last_flush >= FLUSH_INTERVAL:
                progress.flushed(succeeded, failed)
                last_flush = now
        return succeeded, failed

    def _run_vectorized(
        self, task: ChunkTask, table: pa.Table, writer: ResultWriter, limits: TryLimits
    ) -> tuple[int, int]:
        """Call the service once per chunk with a DataFrame; isolate failing records by splitting.

        Records whose inputs fail the schema check fail alone and are left out of the frame.
        When a call raises (or runs past the time limit), the slice is halved and each half
        called again, down to single records, so only the records that make the service fail
        get an error; a single record's call is tried again as the limits allow. What a call
        prints is the console output of the first record of that call.
        """
        import pandas as pd

        spec = task.service
        rows: dict[int, dict[str, Any]] = {}
        columns, bad = _input_columns(table, spec.inputs)
        for offset, exc in bad.items():
            index = task.start_index + offset
            rows[index] = failed_row(index, str(exc), "SchemaError", task.attempt, "")
        good = [offset for offset in range(table.num_rows) if offset not in bad]
        frame = pd.DataFrame(
            {n: [columns[n][o] for o in good] if bad else columns[n] for n in spec.inputs},
            columns=list(spec.inputs),
        )
        try:
            service = self.service(spec)
        except bundles.BundleError as exc:
            for offset in good:
                index = task.start_index + offset
                rows[index] = failed_row(index, str(exc), "BundleError", task.attempt, "")
            service = None
        call_frame = limits.limit(service.call_frame) if service is not None else None

        def attempt(lo: int, hi: int, tries: int = 1) -> None:
            assert call_frame is not None
            console = io.StringIO()
            started = time.perf_counter()
            try:
                with contextlib.redirect_stdout(console):
                    out = call_frame(frame.iloc[lo:hi].reset_index(drop=True))
                checked = [
                    {n: coerce(out[n][i], t, n, kind="output") for n, t in spec.outputs.items()}
                    for i in range(hi - lo)
                ]
            except (Exception, TaskTimeout) as exc:
                if hi - lo > 1:
                    limits.note(exc)
                    mid = (lo + hi) // 2
                    attempt(lo, mid)
                    attempt(mid, hi)
                elif limits.again(tries, exc):
                    attempt(lo, hi, tries + 1)
                else:
                    index = task.start_index + good[lo]
                    rows[index] = failed_row(
                        index,
                        *_failure(exc),
                        task.attempt + tries - 1,
                        _console_text(console.getvalue()),
                    )
                return
            per_row = (time.perf_counter() - started) * 1000.0 / (hi - lo)
            text = _console_text(console.getvalue())
            for i, outputs in enumerate(checked):
                index = task.start_index + good[lo + i]
                rows[index] = {
                    "index": index,
                    "status": STATUS_SUCCEEDED,
                    "outputs": outputs,
                    "artifacts": [],
                    "console_output": text if i == 0 else "",
                    "duration_ms": per_row,
                    "attempts": task.attempt + tries - 1,
                }

        if call_frame is not None and good:
            attempt(0, len(good))
        for index in sorted(rows):
            writer.add(rows[index])
        failed = sum(1 for r in rows.values() if r["status"] != STATUS_SUCCEEDED)
        return len(rows) - failed, failed

    def run_consume(self, task: ConsumeTask) -> dict[str, Any]:
        files: dict[str, str] = {}

        def sink(index: int, name: str, data: bytes) -> None:
            files[name] = base64.b64encode(data).decode("ascii")

        row = self.run_record(task.service, task.inputs, index=0, artifact_sink=sink)
        row["artifact_data"] = files
        return row
