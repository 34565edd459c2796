"""Result files: the Arrow layout of per-record results, shared by workers and the API.

A worker appends record batches to an Arrow IPC *stream* file and flushes as it goes, so the
API can read a running chunk's finished records (partial results) and a killed chunk's file
keeps every record written before the kill.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchserve.schema import ARROW_TYPES

_COMPRESSED = pa.ipc.IpcWriteOptions(compression="lz4")
#: A result file's record batches hold at most this many rows.
RESULT_BATCH_ROWS = 1 << 16

STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"
STATUS_CANCELLED = "cancelled"

_BASE_FIELDS = [
    pa.field("index", pa.int64()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("error_type", pa.string()),
    pa.field("console_output", pa.string()),
    pa.field("artifacts", pa.list_(pa.string())),
    pa.field("duration_ms", pa.float64()),
    pa.field("attempts", pa.int32()),
]
BASE_COLUMNS = [f.name for f in _BASE_FIELDS]


def result_schema(outputs: dict[str, str]) -> pa.Schema:
    out = pa.struct([pa.field(n, ARROW_TYPES[t]) for n, t in outputs.items()])
    return pa.schema([*_BASE_FIELDS, pa.field("outputs", out)])


class ResultWriter:
    """Appends result rows to a stream file; :meth:`flush` makes them visible to readers.

    Rows come one by one as dicts (:meth:`add`) or many at once as columns
    (:meth:`add_columns`), which is what a worker running many cheap records does.
    """

    def __init__(self, sink: BinaryIO, outputs: dict[str, str]) -> None:
        self.schema = result_schema(outputs)
        self._sink = _CountingSink(sink)
        # LZ4-compressed: results repeat themselves (statuses, empty errors, like durations),
        # so a result file is a third of the bytes to write and read back, for little CPU.
        self._writer = pa.ipc.new_stream(self._sink, self.schema, options=_COMPRESSED)
        self._rows: list[dict[str, Any]] = []

    @property
    def bytes_written(self) -> int:
        return self._sink.count

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)

    def add_columns(
        self,
        first_index: int,
        outputs: Sequence[Sequence[Any]],
        durations: Sequence[float] | np.ndarray,
        attempts: int,
        *,
        failures: dict[int, tuple[str, str]],
        consoles: dict[int, str],
        retries: dict[int, int],
    ) -> None:
        """Rows ``first_index``, ``first_index + 1``, ... given as columns.

        ``outputs`` holds one list of values per output, or an Arrow array of the output's type
        (None, or null, where a record failed). The dicts are keyed by position in these rows:
        ``failures`` gives a failed record's error and its type, ``consoles`` what a record
        printed (others printed nothing), ``retries`` the tries after the first, added to
        ``attempts``.
        """
        self._write_rows()
        count = len(durations)
        failed = np.zeros(count, dtype=bool)
        failed[list(failures)] = True
        attempt_counts = np.full(count, attempts, dtype=np.int32)
        for position, extra in retries.items():
            attempt_counts[position] += extra
        struct = self.schema.field("outputs").type
        columns = [
            pa.array(np.arange(first_index, first_index + count, dtype=np.int64)),
            pc.if_else(pa.array(failed), STATUS_FAILED, STATUS_SUCCEEDED)
            if failures
            else pa.repeat(STATUS_SUCCEEDED, count),
            _sparse_text(count, {p: f[0] for p, f in failures.items()}, None),
            _sparse_text(count, {p: f[1] for p, f in failures.items()}, None),
            _sparse_text(count, consoles, ""),
            pa.ListArray.from_arrays(
                pa.array(np.zeros(count + 1, dtype=np.int32)), pa.array([], pa.string())
            ),
            pa.array(durations, pa.float64()),
            pa.array(attempt_counts),
            pa.StructArray.from_arrays(
                [
                    values if isinstance(values, pa.Array) else pa.array(values, f.type)
                    for values, f in zip(outputs, struct, strict=True)
                ],
                fields=list(struct),
                mask=pa.array(failed) if failures else None,
            )
            if struct.num_fields
            else pa.array([None if p in failures else {} for p in range(count)], struct),
        ]
        batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        # In record batches of a bounded size, which readers take one at a time.
        for start in range(0, count, RESULT_BATCH_ROWS):
            self._writer.write_batch(batch.slice(start, RESULT_BATCH_ROWS))

    def _write_rows(self) -> None:
        if self._rows:
            self._writer.write_batch(pa.RecordBatch.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def flush(self) -> bool:
        """Make the rows added so far readable; False when some are not yet (a segmented
        stream writes its next segment a moment later)."""
        self._write_rows()
        return self._sink.flush() is not False

    def close(self) -> None:
        self.flush()
        self._writer.close()
        self._sink.close()


def _sparse_text(count: int, values: dict[int, str], default: str | None) -> pa.Array:
    """A text column of ``count`` rows holding ``default`` but where ``values`` says otherwise."""
    if not values:
        return pa.repeat(default, count) if default is not None else pa.nulls(count, pa.string())
    column: list[str | None] = [default] * count
    for position, text in values.items():
        column[position] = text
    return pa.array(column, pa.string())


class _CountingSink:
    """A file object passing writes through to another and counting the bytes."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.count = 0

    @property
    def closed(self) -> bool:
        return self._inner.closed

    def write(self, data: Any) -> int:
        self.count += len(data)
        return self._inner.write(data)

    def flush(self) -> bool | None:
        return self._inner.flush()

    def close(self) -> None:
        self._inner.close()


def iter_results(source: BinaryIO) -> Iterator[pa.RecordBatch]:
    """The complete record batches of a result stream, one at a time, even of a stream still
    being written or cut off (its last, incomplete message is left out)."""
    try:
        reader = pa.ipc.open_stream(source)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            yield batch
    except (pa.ArrowInvalid, OSError, EOFError):
        return  # a stream cut off mid-message: what was complete has been given


def read_results(data: BinaryIO | bytes, outputs: dict[str, str] | None) -> pa.Table:
    """Every complete record batch of a result stream, even one still being written or cut off.

    With ``outputs`` None the file's own schema is used (for counting statuses only).
    """
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    schema = result_schema(outputs) if outputs is not None else None
    batches: list[pa.RecordBatch] = []
    try:
        reader = pa.ipc.open_stream(source)
        schema = schema or reader.schema
        while True:
            try:
                batches.append(reader.read_next_batch())
            except StopIteration:
                break
    except (pa.ArrowInvalid, OSError, EOFError):
        pass  # a stream cut off mid-message: keep what was complete
    return pa.Table.from_batches(batches, schema=schema or result_schema({}))


def cancelled_rows(
    indexes: Sequence[int] | np.ndarray, outputs: dict[str, str], message: str
) -> pa.Table:
    """Result rows for records that never ran because the batch was stopped."""
    return _rows_without_outputs(indexes, outputs, STATUS_CANCELLED, message, None, 0)


def failed_row(
    index: int, message: str, error_type: str, attempts: int, console_output: str | None = None
) -> dict[str, Any]:
    """The result row of a record that failed without outputs."""
    return {
        "index": index,
        "status": STATUS_FAILED,
        "error": message,
        "error_type": error_type,
        "artifacts": [],
        "console_output": console_output,
        "attempts": attempts,
    }


def failed_rows(
    indexes: Sequence[int] | np.ndarray,
    outputs: dict[str, str],
    message: str,
    error_type: str,
    attempts: int,
) -> pa.Table:
    """Result rows for records that failed without running (their chunk failed as a whole)."""
    return _rows_without_outputs(indexes, outputs, STATUS_FAILED, message, error_type, attempts)


def _rows_without_outputs(
    indexes: Sequence[int] | np.ndarray,
    outputs: dict[str, str],
    status: str,
    message: str,
    error_type: str | None,
    attempts: int,
) -> pa.Table:
    """Rows of one status and message, built as columns (a stopped batch may have millions)."""
    schema = result_schema(outputs)
    index = pa.array(np.asarray(indexes, dtype=np.int64))
    count = len(index)
    struct = schema.field("outputs").type
    columns = [
        index,
        pa.repeat(status, count),
        pa.repeat(message, count),
        pa.repeat(error_type, count) if error_type is not None else pa.nulls(count, pa.string()),
        pa.nulls(count, pa.string()),
        pa.ListArray.from_arrays(
            pa.array(np.zeros(count + 1, dtype=np.int32)), pa.array([], pa.string())
        ),
        pa.nulls(count, pa.float64()),
        pa.array(np.full(count, attempts, dtype=np.int32)),
        pa.nulls(count, struct),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def row_to_json(row: dict[str, Any]) -> dict[str, Any]:
    """A result row as the REST API's ``RecordResult``."""
    out = {
        "index": row["index"],
        "status": row["status"],
        "outputs": row.get("outputs") or {} if row["status"] == STATUS_SUCCEEDED else {},
        "error": row.get("error"),
        "error_type": row.get("error_type"),
        "console_output": row.get("console_output") or "",
        "artifacts": list(row.get("artifacts") or []),
        "duration_ms": row.get("duration_ms"),
        "attempts": row.get("attempts") or 0,
    }
    if "id" in row:  # the batch has an id column
        out["id"] = row["id"]
    return out


def flatten(table: pa.Table) -> pa.Table:
    """Results with one column per output (named after it) instead of the ``outputs`` struct.

    The record ``id`` column, when the results carry one, follows ``index``. An output named like
    one of the result columns (or ``id``, when there is an id column) is called ``output_<name>``.
    """
    outputs = table.column("outputs")
    cols: dict[str, pa.ChunkedArray] = {"index": table.column("index")}
    if "id" in table.column_names:
        cols["id"] = table.column("id")
    cols["status"] = table.column("status")
    struct_type = table.schema.field("outputs").type
    for i in range(struct_type.num_fields):
        name = struct_type.field(i).name
        key = name if name not in BASE_COLUMNS and name not in cols else f"output_{name}"
        # flatten() (unlike field()) keeps the nulls of failed records' outputs.
        cols[key] = pa.chunked_array(
            [c.flatten()[i] for c in outputs.chunks], struct_type.field(i).type
        )
    for name in ("error", "error_type", "console_output", "attempts"):
        cols[name] = table.column(name)
    # To the microsecond: finer digits are noise, and they cost text exports the most time.
    cols["duration_ms"] = pc.round(table.column("duration_ms"), 3)
    cols["attempts"] = cols.pop("attempts")
    return pa.table(cols)
