"""Turning the records given to ``Service.batch()`` into a streamed upload body.

In-memory records (a pandas DataFrame, a list of dicts, a dict of columns, a pyarrow Table) become
an Arrow IPC *stream* written record batch by record batch, so the upload never exists as one big
bytes object. An iterator of dicts is read and sent a record batch at a time, so it is never held
whole either. A records file (CSV, TSV, JSON Lines, Parquet, Arrow IPC file or stream), given by
its path or as an open binary file, is sent as it is, read in 1 MiB pieces. The server validates
the columns against the service's inputs; what is checked here is only what the SDK needs to build
the body (the container, the column lengths).

pyarrow and pandas are imported on first use: importing ``batchserve`` stays cheap.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from batchserve.errors import InvalidRecordsError

if TYPE_CHECKING:
    import pyarrow as pa

ARROW_STREAM = "application/vnd.apache.arrow.stream"
ARROW_FILE = "application/vnd.apache.arrow.file"
CSV = "text/csv"
TSV = "text/tab-separated-values"
JSONL = "application/jsonl"
PARQUET = "application/vnd.apache.parquet"

#: Records file formats by file extension (``format=`` takes the same names without the dot).
#: ``None`` is an Arrow IPC file or stream, told apart by the file's first bytes.
FILE_FORMATS: dict[str, str | None] = {
    ".csv": CSV,
    ".tsv": TSV,
    ".jsonl": JSONL,
    ".ndjson": JSONL,
    ".parquet": PARQUET,
    ".arrow": None,
    ".feather": None,
    ".ipc": None,
    ".arrows": ARROW_STREAM,
}
_EXTENSIONS = ", ".join(FILE_FORMATS) + " or .txt"
_ARROW_FILE_MAGIC = b"ARROW1"

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


def records_body(
    records: Any,
    inputs: Sequence[str] | Mapping[str, str],
    *,
    id_column: str | None = None,
    format: str | None = None,
) -> RecordsBody:
    """Build the upload body for ``records`` of a service whose input columns are ``inputs``
    (names, or names mapped to their declared types).

    ``id_column`` is a column sent beside the inputs. ``format`` names the format of a records
    file (``csv``, ``jsonl``, ``parquet``, ...) when its name does not tell it.
    """
    names = list(inputs)
    if format is not None and not (
        isinstance(records, (str, os.PathLike)) or hasattr(records, "read")
    ):
        raise InvalidRecordsError(
            "format= applies to records files (a path or an open binary file) only; "
            f"these records are a {type(records).__name__}."
        )
    if isinstance(records, (str, os.PathLike)):
        return _from_file(Path(records), format)
    if hasattr(records, "read"):
        return _from_open_file(records, format)
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(records, pd.DataFrame):
        return _from_dataframe(records, names, id_column)
    pa_mod = sys.modules.get("pyarrow")
    if pa_mod is not None and isinstance(records, (pa_mod.Table, pa_mod.RecordBatch)):
        table = records if isinstance(records, pa_mod.Table) else pa_mod.table(records)
        selected = _select(table.column_names, names, id_column, "pyarrow table")
        return _from_table(table.select(selected), "pyarrow table")
    if isinstance(records, Mapping):
        return _from_columns(records, names, id_column)
    if isinstance(records, (list, tuple)):
        return _from_rows(records, names, id_column)
    if isinstance(records, Iterable) and not isinstance(records, (str, bytes, bytearray)):
        return _from_iterator(iter(records), inputs, id_column)
    raise InvalidRecordsError(
        f"Cannot send records of type {type(records).__name__}: give a pandas DataFrame, a list "
        "of dicts (one per record), an iterator of dicts, a dict of equal-length columns, a "
        f"pyarrow Table, or a records file (its path or an open binary file: {_EXTENSIONS})."
    )


def _select(
    present: Sequence[str], inputs: Sequence[str], id_column: str | None = None, source: str = ""
) -> list[str]:
    """The declared inputs in declared order (then the id column) when all are present, else
    every column as given.

    Passing everything through when an input is missing lets the server's 400 name what is missing
    next to what was sent, which is the clearest message available.
    """
    if id_column is not None and id_column not in present:
        raise InvalidRecordsError(
            f"The {source or 'records'} have no column {id_column!r} to take record ids from "
            f"(id_column); the columns are {', '.join(repr(c) for c in present)}."
        )
    if inputs and all(name in present for name in inputs):
        extra = [id_column] if id_column is not None and id_column not in inputs else []
        return list(inputs) + extra
    return list(present)


def _no_records(source: str) -> InvalidRecordsError:
    return InvalidRecordsError(f"The {source} holds no records: a batch needs at least one.")


def _from_dataframe(df: Any, inputs: Sequence[str], id_column: str | None) -> RecordsBody:
    import pyarrow as pa

    names = [str(c) for c in df.columns]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InvalidRecordsError(f"The DataFrame has duplicate column names: {dupes}.")
    if len(df) == 0:
        raise _no_records("DataFrame")
    by_name = dict(zip(names, df.columns, strict=True))
    selected = _select(names, inputs, id_column, "DataFrame")
    arrays = [_series_array(df[by_name[name]]) for name in selected]
    return _from_table(pa.Table.from_arrays(arrays, names=selected), "DataFrame")


def _from_rows(rows: Sequence[Any], inputs: Sequence[str], id_column: str | None) -> RecordsBody:
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
    selected = _select(list(keys), inputs, id_column, "records")
    columns = {name: [row.get(name) for row in rows] for name in selected}
    return _from_value_columns(columns, "list of dicts")


def _from_columns(
    columns: Mapping[Any, Any], inputs: Sequence[str], id_column: str | None
) -> RecordsBody:
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
    selected = _select(list(lengths), inputs, id_column, "columns")
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


def _file_format(name: str, format: str | None, head: Callable[[], bytes]) -> str:
    """The content type of a records file, from ``format`` or else the file name's extension."""
    suffix = f".{format.lower().lstrip('.')}" if format is not None else Path(name).suffix.lower()
    if suffix == ".txt":
        return TSV if b"\t" in head().split(b"\n", 1)[0] else CSV
    if suffix not in FILE_FORMATS:
        what = f"format={format!r}" if format is not None else f"'{name}'"
        raise InvalidRecordsError(
            f"Cannot send {what}: a records file must be {_EXTENSIONS} (tab- or comma-separated "
            "text, JSON Lines, Parquet, or an Arrow IPC file or stream). Give format= for a file "
            "whose name does not end so, or load other formats into a pandas DataFrame first."
        )
    content_type = FILE_FORMATS[suffix]
    if content_type is None:  # .arrow and friends hold either Arrow layout
        return ARROW_FILE if head().startswith(_ARROW_FILE_MAGIC) else ARROW_STREAM
    return content_type


def _from_file(path: Path, format: str | None = None) -> RecordsBody:
    if not path.is_file():
        raise InvalidRecordsError(f"There is no records file at '{path}'.")

    def head() -> bytes:
        with open(path, "rb") as f:
            return f.readline(1 << 16)

    content_type = _file_format(path.name, format, head)
    return RecordsBody(
        content_type=content_type,
        pieces=lambda: _file_pieces(path),
        record_count=_file_record_count(path, content_type),
        columns=None,
        source=f"file {path.name}",
    )


def _file_record_count(path: Path, content_type: str) -> int | None:
    """A hint for sizing chunks, when it is cheap to know: CSV/TSV rows counted by newlines (a
    quoted field holding a newline makes it a bit high), and the counts Parquet and Arrow files
    keep in their footers."""
    if content_type in (CSV, TSV):
        return _count_lines(path)
    try:
        if content_type == PARQUET:
            import pyarrow.parquet as pq

            return int(pq.read_metadata(path).num_rows)
        if content_type == ARROW_FILE:
            import pyarrow as pa

            with pa.memory_map(str(path)) as mapped:
                reader = pa.ipc.open_file(mapped)
                return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except (OSError, ValueError):
        return None  # an unreadable file: the server says what is wrong with it
    return None


def _from_open_file(file: IO[bytes], format: str | None) -> RecordsBody:
    name = getattr(file, "name", None)
    if format is None and not isinstance(name, str):
        raise InvalidRecordsError(
            "This open file has no name to tell its format by: give format= (csv, tsv, jsonl, "
            "parquet, arrow, arrows)."
        )
    seekable = bool(getattr(file, "seekable", lambda: False)())
    start = file.tell() if seekable else 0

    def head() -> bytes:
        if not seekable:
            raise InvalidRecordsError(
                "Cannot tell the format of this file without reading it: give format= "
                "(csv, tsv, jsonl, parquet, arrow (an Arrow IPC file), arrows (a stream))."
            )
        line = file.readline(1 << 16)
        file.seek(start)
        return bytes(line)

    content_type = _file_format(str(name or ""), format, head)
    sent = [False]

    def pieces() -> Iterator[bytes]:
        # A seekable file is read from where it was given each time, so the body can be sent
        # again (after a token refresh); another can be read only once.
        if seekable:
            file.seek(start)
        elif sent[0]:
            raise InvalidRecordsError(
                "The records file cannot be read again (it is not seekable); start the batch "
                "again with a new file object."
            )
        sent[0] = True
        while piece := file.read(FILE_PIECE_BYTES):
            if isinstance(piece, str):
                raise InvalidRecordsError(
                    "The records file was opened in text mode; open it with open(path, 'rb')."
                )
            yield bytes(piece)

    return RecordsBody(
        content_type=content_type,
        pieces=pieces,
        record_count=None,
        columns=None,
        source=f"file {Path(name).name}" if isinstance(name, str) else "open file",
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


# -- an iterator of records ------------------------------------------------------------------------

_DECLARED_TYPES = {"int": "int64", "float": "float64", "str": "string", "bool": "bool_"}


def _from_iterator(
    records: Iterator[Any], inputs: Sequence[str] | Mapping[str, str], id_column: str | None
) -> RecordsBody:
    try:
        first = next(records)
    except StopIteration:
        raise _no_records("iterator") from None
    if not isinstance(first, Mapping):
        raise InvalidRecordsError(
            f"Record 0 is a {type(first).__name__}, not a dict: an iterator of records must yield "
            "one dict per record, like {'hp': 120, 'wt': 2.8}."
        )
    stream = _RecordStream(itertools.chain([first], records), inputs, id_column)
    return RecordsBody(
        content_type=ARROW_STREAM,
        pieces=stream.pieces,
        record_count=None,
        columns=None,
        source="iterator of records",
    )


class _RecordStream:
    """Records from an iterator, sent as an Arrow stream of record batches of bounded size.

    The stream's schema is that of the first batch: inputs take their declared types (or text,
    when a value of the first batch does not fit, so that the server fails only that record), other
    columns the type of their first values. Later batches are converted to it.
    """

    def __init__(
        self,
        records: Iterator[Any],
        inputs: Sequence[str] | Mapping[str, str],
        id_column: str | None,
        rows_per_batch: int | None = None,
    ) -> None:
        self.records = records
        self.inputs = list(inputs)
        self.types = dict(inputs) if isinstance(inputs, Mapping) else {}
        self.id_column = id_column
        self.rows_per_batch = rows_per_batch or ROWS_PER_BATCH
        self.sent = False

    def pieces(self) -> Iterator[bytes]:
        import pyarrow as pa

        if self.sent:
            raise InvalidRecordsError(
                "Records from an iterator can be sent only once; start the batch again with a "
                "new iterator."
            )
        self.sent = True
        sink = _PieceSink()
        writer: Any = None
        schema: Any = None
        number = 0
        while rows := list(itertools.islice(self.records, self.rows_per_batch)):
            for i, row in enumerate(rows, start=number):
                if not isinstance(row, Mapping):
                    raise InvalidRecordsError(
                        f"Record {i} is a {type(row).__name__}, not a dict: an iterator of "
                        "records must yield one dict per record."
                    )
            if schema is None:
                batch = self._first_batch(rows)
                schema = batch.schema
                writer = pa.ipc.new_stream(sink, schema)
            else:
                batch = self._batch(rows, schema, number)
            writer.write_batch(batch)
            number += len(rows)
            if piece := sink.take():
                yield piece
        if writer is not None:
            writer.close()
        if piece := sink.take():
            yield piece

    def _first_batch(self, rows: list[Mapping[str, Any]]) -> pa.RecordBatch:
        import pyarrow as pa

        keys: dict[str, None] = {}
        for row in rows:
            keys.update(dict.fromkeys(str(k) for k in row))
        names = _select(list(keys), self.inputs, self.id_column, "records")
        arrays = []
        for name in names:
            values = [row.get(name) for row in rows]
            declared = self.types.get(name)
            array = None
            if declared in _DECLARED_TYPES:
                try:
                    array = pa.array(values, type=getattr(pa, _DECLARED_TYPES[declared])())
                except _CONVERSION_ERRORS:
                    array = _as_strings(values, nan_is_null=False)
            if array is None:
                array = _values_array(values)
                if pa.types.is_null(array.type):
                    array = array.cast(pa.string())
            arrays.append(array)
        return pa.RecordBatch.from_arrays(arrays, names=names)

    def _batch(self, rows: list[Mapping[str, Any]], schema: pa.Schema, number: int) -> Any:
        import pyarrow as pa

        arrays = []
        for f in schema:
            values = [row.get(f.name) for row in rows]
            try:
                arrays.append(pa.array(values, type=f.type))
            except _CONVERSION_ERRORS:
                if pa.types.is_string(f.type):
                    arrays.append(_as_strings(values, nan_is_null=False))
                    continue
                bad = next(i for i, v in enumerate(values) if not _fits(v, f.type))
                raise InvalidRecordsError(
                    f"Record {number + bad} has {f.name}={values[bad]!r}, but the first records "
                    f"made {f.name!r} a {f.type} column; give every record a value of one type "
                    "for it."
                ) from None
        return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _fits(value: Any, data_type: Any) -> bool:
    import pyarrow as pa

    try:
        pa.array([value], type=data_type)
    except _CONVERSION_ERRORS:
        return False
    return True
