"""Vectorized mode's chunk loop: a chunk's records in one DataFrame, the outputs back as columns.

A vectorized service is called with a DataFrame of many records, so batchserve's own work has
to be columnar too, or it costs more than the call. The inputs go from the chunk's Arrow columns
to the frame in one conversion; only a column not already of its declared type, or holding
nulls, is checked value by value (:func:`input_frame`), so that a bad value fails its own record
alone. Each output column comes back through NumPy and Arrow (:func:`output_array`); one that
does not convert as a whole is checked value by value, and only its bad values fail their
records. Results are written as Arrow columns.

When a call raises (or runs past the time limit), its records are halved and each half called
again, down to single records, so only the records that make the service fail get an error; a
single record's call is tried again as the limits allow. What a call prints is the console
output of the first record of that call; each record's ``duration_ms`` is its call's time
divided by the call's records.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchserve.engine.results import ResultWriter
from batchserve.engine.tasks import ChunkTask
from batchserve.schema import ARROW_TYPES, INT64_MAX, INT64_MIN, SchemaError, coerce
from batchserve.worker.bundles import BundleError, LoadedService
from batchserve.worker.rows import Progress, console_text
from batchserve.worker.tries import TaskTimeout, TryLimits, describe_failure

# pandas is imported where it is used: the API process and row-mode workers import this module
# (through the runtime) but never need it.
if TYPE_CHECKING:
    import pandas as pd

# --- inputs ------------------------------------------------------------------------------------


def input_frame(
    table: pa.Table, inputs: dict[str, str]
) -> tuple[pd.DataFrame, np.ndarray, dict[int, SchemaError]]:
    """The frame a chunk's service is called with, the chunk offsets of its rows, and the
    records left out of it because their inputs do not fit.

    A column of the declared Arrow type without nulls goes to the frame as it is; others are
    checked value by value. A record's error is that of its first input (in declared order)
    that does not fit, as :func:`~batchserve.schema.coerce_record` reports. The frame's columns
    are the inputs in declared order, of the dtypes pandas gives their Arrow types.
    """
    count = table.num_rows
    bad: dict[int, SchemaError] = {}
    columns: list[pa.Array | pa.ChunkedArray] = []
    for name, type_name in inputs.items():
        target = ARROW_TYPES[type_name]
        if name in table.column_names:
            column = table.column(name)
            if column.type == target and column.null_count == 0:
                columns.append(column)
                continue
            raw = column.to_pylist()
        else:
            raw = [None] * count
        values: list[Any] = []
        for offset, value in enumerate(raw):
            try:
                values.append(_input_value(value, type_name, name))
            except SchemaError as exc:
                values.append(None)
                bad.setdefault(offset, exc)
        columns.append(pa.array(values, target))
    # Built on a selection of no columns, so that a service without inputs still gets a frame
    # of as many rows as the chunk has.
    frame_table = table.select([])
    for name, column in zip(inputs, columns, strict=True):
        frame_table = frame_table.append_column(name, column)
    if bad:
        keep = np.ones(count, dtype=bool)
        keep[list(bad)] = False
        good = np.flatnonzero(keep)
        frame_table = frame_table.filter(pa.array(keep))
    else:
        good = np.arange(count)
    return frame_table.to_pandas(), good, bad


def _input_value(value: Any, type_name: str, name: str) -> Any:
    checked = coerce(value, type_name, name)
    # Text parsed as an int may not fit the frame's int64 column (row mode passes it on).
    if type_name == "int" and not INT64_MIN <= checked <= INT64_MAX:
        raise SchemaError(
            f"input '{name}' is {checked}, outside the 64-bit integer range of a vectorized "
            "service's int column; declare it as float or str to pass such values."
        )
    return checked


# --- outputs -----------------------------------------------------------------------------------


def output_array(column: Any, type_name: str, name: str) -> tuple[pa.Array, dict[int, SchemaError]]:
    """One output's column (a Series, array or list of one value per record) as an Arrow array
    of its declared type, and the errors of the records whose value does not fit.

    The rules are those of ``coerce(value, type_name, name, kind="output")`` for each value: a
    column whose dtype makes every value fit converts as a whole; any other is checked value by
    value, and a value that does not fit is null in the array and an error of its record.
    """
    array = _whole_column(column, type_name)
    if array is not None:
        return array, {}
    values = column.tolist() if hasattr(column, "tolist") else list(column)
    checked: list[Any] = []
    errors: dict[int, SchemaError] = {}
    for position, value in enumerate(values):
        try:
            checked.append(coerce(value, type_name, name, kind="output"))
        except SchemaError as exc:
            checked.append(None)
            errors[position] = exc
    return pa.array(checked, ARROW_TYPES[type_name]), errors


def _whole_column(column: Any, type_name: str) -> pa.Array | None:
    """``column`` as an Arrow array when its dtype says every value fits ``type_name``, or None.

    None means the values are to be checked one by one: a list, an object or extension dtype
    holding anything else than text, a float column with a fraction for an int output, ...
    """
    import pandas as pd

    if isinstance(column, pd.Series):
        if isinstance(column.dtype, pd.StringDtype) and type_name == "str":
            text = pa.array(column)
            return text.cast(pa.string()) if text.null_count == 0 else None
        if not isinstance(column.dtype, np.dtype):
            return None
        column = column.to_numpy()
    if not isinstance(column, np.ndarray) or column.ndim != 1:
        return None
    kind = column.dtype.kind
    if type_name == "float":
        # NaN is a float like any other (coerce lets it through); wider floats would round.
        if kind in "iu" or (kind == "f" and column.dtype.itemsize <= 8):
            return pa.array(column.astype(np.float64, copy=False))
    elif type_name == "int":
        if kind == "i" or (kind == "u" and (not len(column) or column.max() <= INT64_MAX)):
            return pa.array(column.astype(np.int64, copy=False))
        if kind == "f" and column.dtype.itemsize <= 8:
            # Whole numbers within int64: NaN and infinities fail each of these comparisons.
            whole = (column == np.trunc(column)) & (column >= -(2.0**63)) & (column < 2.0**63)
            if whole.all():
                return pa.array(column.astype(np.int64))
    elif type_name == "bool":
        if kind == "b":
            return pa.array(column)
        if kind in "iu" and ((column == 0) | (column == 1)).all():
            return pa.array(column.astype(bool))
    elif type_name == "str" and (
        kind == "U" or (kind == "O" and pd.api.types.infer_dtype(column, skipna=False) == "string")
    ):
        try:
            return pa.array(column, pa.string())
        except (pa.ArrowException, UnicodeError):  # a lone surrogate: its record fails alone
            return None
    return None


# --- the results -------------------------------------------------------------------------------


class _FrameResults:
    """The results of a chunk's calls not yet written.

    Calls finish in the order of their records (the halves of a failed call run first half
    first), so every record before the end of a finished call, and the records with bad inputs
    up to the next call's first record, are final and can be written.
    """

    def __init__(
        self, task: ChunkTask, count: int, good: np.ndarray, bad: dict[int, SchemaError]
    ) -> None:
        self.task = task
        self.count = count
        self.good = good
        self.bad = bad
        self.bad_offsets = np.array(sorted(bad), dtype=np.int64)
        self.durations = np.zeros(self.count, dtype=np.float64)
        self.written = 0  # chunk offset of the first record not written
        self.done = 0  # position in ``good`` of the first record without a result
        self.outputs: dict[str, list[pa.Array]] = {n: [] for n in task.service.outputs}
        self.failures: dict[int, tuple[str, str]] = {}  # by chunk offset, of records not written
        self.consoles: dict[int, str] = {}  # by chunk offset
        self.retries: dict[int, int] = {}  # tries after the first, by chunk offset
        self.succeeded = self.failed = 0  # of the records written

    def finished(
        self,
        hi: int,
        arrays: list[pa.Array],
        errors: dict[int, BaseException],
        console: str,
        seconds: float,
        tries: int,
    ) -> None:
        """The call of the records at positions ``done`` to ``hi`` of ``good`` ended: its
        outputs, the errors of the records that failed (by position in the call), what it
        printed, how long it took and how many tries it took."""
        lo = self.done
        offsets = self.good[lo:hi]
        for array, store in zip(arrays, self.outputs.values(), strict=True):
            store.append(array)
        for position, error in errors.items():
            self.failures[int(offsets[position])] = describe_failure(error)
        first = int(offsets[0])
        if console:
            self.consoles[first] = console
        if tries > 1:
            for offset in offsets.tolist():
                self.retries[offset] = tries - 1
        self.durations[offsets] = seconds * 1000.0 / (hi - lo)
        self.done = hi

    def failed_call(self, error: BaseException, console: str, seconds: float, tries: int) -> None:
        """The call of the single record at position ``done`` of ``good`` failed for good."""
        nulls = [pa.nulls(1, ARROW_TYPES[t]) for t in self.task.service.outputs.values()]
        self.finished(self.done + 1, nulls, {0: error}, console, seconds, tries)

    def final(self) -> int:
        """The chunk offset up to which every record has its result."""
        return int(self.good[self.done]) if self.done < len(self.good) else self.count

    def write(self, writer: ResultWriter) -> None:
        """Write every record that has its result and was not written yet."""
        start, end = self.written, self.final()
        if end <= start:
            return
        span = end - start
        failures = {o - start: f for o, f in self.failures.items()}
        lo, hi = np.searchsorted(self.bad_offsets, [start, end])
        for offset in self.bad_offsets[lo:hi].tolist():
            failures[offset - start] = describe_failure(self.bad[offset])
        places: pa.Array | None = None
        if hi > lo:
            # Records with bad inputs have no outputs: the calls' values are spread over the
            # span, leaving their places null.
            positions = np.full(span, -1, dtype=np.int64)
            in_calls = np.ones(span, dtype=bool)
            in_calls[self.bad_offsets[lo:hi] - start] = False
            positions[in_calls] = np.arange(span - int(hi - lo))
            places = pa.array(positions, mask=~in_calls)
        columns: list[pa.Array] = []
        for type_name, store in zip(
            self.task.service.outputs.values(), self.outputs.values(), strict=True
        ):
            values = pa.concat_arrays(store) if store else pa.nulls(0, ARROW_TYPES[type_name])
            columns.append(values if places is None else values.take(places))
            store.clear()
        writer.add_columns(
            self.task.start_index + start,
            columns,
            self.durations[start:end],
            self.task.attempt,
            failures=failures,
            consoles={o - start: text for o, text in self.consoles.items()},
            retries={o - start: n for o, n in self.retries.items()},
        )
        self.failed += len(failures)
        self.succeeded += span - len(failures)
        self.written = end
        self.failures.clear()
        self.consoles.clear()
        self.retries.clear()


# --- the loop ----------------------------------------------------------------------------------


def run_frames(
    task: ChunkTask,
    table: pa.Table,
    load: Callable[[], LoadedService],
    writer: ResultWriter,
    limits: TryLimits,
    progress: Progress,
    flush_interval: float,
) -> tuple[int, int, float]:
    """Run a chunk of a vectorized service; returns (succeeded, failed, seconds spent on its
    records: building the frame, the calls, checking their outputs).

    ``load`` gives the loaded service (or raises :class:`BundleError`: every record fails).
    After each call, the records with results are written when ``flush_interval`` seconds
    passed since the last write, and their counts passed to ``progress``.
    """
    spec = task.service
    service: LoadedService | None = None
    error: BundleError | None = None
    try:
        service = load()
    except BundleError as exc:
        error = exc
    began = time.perf_counter()
    frame, good, bad = input_frame(table, spec.inputs)
    results = _FrameResults(task, table.num_rows, good, bad)
    if service is None:
        assert error is not None
        if len(good):
            nulls = [pa.nulls(len(good), ARROW_TYPES[t]) for t in spec.outputs.values()]
            results.finished(len(good), nulls, dict.fromkeys(range(len(good)), error), "", 0.0, 1)
        results.write(writer)
        return results.succeeded, results.failed, 0.0
    call = limits.limit(service.call_frame)
    outputs = list(spec.outputs.items())
    clock = time.perf_counter
    last_flush = clock()

    def called() -> None:
        nonlocal last_flush
        now = clock()
        if now - last_flush >= flush_interval:
            results.write(writer)
            progress.flushed(results.succeeded, results.failed)
            last_flush = now

    def attempt(lo: int, hi: int) -> None:
        tries = 0
        while True:  # a loop, not recursion: unlimited retries may take many tries
            tries += 1
            console = io.StringIO()
            started = clock()
            try:
                with contextlib.redirect_stdout(console):
                    columns = call(frame.iloc[lo:hi].reset_index(drop=True))
                converted = [output_array(columns[n], t, n) for n, t in outputs]
                break
            except (Exception, TaskTimeout) as exc:
                if hi - lo > 1:
                    limits.note(exc)
                    mid = (lo + hi) // 2
                    attempt(lo, mid)
                    attempt(mid, hi)
                    return
                if limits.again(tries, exc):
                    progress.beat()
                    continue
                text = console_text(console.getvalue())
                results.failed_call(exc, text, clock() - started, tries)
                called()
                return
        errors: dict[int, BaseException] = {}
        for _, output_errors in converted:  # a record's error is that of its first bad output
            for position, error in output_errors.items():
                errors.setdefault(position, error)
        arrays = [array for array, _ in converted]
        text = console_text(console.getvalue())
        results.finished(hi, arrays, errors, text, clock() - started, tries)
        called()

    if len(good):
        attempt(0, len(good))
    results.write(writer)
    return results.succeeded, results.failed, time.perf_counter() - began
