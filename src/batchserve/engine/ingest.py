"""Record uploads: parse a stream of records and cut it into columnar chunk files as it arrives.

Only the declared input columns (and the record id column, when the batch names one) are kept.
At most one chunk (plus one parsed block) is in memory at a time, whatever the size of the upload.
CSV, TSV, JSON Lines and Arrow IPC streams are parsed as they arrive; Parquet and Arrow IPC files
keep their index at the end, so they are first spooled to a temporary file (bounded by the upload
limit) and then read row group by row group, or record batch by record batch.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from batchserve.blobs import BlobStore
from batchserve.schema import ARROW_TYPES, SchemaError, check_columns, conform_column

ARROW_STREAM = "application/vnd.apache.arrow.stream"
ARROW_FILE = "application/vnd.apache.arrow.file"
CSV = "text/csv"
TSV = "text/tab-separated-values"
JSONL = "application/jsonl"
NDJSON = "application/x-ndjson"
PARQUET = "application/vnd.apache.parquet"
FORMATS = (ARROW_STREAM, ARROW_FILE, CSV, TSV, JSONL, NDJSON, PARQUET)

#: The column of a chunk input file holding the record ids. Not an identifier, so it can never be
#: a service input, and workers (which read only the inputs) never see it.
ID_FIELD = "batchserve:id"

_BLOCK_BYTES = 1 << 20


class UnsupportedFormat(SchemaError):
    """An upload whose content type is not a records format."""


def unsupported(content_type: str) -> UnsupportedFormat:
    return UnsupportedFormat(
        f"Unsupported records format {content_type!r}; send the records with a Content-Type of "
        f"one of {', '.join(FORMATS)}."
    )


def input_key(batch_id: str, seq: int) -> str:
    return f"batches/{batch_id}/inputs/{seq:06d}.arrow"


def encode_type(data_type: pa.DataType) -> str:
    """An Arrow type as text, to keep in a batch's JSON options."""
    schema = pa.schema([pa.field("id", data_type)])
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def decode_type(text: str) -> pa.DataType:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text))).field(0).type


@dataclass(frozen=True)
class Ingested:
    """What an upload became."""

    records: int
    chunk_size: int
    #: The type of the record id column (None when the batch has none).
    id_type: pa.DataType | None = None


def _csv_header(source: Any, delimiter: str) -> list[str]:
    """The column names of a CSV/TSV upload, read without consuming the stream."""
    head = source.peek(1 << 20)[: 1 << 20]
    line = head.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r")
    if not line.strip():
        raise SchemaError("The upload holds no records (not even a header row).")
    return next(csv.reader([line], delimiter=delimiter))


def _buffered(source: BinaryIO) -> Any:
    if isinstance(source, io.BufferedReader):
        return source
    return io.BufferedReader(source, buffer_size=_BLOCK_BYTES)


class _Reader:
    """The record batches of one upload, and its record count when that is cheap to know."""

    def __init__(
        self,
        source: BinaryIO,
        content_type: str,
        inputs: dict[str, str],
        service: str,
        id_column: str | None,
        spool_dir: Path | None,
    ) -> None:
        self.source = source
        self.content_type = content_type
        self.inputs = inputs
        self.service = service
        self.id_column = id_column
        self.spool_dir = spool_dir
        self.record_count: int | None = None
        self.wanted = list(inputs) + ([id_column] if id_column and id_column not in inputs else [])

    def check(self, columns: list[str]) -> None:
        check_columns(columns, self.inputs, self.service)
        if self.id_column is not None and self.id_column not in columns:
            raise SchemaError(
                f"The records have no column {self.id_column!r} to take record ids from "
                f"(id_column); they have the columns {', '.join(repr(c) for c in columns)}. "
                "Name one of them, or leave id_column out."
            )

    def batches(self, spool: Callable[[], Path]) -> Iterator[pa.RecordBatch]:
        kind = self.content_type
        # Spooled first, so that a failure to write the copy (a full disk) is not taken for a
        # bad upload.
        path = spool() if kind in (PARQUET, ARROW_FILE) else None
        try:
            if kind == ARROW_STREAM:
                yield from pa.ipc.open_stream(self.source)
            elif kind in (CSV, TSV):
                yield from self._csv("\t" if kind == TSV else ",")
            elif kind in (JSONL, NDJSON):
                yield from _JsonLines(self).batches()
            elif kind == PARQUET and path is not None:
                yield from self._parquet(path)
            elif kind == ARROW_FILE and path is not None:
                yield from self._arrow_file(path)
            else:
                raise unsupported(kind)
        except (pa.ArrowException, OSError) as exc:
            # pyarrow reports damaged data as ArrowInvalid, or as OSError ("Couldn't deserialize
            # thrift", "Expected to be able to read 1600 bytes for message body").
            raise SchemaError(f"The records cannot be read as {kind}: {exc}") from None

    def _csv(self, delimiter: str) -> Iterator[pa.RecordBatch]:
        buffered = _buffered(self.source)
        # Check the header first, then read only the wanted columns: other columns are never
        # parsed, so their values cannot fail the upload.
        self.check(_csv_header(buffered, delimiter))
        # Inputs are read as text and cast per chunk: a bad value then fails only its record. Ids
        # stay text, as written (a leading zero is part of an id).
        reader = pacsv.open_csv(
            buffered,
            read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in self.wanted},
                include_columns=self.wanted,
                strings_can_be_null=True,
            ),
        )
        yield from reader

    def _parquet(self, path: Path) -> Iterator[pa.RecordBatch]:
        if path.stat().st_size == 0:
            raise SchemaError("The upload is empty: it holds no Parquet file, so no records.")
        # Mapped and not pre-buffered: only the row group being read is in memory (pre-buffering
        # would read every row group's columns up front).
        with pq.ParquetFile(path, memory_map=True, pre_buffer=False) as parquet:
            self.check(parquet.schema_arrow.names)
            self.record_count = parquet.metadata.num_rows
            yield from parquet.iter_batches(batch_size=64 * 1024, columns=self.wanted)

    def _arrow_file(self, path: Path) -> Iterator[pa.RecordBatch]:
        if path.stat().st_size == 0:
            raise SchemaError("The upload is empty: it holds no Arrow file, so no records.")
        with pa.memory_map(str(path)) as mapped:
            reader = pa.ipc.open_file(mapped)
            self.check(reader.schema.names)
            # Mapped, so counting reads only the batches' headers.
            self.record_count = sum(
                reader.get_batch(i).num_rows for i in range(reader.num_record_batches)
            )
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i).select(self.wanted)


class _JsonLines:
    """JSON Lines, parsed by pyarrow a block of whole lines at a time.

    A block pyarrow refuses (a malformed line, or a value of another type than its neighbours)
    is parsed again line by line, which names the bad line, or keeps values that do not fit
    their declared type as text so that only their records fail.
    """

    def __init__(self, reader: _Reader) -> None:
        self.reader = reader
        self.line = 0  # lines before the current block
        self.checked = False
        self.id_type: pa.DataType | None = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        source = _buffered(self.reader.source)
        while True:
            block = source.read(_BLOCK_BYTES)
            if not block:
                break
            if not block.endswith(b"\n"):
                block += source.readline()
            if self.line == 0 and block.startswith(b"\xef\xbb\xbf"):
                block = block[3:]
            table = self._parse(block)
            self.line += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
            if table is not None:
                yield from table.to_batches()

    def _schema(self) -> pa.Schema:
        fields = [pa.field(n, ARROW_TYPES[t]) for n, t in self.reader.inputs.items()]
        id_column = self.reader.id_column
        if id_column and id_column not in self.reader.inputs and self.id_type is not None:
            fields.append(pa.field(id_column, self.id_type))
        return pa.schema(fields)

    def _parse(self, block: bytes) -> pa.Table | None:
        id_column = self.reader.id_column
        infer = bool(id_column and id_column not in self.reader.inputs and self.id_type is None)
        table = None
        if self.checked:
            try:
                table = pajson.read_json(
                    io.BytesIO(block),
                    read_options=pajson.ReadOptions(block_size=len(block) + 1),
                    parse_options=pajson.ParseOptions(
                        explicit_schema=self._schema(),
                        unexpected_field_behavior="infer" if infer else "ignore",
                    ),
                )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                table = None
        if table is None:
            table = self._parse_lines(block)
        if table is None:
            return None
        if id_column and id_column not in self.reader.inputs and id_column in table.column_names:
            column = table.column(id_column)
            if self.id_type is None and not pa.types.is_null(column.type):
                self.id_type = column.type
        for name in self.reader.wanted:
            if name not in table.column_names:  # no record of the block has it
                table = table.append_column(name, pa.nulls(table.num_rows))
        return table.select(self.reader.wanted)

    def _parse_lines(self, block: bytes) -> pa.Table | None:
        rows: list[dict[str, Any]] = []
        keys: dict[str, None] = {}
        for n, raw in enumerate(block.split(b"\n"), start=self.line + 1):
            text = raw.strip()
            if not text:
                continue
            try:
                value = json.loads(text.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                why = exc.msg if isinstance(exc, json.JSONDecodeError) else "it is not UTF-8 text"
                raise SchemaError(
                    f"Line {n} of the JSON Lines records is not valid JSON ({why}). Each line "
                    'must hold one JSON object, like {"hp": 110, "wt": 2.6}; fix that line.'
                ) from None
            if not isinstance(value, dict):
                kind = _JSON_KINDS.get(type(value), "value")
                raise SchemaError(
                    f"Line {n} of the JSON Lines records holds a JSON {kind}, "
                    'not an object: each line must hold one record, like {"hp": 110, "wt": 2.6}.'
                )
            if not self.checked:
                keys.update(dict.fromkeys(value))
            rows.append(value)
        if not self.checked:
            if not rows:
                return None
            self.reader.check(list(keys))
            self.checked = True
        if not rows:
            return None
        columns = {}
        for name in self.reader.wanted:
            values = [row.get(name) for row in rows]
            if name in self.reader.inputs:
                columns[name] = _values(values)
            else:
                columns[name] = _id_values(values, self.id_type, name, self.line)
        return pa.table(columns)


_JSON_KINDS = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _values(values: list[Any]) -> pa.Array:
    """A column of JSON values; values of mixed types are kept as text (checked per record)."""
    try:
        array = pa.array(values)
        if not pa.types.is_nested(array.type):
            return array
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    return pa.array(
        [
            None
            if v is None
            else v
            if isinstance(v, str)
            else json.dumps(v)
            if isinstance(v, (dict, list))
            else str(v)
            for v in values
        ],
        type=pa.string(),
    )


def _id_values(values: list[Any], id_type: pa.DataType | None, name: str, line: int) -> pa.Array:
    try:
        array = pa.array(values, type=id_type) if id_type is not None else pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        raise SchemaError(
            f"The id column {name!r} holds values of different types (after line {line}, "
            f"values that are not {id_type}); give every record an id of one type."
        ) from None
    return array


def _spool(source: BinaryIO, spool_dir: Path | None) -> tuple[Path, Callable[[], None]]:
    """Copy the upload to a temporary file (its size bounded by the body reader's limit)."""
    if spool_dir is not None:
        spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", dir=spool_dir)
    path = Path(name)
    try:
        with open(fd, "wb") as out:
            shutil.copyfileobj(source, out, _BLOCK_BYTES)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, lambda: path.unlink(missing_ok=True)


def ingest(
    source: BinaryIO,
    content_type: str,
    *,
    batch_id: str,
    service: str,
    inputs: dict[str, str],
    chunk_size: int | Callable[[int | None], int],
    blobs: BlobStore,
    on_chunk: Callable[[int, int, int, str], None],
    id_column: str | None = None,
    spool_dir: Path | None = None,
) -> Ingested:
    """Write the chunk files of an upload.

    ``chunk_size`` is a number of records, or a function choosing it from the record count when
    the upload tells it cheaply (a Parquet or Arrow file), else from None. ``on_chunk(seq,
    start_index, count, key)`` is called after each chunk file is written. ``spool_dir`` holds
    the temporary copy of a Parquet or Arrow file upload while it is read. Raises
    :class:`~batchserve.schema.SchemaError` with a clear message on bad records
    (:class:`UnsupportedFormat` for an unknown content type).
    """
    if content_type not in FORMATS:
        raise unsupported(content_type)
    reader = _Reader(source, content_type, inputs, service, id_column, spool_dir)
    cleanups: list[Callable[[], None]] = []

    def spool() -> Path:
        path, cleanup = _spool(source, spool_dir)
        cleanups.append(cleanup)
        return path

    try:
        return _cut(reader.batches(spool), reader, batch_id, chunk_size, blobs, on_chunk)
    finally:
        for cleanup in cleanups:
            cleanup()


def _cut(
    batches: Iterator[pa.RecordBatch],
    reader: _Reader,
    batch_id: str,
    chunk_size: int | Callable[[int | None], int],
    blobs: BlobStore,
    on_chunk: Callable[[int, int, int, str], None],
) -> Ingested:
    inputs = reader.inputs
    names = list(inputs)
    id_column = reader.id_column
    buffered: list[pa.RecordBatch] = []
    buffered_rows = 0
    total = 0
    seq = 0
    checked = False
    size = chunk_size if isinstance(chunk_size, int) else 0
    id_type: pa.DataType | None = None

    def write(table: pa.Table) -> None:
        nonlocal seq, total, id_type
        columns = [conform_column(table.column(n), inputs[n]) for n in names]
        column_names = list(names)
        if id_column is not None:
            ids = table.column(id_column)
            if id_type is None or pa.types.is_null(id_type):
                id_type = ids.type
            elif ids.type != id_type:
                try:
                    ids = ids.cast(id_type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    raise SchemaError(
                        f"The id column {id_column!r} holds values of different types ({id_type} "
                        f"in the first records, {ids.type} from record {total} on); give every "
                        "record an id of one type."
                    ) from None
            columns.append(ids)
            column_names.append(ID_FIELD)
        chunk = pa.table(columns, names=column_names)
        key = input_key(batch_id, seq)
        with blobs.open_write(key) as f, pa.ipc.new_file(f, chunk.schema) as w:
            w.write_table(chunk)
        on_chunk(seq, total, chunk.num_rows, key)
        seq += 1
        total += chunk.num_rows

    for rb in batches:
        if not checked:
            reader.check(rb.schema.names)
            if id_column is not None and pa.types.is_nested(rb.schema.field(id_column).type):
                raise SchemaError(
                    f"The id column {id_column!r} holds {rb.schema.field(id_column).type} "
                    "values; record ids must be single values (text, numbers, dates)."
                )
            checked = True
            if not size:
                assert callable(chunk_size)
                size = chunk_size(reader.record_count)
        if rb.num_rows == 0:
            continue
        buffered.append(rb.select(reader.wanted))
        buffered_rows += rb.num_rows
        while buffered_rows >= size:
            table = pa.Table.from_batches(buffered)
            write(table.slice(0, size))
            rest = table.slice(size)
            buffered = rest.to_batches()
            buffered_rows = rest.num_rows
    if not checked and names:
        raise SchemaError("The upload holds no records.")
    if buffered_rows:
        write(pa.Table.from_batches(buffered))
    if not size and callable(chunk_size):
        size = chunk_size(reader.record_count)
    return Ingested(records=total, chunk_size=size, id_type=id_type)
