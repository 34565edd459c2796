"""Turning the records given to ``Service.batch()`` into a streamed upload body.

In-memory records (a pandas DataFrame, a list of dicts, a dict of columns, a pyarrow Table) become
an Arrow IPC *stream* written record batch by record batch, so the upload never exists as one big
bytes object. A CSV or TSV file is sent as it is, read in 1 MiB pieces. The server validates the
columns against the service's inputs; what is checked here is only what the SDK needs to build the
body (the container, the column lengths).

pyarrow and pandas are imported on first use: importing ``batchserve`` stays cheap.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchserve.errors import InvalidRecordsError

if TYPE_CHECKING:
    import pyarrow as pa

ARROW_STREAM = "application/vnd.apache.arrow.stream"
CSV = "text/csv"
TSV = "text/tab-separated-values"

FILE_PIECE_BYTES = 1 << 20
#: Rows per Arrow record batch in the upload: each batch is encoded only when the upload reaches it.
ROWS_PER_BATCH = 10_000

# What pyarrow raises when a column's values do not share one type (ArrowInvalid is a ValueError,
# ArrowTypeError a TypeError).
_CONVERSION_ERRORS = (TypeError, ValueError, OverflowError, NotImplementedError)


@dataclass(frozen=True)
class RecordsBody:
    """An upload body: its content type, a factory of its pieces, and the record count if known."""

    content_type: str
    pieces: Callable[[], Iterator[bytes]] = field(repr=False)
    record_count: int | None
    columns: tuple[str, ...] | None  # None for a file: the server reads its header
    source: str  # what the records were, for messages and repr


def records_body(records: Any, inputs: Sequence[str]) -> RecordsBody:
    """Build the upload body for ``records`` of a service whose input columns are ``inputs``."""
    if isinstance(records, (str, os.PathLike)):
        return _from_file(Path(records))
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(records, pd.DataFrame):
        return _from_dataframe(records, inputs)
    pa_mod = sys.modules.get("pyarrow")
    if pa_mod is not None and isinstance(records, (pa_mod.Table, pa_mod.RecordBatch)):
        table = records if isinstance(records, pa_mod.Table) else pa_mod.table(records)
        return _from_table(table.select(_select(table.column_names, inputs)), "pyarrow table")
    if isinstance(records, Mapping):
        return _from_columns(records, inputs)
    if isinstance(records, (list, tuple)):
        return _from_rows(records, inputs)
    raise InvalidRecordsError(
        f"Cannot send records of type {type(records).__name__}: give a pandas DataFrame, a list "
        "of dicts (one per record), a dict of equal-length columns, or the path of a .csv/.tsv "
        "file."
    )


def _select(present: Sequence[str], inputs: Sequence[str]) -> list[str]:
    """The declared inputs in declared order when all are present, else every column as given.

    Passing everything through when an input is missing lets the server's 400 name what is missing
    next to what was sent, which is the clearest message available.
    """
    if inputs and all(name in present for name in inputs):
        return list(inputs)
    return list(present)


def _no_records(source: str) -> InvalidRecordsError:
    return InvalidRecordsError(f"The {source} holds no records: a batch needs at least one.")


def _from_dataframe(df: Any, inputs: Sequence[str]) -> RecordsBody:
    import pyarrow as pa

    names = [str(c) for c in df.columns]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InvalidRecordsError(f"The DataFrame has duplicate column names: {dupes}.")
    if len(df) == 0:
        raise _no_records("DataFrame")
    by_name = dict(zip(names, df.columns, strict=True))
    selected = _select(names, inputs)
    arrays = [_series_array(df[by_name[name]]) for name in selected]
    return _from_table(pa.Table.from_arrays(arrays, names=selected), "DataFrame")


def _from_rows(rows: Sequence[Any], inputs: Sequence[str]) -> RecordsBody:
    if not rows:
        raise _no_records("list")
    keys: dict[str, None] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidRecordsError(
                f"Record {i} is a {type(row).__name__}, not a dict: a list of records must hold "
                "one dict per record, like [{'hp': 120, 'wt': 2.8}, ...]."
            )
        for key in row:
            if not isinstance(key, str):
                raise InvalidRecordsError(f"Record {i} has a key {key!r} that is not a string.")
            keys.setdefault(key, None)
    selected = _select(list(keys), inputs)
    columns = {name: [row.get(name) for row in rows] for name in selected}
    return _from_value_columns(columns, "list of dicts")


def _from_columns(columns: Mapping[Any, Any], inputs: Sequence[str]) -> RecordsBody:
    lengths: dict[str, int] = {}
    for name, values in columns.items():
        if not isinstance(name, str):
            raise InvalidRecordsError(f"Column name {name!r} is not a string.")
        try:
            if isinstance(values, (str, bytes, Mapping)):
                raise TypeError
            lengths[name] = len(values)
        except TypeError:
            raise InvalidRecordsError(
                f"Column {name!r} must be a list of values, not a {type(values).__name__}. "
                f"To send one record, pass a list holding one dict: [{{{name!r}: ...}}]."
            ) from None
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{name!r} has {n}" for name, n in lengths.items())
        raise InvalidRecordsError(f"The columns must all have the same length, but {sizes} values.")
    if not lengths or next(iter(lengths.values())) == 0:
        raise _no_records("dict of columns")
    selected = _select(list(lengths), inputs)
    return _from_value_columns({name: columns[name] for name in selected}, "dict of columns")


def _from_value_columns(columns: Mapping[str, Any], source: str) -> RecordsBody:
    import pyarrow as pa

    arrays = [_values_array(values) for values in columns.values()]
    return _from_table(pa.Table.from_arrays(arrays, names=list(columns)), source)


def _values_array(values: Any) -> pa.Array | pa.ChunkedArray:
    import pyarrow as pa

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    try:
        return pa.array(values)
    except _CONVERSION_ERRORS:
        return _as_strings(list(values), nan_is_null=False)


def _series_array(series: Any) -> pa.Array:
    import pyarrow as pa

    try:
        return pa.Array.from_pandas(series)
    except _CONVERSION_ERRORS:
        # In a DataFrame, NaN is how pandas spells "missing", so it stays null here too.
        return _as_strings(series.tolist(), nan_is_null=True)


def _as_strings(values: list[Any], *, nan_is_null: bool) -> pa.Array:
    """A column whose values have mixed types, sent as text.

    The server then converts each value to the declared input type on its own, so one bad value
    fails only its record (with a message naming it) instead of refusing the whole upload.
    """
    import pyarrow as pa

    def text(value: Any) -> str | None:
        if value is None or (nan_is_null and isinstance(value, float) and math.isnan(value)):
            return None
        return str(value)

    return pa.array([text(v) for v in values], type=pa.string())


def _from_table(table: pa.Table, source: str) -> RecordsBody:
    if table.num_rows == 0:
        raise _no_records(source)
    return RecordsBody(
        content_type=ARROW_STREAM,
        pieces=lambda: _arrow_pieces(table),
        record_count=table.num_rows,
        columns=tuple(table.column_names),
        source=source,
    )


class _PieceSink:
    """A write-only file for the Arrow stream writer whose bytes are taken out after each batch."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def write(self, data: Any) -> int:
        piece = bytes(data)
        self._parts.append(piece)
        self._position += len(piece)
        return len(piece)

    def tell(self) -> int:
        return self._position

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        piece = b"".join(self._parts)
        self._parts.clear()
        return piece


def _arrow_pieces(table: pa.Table, rows_per_batch: int = ROWS_PER_BATCH) -> Iterator[bytes]:
    import pyarrow as pa

    sink = _PieceSink()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=rows_per_batch):
            writer.write_batch(batch)
            # An empty piece is never yielded: some transports read it as the end of the body.
            if piece := sink.take():
                yield piece
    if piece := sink.take():  # the end-of-stream marker
        yield piece


def _from_file(path: Path) -> RecordsBody:
    if not path.is_file():
        raise InvalidRecordsError(f"There is no records file at '{path}'.")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        content_type = CSV
    elif suffix == ".tsv":
        content_type = TSV
    elif suffix == ".txt":
        with open(path, "rb") as f:
            first_line = f.readline(1 << 16)
        content_type = TSV if b"\t" in first_line else CSV
    else:
        raise InvalidRecordsError(
            f"Cannot send '{path.name}': a records file must be .csv, .tsv, or .txt (tab- or "
            "comma-separated). Load other formats into a pandas DataFrame first."
        )
    return RecordsBody(
        content_type=content_type,
        pieces=lambda: _file_pieces(path),
        # Only a hint for sizing chunks: a quoted field holding a newline makes it a bit high.
        record_count=_count_lines(path),
        columns=None,
        source=f"file {path.name}",
    )


def _count_lines(path: Path) -> int:
    """Data rows in a delimited file, counted by newlines (the header excluded)."""
    lines = 0
    last = b"\n"
    with open(path, "rb") as f:
        while piece := f.read(FILE_PIECE_BYTES):
            lines += piece.count(b"\n")
            last = piece[-1:]
    if last != b"\n":
        lines += 1  # a last line without a newline
    return max(lines - 1, 0)


def _file_pieces(path: Path, piece_bytes: int = FILE_PIECE_BYTES) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(piece_bytes):
            yield piece
