"""Record uploads: parse a stream of records and write it into large columnar parts as it arrives.

Parts are the data plane's unit, cut for storage and reading (Arrow IPC files of up to
``PART_BYTES``), never for scheduling: the scheduler hands out record ranges over them later, of
whatever size suits the service, so the upload runs at parse and disk speed whatever the
service's history. Only the declared input columns (and the record id column, when the batch
names one) are kept. A few parsed blocks are in memory at a time, whatever the size of the upload.

CSV and TSV are cut into blocks of whole lines and parsed on two threads, numbers straight to
their declared types; JSON Lines and Arrow IPC streams are parsed as they arrive; Parquet and
Arrow IPC files keep their index at the end, so they are first spooled to a temporary file
(bounded by the upload limit) and then read row group by row group, or record batch by record
batch.

Every upload is bounded as it is read: a line of CSV, TSV or JSON Lines may be at most
``max_line_bytes`` long (it is refused once it passes that, not once it has arrived whole), JSON
may nest at most :data:`~batchserve.schema.MAX_JSON_DEPTH` levels deep, and a column must hold
single values (:func:`check_column_types`).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from batchserve.blobs import BlobStore, keys
from batchserve.engine.errors import PayloadTooLarge
from batchserve.schema import (
    ARROW_TYPES,
    SchemaError,
    check_columns,
    check_json_depth,
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

_BLOCK_BYTES = 1 << 20
#: A part is closed once it holds this many bytes of Arrow data: large enough to be read and
#: written in few operations, small enough that a started batch's workers get records to run
#: while the rest of a long upload streams in.
PART_BYTES = 8 << 20
#: Record batches smaller than this are joined before they are written, so that a part is not
#: made of thousands of tiny batches (an upload of many small Arrow batches, say).
_MIN_BATCH_ROWS = 16_384
#: CSV is parsed in blocks of whole lines of about this size, on this many threads.
_CSV_BLOCK_BYTES = 4 << 20
_CSV_THREADS = 2
#: The longest line of CSV, TSV or JSON Lines read by default (BATCHSERVE_MAX_LINE_BYTES): a line
#: is held whole in memory while it is parsed.
MAX_LINE_BYTES = 64 << 20
#: The longest CSV or TSV header line.
MAX_HEADER_BYTES = 1 << 20

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


def line_too_long(line: int, limit: int, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Line {line} of the {what} records is longer than the limit of {limit} bytes "
        "(BATCHSERVE_MAX_LINE_BYTES) and was not read to its end. Each line must hold one "
        "record: check that the lines end with a line break (\\n), and keep large values out "
        "of the records."
    )


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


def _csv_header(source: Any, delimiter: str) -> list[str]:
    """The column names of a CSV/TSV upload: its first line, read from the stream."""
    line = source.readline(MAX_HEADER_BYTES + 1)
    if len(line) > MAX_HEADER_BYTES and not line.endswith(b"\n"):
        raise SchemaError(
            f"The header row of the records is longer than {MAX_HEADER_BYTES} bytes; the first "
            "line must name the columns, separated by commas (tabs in TSV), and end with a line "
            "break."
        )
    text = line.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if not text.strip():
        raise SchemaError("The upload holds no records (not even a header row).")
    try:
        return next(csv.reader([text], delimiter=delimiter))
    except csv.Error as exc:  # a column name longer than the csv module's field limit (128 KiB)
        raise SchemaError(
            f"The header row of the records cannot be read ({exc}); it must name the columns, "
            "each name shorter than 128 KiB."
        ) from None


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
        header = _csv_header(buffered, delimiter)
        self.check(header)
        yield from _CsvBlocks(
            buffered,
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


#: The texts a CSV value is missing as (pyarrow's, "NA", "null" and the like), but for the
#: spellings of NaN: a float input takes NaN as a value, as in every other format (the README,
#: "NaN and Infinity").
_CSV_NULLS = [v for v in pacsv.ConvertOptions().null_values if v.lower().lstrip("-") != "nan"]


class _CsvBlocks:
    """A CSV/TSV upload cut into blocks of whole lines, each parsed on its own by pyarrow, two at
    a time on threads (pyarrow parses without the GIL), in order.

    Integer and float inputs are parsed straight to their declared types. A block in which one
    of them does not parse is parsed again with those columns as text, which the upload keeps as
    text so that only the records with a bad value fail, each naming its value (see
    :func:`~batchserve.schema.conform_column`). Like pyarrow's own CSV readers by default, the
    cut assumes no line break inside a quoted value. A line longer than ``max_line_bytes`` is
    refused as soon as that much of it has arrived.
    """

    def __init__(
        self,
        source: Any,
        header: list[str],
        delimiter: str,
        inputs: dict[str, str],
        wanted: list[str],
        id_column: str | None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.source = source
        self.max_line_bytes = max_line_bytes
        self.header = header
        self.parse_options = pacsv.ParseOptions(delimiter=delimiter)
        # (An input that is the id column too is read as text: the id keeps it as written.)
        typed = {
            n: ARROW_TYPES[t] for n, t in inputs.items() if t in ("int", "float") and n != id_column
        }
        # Ids stay text, as written (a leading zero is part of an id).
        text = {name: pa.string() for name in wanted}
        self.typed = pacsv.ConvertOptions(
            column_types={**text, **typed},
            include_columns=wanted,
            strings_can_be_null=True,
            null_values=_CSV_NULLS,
        )
        self.as_text = pacsv.ConvertOptions(
            column_types=text,
            include_columns=wanted,
            strings_can_be_null=True,
            null_values=_CSV_NULLS,
        )

    def _pieces(self) -> Iterator[bytes]:
        """The body after the header line (read by _csv_header already), as it arrives: each
        read returns what one read of the body gives, so a slow upload is parsed as far as it
        has come."""
        while True:
            piece = self.source.read1(_CSV_BLOCK_BYTES)
            if not piece:
                return
            yield piece

    def _parse(self, block: bytes) -> pa.Table:
        try:
            return self._read(block, self.typed)
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc).lower():
                raise  # not a value: the file itself is malformed
            return self._read(block, self.as_text)

    def _read(self, block: bytes, convert: pacsv.ConvertOptions) -> pa.Table:
        # The block is one piece of pyarrow's reading: it is in memory whole anyway, and a value
        # longer than pyarrow's own block size (1 MiB) would otherwise straddle two of them.
        read_options = pacsv.ReadOptions(
            column_names=self.header, use_threads=False, block_size=max(len(block) + 1, 1 << 20)
        )
        return pacsv.read_csv(
            pa.py_buffer(block),
            read_options=read_options,
            parse_options=self.parse_options,
            convert_options=convert,
        )

    def _blocks(self) -> Iterator[bytes]:
        """The body in blocks of whole lines of about ``_CSV_BLOCK_BYTES`` (or of one longer
        line)."""
        parts: list[bytes] = []  # the start of the next block
        size = 0
        line = 0  # bytes of the last line in parts, not ended yet
        lines = 1  # lines before parts (the header)
        for piece in self._pieces():
            parts.append(piece)
            size += len(piece)
            end = piece.rfind(b"\n")
            line = len(piece) - end - 1 if end >= 0 else line + len(piece)
            if line > self.max_line_bytes:
                counted = sum(p.count(b"\n") for p in parts)
                raise line_too_long(lines + counted + 1, self.max_line_bytes, "CSV")
            if size >= _CSV_BLOCK_BYTES and end >= 0:  # else read on to the end of a line
                data = b"".join(parts)
                cut = len(data) - line
                lines += data.count(b"\n", 0, cut)
                yield data[:cut]
                parts, size = [data[cut:]], line
        rest = b"".join(parts)
        if rest.strip():
            yield rest

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The parsed record batches, in order. A thread of its own reads the body and hands the
        blocks to the parsers, so that blocks parsed so far are written while the upload waits
        for more (a slow client, or the rest of a long upload)."""
        pool = ThreadPoolExecutor(_CSV_THREADS, thread_name_prefix="batchserve-csv-in")
        parsed: queue.Queue[Future[pa.Table] | BaseException | None] = queue.Queue(_CSV_THREADS + 1)
        stop = threading.Event()

        def cut() -> None:
            try:
                for block in self._blocks():
                    if stop.is_set():
                        return
                    parsed.put(pool.submit(self._parse, block))
                parsed.put(None)
            except BaseException as exc:  # handed to the reader of the batches
                with contextlib.suppress(queue.Full):
                    parsed.put(exc, timeout=1)

        cutter = threading.Thread(target=cut, name="batchserve-csv-cut", daemon=True)
        cutter.start()
        try:
            while True:
                item = parsed.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield from item.result().to_batches()
        finally:
            # An upload cut short (or done): the cutter stops at its next block, or once the
            # body it reads is closed; the blocks not parsed yet are dropped.
            stop.set()
            with contextlib.suppress(queue.Empty):
                while True:
                    parsed.get_nowait()
            pool.shutdown(wait=False, cancel_futures=True)


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
        limit = self.reader.max_line_bytes
        while True:
            block = source.read(_BLOCK_BYTES)
            if not block:
                break
            if not block.endswith(b"\n"):
                # The rest of the last line, read no further than the limit.
                start = block.rfind(b"\n") + 1
                block += source.readline(max(limit - (len(block) - start), 0) + 1)
                if len(block.rstrip(b"\r\n")) - start > limit:
                    line = self.line + block.count(b"\n", 0, start) + 1
                    raise line_too_long(line, limit, "JSON Lines")
            if self.line == 0 and block.startswith(b"\xef\xbb\xbf"):
                block = block[3:]
            # Before any parser sees it: pyarrow's crashes the process on deep nesting.
            check_json_depth(block, "the JSON Lines records", lines=True, lines_before=self.line)
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
    blobs: BlobStore,
    on_part: Callable[[int, int, int, int, str], None],
    id_column: str | None = None,
    spool_dir: Path | None = None,
    part_bytes: int = PART_BYTES,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Ingested:
    """Write the parts of an upload.

    ``on_part(seq, start_index, count, bytes, key)`` is called after each part file is written.
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
        parts = _Parts(reader, batch_id, blobs, on_part, part_bytes)
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
    ) -> None:
        self.reader = reader
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
            key = keys.part_key(self.batch_id, self.seq)
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
        key = keys.part_key(self.batch_id, self.seq)
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
