"""Record uploads: parse a stream of records and write it into large columnar parts as it arrives.

Parts are the data plane's unit, cut for storage and reading (Arrow IPC files of up to
``PART_BYTES``), never for scheduling: the scheduler hands out record ranges over them later, of
whatever size suits the service, so the upload runs at parse and disk speed whatever the
service's history. Only the declared input columns (and the record id column, when the batch
names one) are kept. A few parsed blocks are in memory at a time, whatever the size of the upload.

CSV and TSV are cut into blocks of whole lines and parsed on two threads, numbers straight to
their declared types, and JSON Lines is parsed as it arrives (both in
:mod:`batchserve.engine.text_records`); so are Arrow IPC streams. Parquet and Arrow IPC files keep
their index at the end, so they are first spooled to a temporary file (bounded by the upload
limit) and then read row group by row group, or record batch by record batch.

Every upload is bounded as it is read: a line of CSV, TSV or JSON Lines may be at most
``max_line_bytes`` long (it is refused once it passes that, not once it has arrived whole), JSON
may nest at most :data:`~batchserve.schema.MAX_JSON_DEPTH` levels deep, and a column must hold
single values (:func:`check_column_types`).
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from batchserve.blobs import BlobStore, keys
from batchserve.engine.text_records import (
    BLOCK_BYTES,
    MAX_LINE_BYTES,
    CsvBlocks,
    JsonLines,
    buffered,
    csv_header,
)
from batchserve.schema import (
    SchemaError,
    check_columns,
    conform_column,
)

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

#: A part is closed once it holds this many bytes of Arrow data: large enough to be read and
#: written in few operations, small enough that a started batch's workers get records to run
#: while the rest of a long upload streams in.
PART_BYTES = 8 << 20
#: Record batches smaller than this are joined before they are written, so that a part is not
#: made of thousands of tiny batches (an upload of many small Arrow batches, say).
_MIN_BATCH_ROWS = 16_384

#: What an accepted column's type is, as said in the message refusing another.
ACCEPTED_TYPES = (
    "integers, floating point numbers, decimals, booleans, text (string, large_string), dates, "
    "times, timestamps, durations and nulls (or a dictionary of one of them)"
)


class UnsupportedFormat(SchemaError):
    """An upload whose content type is not a records format."""


def unsupported(content_type: str) -> UnsupportedFormat:
    return UnsupportedFormat(
        f"Unsupported records format {content_type!r}; send the records with a Content-Type of "
        f"one of {', '.join(FORMATS)}."
    )


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
    parts: int
    #: The type of the record id column (None when the batch has none).
    id_type: pa.DataType | None = None


def _scalar(data_type: pa.DataType) -> bool:
    """Whether a column of this type holds single values a service input can take."""
    types = pa.types
    if types.is_dictionary(data_type):
        return _scalar(data_type.value_type)
    return any(
        check(data_type)
        for check in (
            types.is_null,
            types.is_boolean,
            types.is_integer,
            types.is_floating,
            types.is_decimal,
            types.is_string,
            types.is_large_string,
            getattr(types, "is_string_view", lambda _: False),
            types.is_date,
            types.is_time,
            types.is_timestamp,
            types.is_duration,
        )
    )


def check_column_types(schema: pa.Schema, names: list[str], id_column: str | None) -> None:
    """Refuse a column of nested or binary values (struct, list, map, binary, ...) among
    ``names``: no input type takes them, and they cannot be turned into text one by one."""
    for name in names:
        data_type = schema.field(name).type
        if _scalar(data_type):
            continue
        role = "the id column" if name == id_column else "input column"
        raise SchemaError(
            f"The {role} {name!r} holds values of type {data_type}; a column must hold single "
            f"values, of one of these types: {ACCEPTED_TYPES}. Convert the column before "
            "uploading: flatten a struct into one column per field, send a list or binary value "
            "as text (JSON or base64) in a str input."
        )


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
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.source = source
        self.max_line_bytes = max_line_bytes
        self.content_type = content_type
        self.inputs = inputs
        self.service = service
        self.id_column = id_column
        self.spool_dir = spool_dir
        self.record_count: int | None = None
        self.wanted = list(inputs) + ([id_column] if id_column and id_column not in inputs else [])

    def check(self, columns: list[str], schema: pa.Schema | None = None) -> None:
        check_columns(columns, self.inputs, self.service)
        if self.id_column is not None and self.id_column not in columns:
            raise SchemaError(
                f"The records have no column {self.id_column!r} to take record ids from "
                f"(id_column); they have the columns {', '.join(repr(c) for c in columns)}. "
                "Name one of them, or leave id_column out."
            )
        if schema is not None:
            check_column_types(schema, self.wanted, self.id_column)

    def batches(self, spool: Callable[[], Path]) -> Iterator[pa.RecordBatch]:
        kind = self.content_type
        # Spooled first, so that a failure to write the copy (a full disk) is not taken for a
        # bad upload.
        path = spool() if kind in (PARQUET, ARROW_FILE) else None
        try:
            if kind == ARROW_STREAM:
                stream = pa.ipc.open_stream(self.source)
                self.check(stream.schema.names, stream.schema)
                yield from stream
            elif kind in (CSV, TSV):
                yield from self._csv("\t" if kind == TSV else ",")
            elif kind in (JSONL, NDJSON):
                yield from JsonLines(self).batches()
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
        source = buffered(self.source)
        # Check the header first, then read only the wanted columns: other columns are never
        # parsed, so their values cannot fail the upload.
        header = csv_header(source, delimiter)
        self.check(header)
        yield from CsvBlocks(
            source,
            header,
            delimiter,
            self.inputs,
            self.wanted,
            self.id_column,
            self.max_line_bytes,
        ).batches()

    def _parquet(self, path: Path) -> Iterator[pa.RecordBatch]:
        if path.stat().st_size == 0:
            raise SchemaError("The upload is empty: it holds no Parquet file, so no records.")
        # Mapped and not pre-buffered: only the row group being read is in memory (pre-buffering
        # would read every row group's columns up front).
        with pq.ParquetFile(path, memory_map=True, pre_buffer=False) as parquet:
            self.check(parquet.schema_arrow.names, parquet.schema_arrow)
            self.record_count = parquet.metadata.num_rows
            yield from parquet.iter_batches(batch_size=64 * 1024, columns=self.wanted)

    def _arrow_file(self, path: Path) -> Iterator[pa.RecordBatch]:
        if path.stat().st_size == 0:
            raise SchemaError("The upload is empty: it holds no Arrow file, so no records.")
        with pa.memory_map(str(path)) as mapped:
            reader = pa.ipc.open_file(mapped)
            self.check(reader.schema.names, reader.schema)
            # Mapped, so counting reads only the batches' headers.
            self.record_count = sum(
                reader.get_batch(i).num_rows for i in range(reader.num_record_batches)
            )
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i).select(self.wanted)


def _spool(source: BinaryIO, spool_dir: Path | None) -> tuple[Path, Callable[[], None]]:
    """Copy the upload to a temporary file (its size bounded by the body reader's limit)."""
    if spool_dir is not None:
        spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", dir=spool_dir)
    path = Path(name)
    try:
        with open(fd, "wb") as out:
            shutil.copyfileobj(source, out, BLOCK_BYTES)
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
    blobs: BlobStore,
    on_part: Callable[[int, int, int, int, str], None],
    id_column: str | None = None,
    spool_dir: Path | None = None,
    part_bytes: int = PART_BYTES,
    max_line_bytes: int = MAX_LINE_BYTES,
    key_for: Callable[[int], str] | None = None,
) -> Ingested:
    """Write the parts of an upload.

    ``on_part(seq, start_index, count, bytes, key)`` is called after each part file is written;
    ``seq`` and ``start_index`` count from 0 in this upload. ``key_for(seq)`` names a part's
    file (by default the batch's part ``seq``: records added later to an open batch name
    theirs otherwise).
    ``spool_dir`` holds the temporary copy of a Parquet or Arrow file upload while it is read.
    Raises :class:`~batchserve.schema.SchemaError` with a clear message on bad records
    (:class:`UnsupportedFormat` for an unknown content type), and
    :class:`~batchserve.engine.errors.PayloadTooLarge` for a line longer than
    ``max_line_bytes``.
    """
    if content_type not in FORMATS:
        raise unsupported(content_type)
    reader = _Reader(source, content_type, inputs, service, id_column, spool_dir, max_line_bytes)
    cleanups: list[Callable[[], None]] = []

    def spool() -> Path:
        path, cleanup = _spool(source, spool_dir)
        cleanups.append(cleanup)
        return path

    try:
        parts = _Parts(reader, batch_id, blobs, on_part, part_bytes, key_for)
        return parts.write(reader.batches(spool))
    finally:
        for cleanup in cleanups:
            cleanup()


class _Parts:
    """Writes an upload's record batches into part files, conformed to the declared types."""

    def __init__(
        self,
        reader: _Reader,
        batch_id: str,
        blobs: BlobStore,
        on_part: Callable[[int, int, int, int, str], None],
        part_bytes: int,
        key_for: Callable[[int], str] | None = None,
    ) -> None:
        self.reader = reader
        self.key_for = key_for or (lambda seq: keys.part_key(batch_id, seq))
        self.batch_id = batch_id
        self.blobs = blobs
        self.on_part = on_part
        self.part_bytes = part_bytes
        self.names = list(reader.inputs)
        self.id_type: pa.DataType | None = None
        self.total = 0  # records written
        self.seq = 0
        self._open: tuple[Any, Any, pa.Schema] | None = None  # file, writer, schema
        self._part_start = 0
        self._small: list[pa.RecordBatch] = []  # small batches waiting to be joined

    def write(self, batches: Iterator[pa.RecordBatch]) -> Ingested:
        reader = self.reader
        checked = False
        try:
            for rb in batches:
                if not checked:
                    reader.check(rb.schema.names, rb.schema)
                    checked = True
                if rb.num_rows == 0:
                    continue
                self._add(self._conform(rb.select(reader.wanted)))
            if not checked and self.names:
                raise SchemaError("The upload holds no records.")
            self._flush_small()
            self._close_part()
        except BaseException:
            self._abort_part()
            raise
        return Ingested(records=self.total, parts=self.seq, id_type=self.id_type)

    def _conform(self, rb: pa.RecordBatch) -> pa.RecordBatch:
        inputs = self.reader.inputs
        columns = [conform_column(rb.column(n), inputs[n]) for n in self.names]
        names = list(self.names)
        id_column = self.reader.id_column
        if id_column is not None:
            ids = rb.column(id_column)
            if self.id_type is None or pa.types.is_null(self.id_type):
                self.id_type = ids.type
            elif ids.type != self.id_type:
                try:
                    ids = ids.cast(self.id_type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    raise SchemaError(
                        f"The id column {id_column!r} holds values of different types "
                        f"({self.id_type} in the first records, {ids.type} from record "
                        f"{self.total + self._small_rows()} on); give every record an id of one "
                        "type."
                    ) from None
            columns.append(ids)
            names.append(ID_FIELD)
        return pa.RecordBatch.from_arrays(columns, names=names)

    def _small_rows(self) -> int:
        return sum(b.num_rows for b in self._small)

    def _add(self, rb: pa.RecordBatch) -> None:
        if self._small and self._small[0].schema != rb.schema:
            self._flush_small()
        if rb.num_rows >= _MIN_BATCH_ROWS and not self._small:
            self._write(rb)
            return
        self._small.append(rb)
        if self._small_rows() >= _MIN_BATCH_ROWS:
            self._flush_small()

    def _flush_small(self) -> None:
        if not self._small:
            return
        small, self._small = self._small, []
        joined = pa.Table.from_batches(small).combine_chunks()
        for rb in joined.to_batches():
            self._write(rb)

    def _write(self, rb: pa.RecordBatch) -> None:
        # A batch of other column types (a column kept as text for a bad value) starts a part
        # of its own: a part has one schema.
        if self._open is not None and self._open[2] != rb.schema:
            self._close_part()
        if self._open is None:
            key = self.key_for(self.seq)
            sink = self.blobs.open_write(key)
            self._open = (sink, pa.ipc.new_file(sink, rb.schema), rb.schema)
            self._part_start = self.total
            self._part_bytes = 0
        self._open[1].write_batch(rb)
        self.total += rb.num_rows
        self._part_bytes += rb.nbytes
        if self._part_bytes >= self.part_bytes:
            self._close_part()

    def _close_part(self) -> None:
        if self._open is None:
            return
        sink, writer, _ = self._open
        self._open = None
        writer.close()
        sink.close()
        key = self.key_for(self.seq)
        self.on_part(
            self.seq, self._part_start, self.total - self._part_start, self._part_bytes, key
        )
        self.seq += 1

    def _abort_part(self) -> None:
        if self._open is None:
            return
        sink = self._open[0]
        self._open = None
        abort = getattr(sink, "abort", None)
        if abort is not None:
            abort()
        else:
            sink.close()
