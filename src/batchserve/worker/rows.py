"""Row mode's chunk loop: every record of a chunk, with as little work per record as can be.

With a cheap function, batchserve's own work per record is most of the cost of a batch, so
:func:`run_rows` does per record only what a record needs: the call. Records run in blocks,
each block one ``list.extend(map(function, *columns))``, a loop in C that keeps the outputs of
the records before one that raises, so that record alone takes the slow path (its retries and
its error) and the block goes on after it. The chunk's columns are read as Python lists once;
the function is called with positional arguments where its signature allows; a block's outputs
of the exact declared type pass with one test over the block (others go through
:func:`~batchserve.schema.coerce`); one stdout for the whole chunk keeps what each record
prints; results are written as columns at each flush.

Blocks grow from one record to ``MAX_BLOCK`` while a block takes less than ``BLOCK_SECONDS``, and
shrink when one takes longer. A record's ``duration_ms`` is its block's time over its records:
records slower than about ``BLOCK_SECONDS`` run in blocks of one and are timed one by one;
faster ones are timed in blocks, where a clock reading per record would cost more than the
record.

Services with artifacts need a working directory per record and run record by record instead
(:meth:`batchserve.worker.runtime.Runtime.run_record`), with the same results.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from batchserve.engine.results import ResultWriter, failed_row
from batchserve.engine.tasks import ChunkTask
from batchserve.schema import ARROW_TYPES, INT64_MAX, INT64_MIN, SchemaError, coerce
from batchserve.worker.bundles import BundleError, LoadedService
from batchserve.worker.tries import TaskTimeout, TryLimits, describe_failure

MAX_CONSOLE_CHARS = 64 * 1024


# --- what records print ------------------------------------------------------------------------


def console_text(text: str) -> str:
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
        if not isinstance(text, str):  # as io.StringIO: the record's call fails, not the chunk
            raise TypeError(f"string argument expected, got {type(text).__name__!r}")
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
        texts = {r: console_text("".join(parts)) for r, parts in self._texts.items()}
        self._texts.clear()
        self._sizes.clear()
        return texts


# --- checking values -------------------------------------------------------------------------


def input_columns(
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

    def __init__(self, service: LoadedService, outputs: dict[str, str]) -> None:
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


# --- the loop ----------------------------------------------------------------------------------


class _RowResults:
    """The results of a chunk's records not yet written, kept as columns until a flush."""

    def __init__(self, task: ChunkTask, single_output: bool) -> None:
        self.task = task
        self.single = single_output
        self.first = 0  # chunk offset of the first record held
        self.outputs: list[Any] = []  # per record: its output's value, or a tuple of them
        self.block: list[Any] = []  # the outputs of the block running now
        self.blocks: list[tuple[int, float]] = []  # per block held: (records, seconds)
        self.failures: dict[int, tuple[str, str]] = {}  # by chunk offset
        self.retries: dict[int, int] = {}  # tries after the first, by chunk offset
        self.succeeded = self.failed = 0  # of the records written

    def running(self) -> int:
        """The chunk offset of the record running now (the loop keeps no counter)."""
        return self.first + len(self.outputs) + len(self.block)

    def write(self, writer: ResultWriter, consoles: dict[int, str]) -> None:
        count = len(self.outputs)
        if not count:
            return
        first = self.first
        counts = np.array([n for n, _ in self.blocks], dtype=np.int64)
        seconds = np.array([t for _, t in self.blocks], dtype=np.float64)
        durations = np.repeat(seconds * 1000.0 / counts, counts)
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
        self.outputs = []
        self.blocks.clear()
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


class Progress:
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
        """Every record counted is written: make them readable, and report when it is time.
        Only records that can be read count: a report never runs ahead of the results."""
        if self.writer.flush():
            self.succeeded, self.failed = succeeded, failed
        self.beat()

    def beat(self) -> None:
        """Report the counts when it is time: a record tried again and again is no silence."""
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._report(self.succeeded, self.failed)
            self._last = now


#: Records run in blocks of at most this many ...
MAX_BLOCK = 4096
#: ... taking about this long: slower records run one by one.
BLOCK_SECONDS = 0.002


def run_rows(
    task: ChunkTask,
    table: pa.Table,
    load: Callable[[], LoadedService],
    writer: ResultWriter,
    limits: TryLimits,
    progress: Progress,
    flush_interval: float,
) -> tuple[int, int, float]:
    """Run every record of a chunk of a row-mode service; returns (succeeded, failed, seconds
    from the first record's start to the last one's end).

    ``load`` gives the loaded service (or raises :class:`BundleError`: every record fails).
    Results are written every ``flush_interval`` seconds and the counts passed to
    ``progress``.
    """
    spec = task.service
    count = table.num_rows
    columns, bad = input_columns(table, spec.inputs)
    try:
        service = load()
    except BundleError as exc:
        for offset in range(count):
            error = bad.get(offset, exc)
            writer.add(
                failed_row(task.start_index + offset, *describe_failure(error), task.attempt, "")
            )
        return 0, count, 0.0
    check = _OutputCheck(service, spec.outputs)
    results = _RowResults(task, check.single)
    call, order = service.row_function(list(spec.inputs))
    call = limits.limit(call)
    if bad:
        call = _refusing_bad_inputs(call, bad, results)
    values = [columns[n] for n in order]
    console = _Console(results)
    clock = time.perf_counter
    stdout, sys.stdout = sys.stdout, console
    size = 1
    try:
        began = last_flush = clock()
        start = 0
        while start < count:
            end = min(start + size, count)
            block = results.block = []
            started = clock()
            _run_block(call, values, start, end, block, check, limits, results, console, progress)
            now = clock()
            _check_block(block, start, check, results)
            results.outputs += block
            results.block = []
            results.blocks.append((end - start, now - started))
            elapsed = now - started
            if elapsed < BLOCK_SECONDS / 2 and size < MAX_BLOCK:
                size = min(size * 4, MAX_BLOCK)
            elif elapsed > BLOCK_SECONDS * 2 and size > 1:
                size = max(size // 4, 1)
            start = end
            if now - last_flush >= flush_interval:
                results.write(writer, console.take())
                progress.flushed(results.succeeded, results.failed)
                last_flush = now
        ran = clock() - began
    finally:
        sys.stdout = stdout
    results.write(writer, console.take())
    return results.succeeded, results.failed, ran


def _run_block(
    call: Callable[..., Any],
    values: list[list[Any]],
    start: int,
    end: int,
    block: list[Any],
    check: _OutputCheck,
    limits: TryLimits,
    results: _RowResults,
    console: _Console,
    progress: Progress,
) -> None:
    """Run records ``[start, end)`` into ``block``: one output each, a failed record's being
    ``check.null`` (its error in ``results.failures``)."""
    at = start
    while at < end:
        try:
            if values:
                block.extend(map(call, *(column[at:end] for column in values)))
            else:
                block.extend(call() for _ in range(end - at))
            return
        except (Exception, TaskTimeout) as exc:
            failed = start + len(block)  # the outputs of the records before it are kept
            row = tuple(column[failed] for column in values)
            block.append(_try_again(call, row, check, limits, exc, results, console, progress))
            at = failed + 1


def _check_block(block: list[Any], start: int, check: _OutputCheck, results: _RowResults) -> None:
    """Check a block's outputs against the declared outputs, in place: one test over the block
    when every output has the exact declared type; else each one, failing a record whose
    output does not fit."""
    exact_type, further = check.exact_type, check.further
    first = results.first + len(results.outputs)  # chunk offset of the block's first record
    failures = results.failures
    # (A failed record's output is None, never of an output type: its block takes the long way.)
    if check.single and further is None and set(map(type, block)) == {exact_type}:
        return
    for position, value in enumerate(block):
        offset = first + position
        if offset in failures:
            continue
        if check.single and type(value) is exact_type and (further is None or further(value)):
            continue
        try:
            block[position] = check(value)
        except SchemaError as exc:
            block[position] = check.null
            failures[offset] = describe_failure(exc)


def _try_again(
    call: Callable[..., Any],
    row: tuple[Any, ...],
    check: _OutputCheck,
    limits: TryLimits,
    error: BaseException,
    results: _RowResults,
    console: _Console,
    progress: Progress,
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
    results.failures[offset] = describe_failure(error)
    return check.null
