"""The text formats of record uploads, CSV (and TSV) and JSON Lines: read in blocks of whole
lines, each line bounded by ``max_line_bytes`` as it is read, and parsed by pyarrow into record
batches of the declared input types. Used by :mod:`batchserve.engine.ingest`."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from batchserve.engine.errors import PayloadTooLarge
from batchserve.schema import (
    ARROW_TYPES,
    SchemaError,
    check_json_depth,
)

if TYPE_CHECKING:
    from batchserve.engine.ingest import _Reader as Reader

BLOCK_BYTES = 1 << 20
#: CSV is parsed in blocks of whole lines of about this size, on this many threads.
_CSV_BLOCK_BYTES = 4 << 20
_CSV_THREADS = 2
#: The longest line of CSV, TSV or JSON Lines read by default (BATCHSERVE_MAX_LINE_BYTES): a line
#: is held whole in memory while it is parsed.
MAX_LINE_BYTES = 64 << 20
#: The longest CSV or TSV header line.
MAX_HEADER_BYTES = 1 << 20


def line_too_long(line: int, limit: int, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Line {line} of the {what} records is longer than the limit of {limit} bytes "
        "(BATCHSERVE_MAX_LINE_BYTES) and was not read to its end. Each line must hold one "
        "record: check that the lines end with a line break (\\n), and keep large values out "
        "of the records."
    )


def csv_header(source: Any, delimiter: str) -> list[str]:
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


def buffered(source: BinaryIO) -> Any:
    if isinstance(source, io.BufferedReader):
        return source
    return io.BufferedReader(source, buffer_size=BLOCK_BYTES)


#: The texts a CSV value is missing as (pyarrow's, "NA", "null" and the like), but for the
#: spellings of NaN: a float input takes NaN as a value, as in every other format (the README,
#: "NaN and Infinity").
_CSV_NULLS = [v for v in pacsv.ConvertOptions().null_values if v.lower().lstrip("-") != "nan"]


class CsvBlocks:
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


class JsonLines:
    """JSON Lines, parsed by pyarrow a block of whole lines at a time.

    A block pyarrow refuses (a malformed line, or a value of another type than its neighbours)
    is parsed again line by line, which names the bad line, or keeps values that do not fit
    their declared type as text so that only their records fail.
    """

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.line = 0  # lines before the current block
        self.checked = False
        self.id_type: pa.DataType | None = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        source = buffered(self.reader.source)
        limit = self.reader.max_line_bytes
        while True:
            block = source.read(BLOCK_BYTES)
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
