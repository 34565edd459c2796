"""Record uploads: parse a stream of records and cut it into columnar chunk files as it arrives.

Only the declared input columns are kept. At most one chunk (plus one parsed block) is in
memory at a time, whatever the size of the upload.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv

from batchserve.blobs import BlobStore
from batchserve.schema import SchemaError, check_columns, conform_column

ARROW_STREAM = "application/vnd.apache.arrow.stream"
CSV = "text/csv"
TSV = "text/tab-separated-values"
FORMATS = (ARROW_STREAM, CSV, TSV)


def input_key(batch_id: str, seq: int) -> str:
    return f"batches/{batch_id}/inputs/{seq:06d}.arrow"


def _csv_header(source: Any, delimiter: str) -> list[str]:
    """The column names of a CSV/TSV upload, read without consuming the stream."""
    head = source.peek(1 << 20)[: 1 << 20]
    line = head.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r")
    if not line.strip():
        raise SchemaError("The upload holds no records (not even a header row).")
    return next(csv.reader([line], delimiter=delimiter))


def _batches(
    source: BinaryIO, content_type: str, inputs: dict[str, str], service: str
) -> Iterator[pa.RecordBatch]:
    try:
        if content_type == ARROW_STREAM:
            yield from pa.ipc.open_stream(source)
        elif content_type in (CSV, TSV):
            delimiter = "\t" if content_type == TSV else ","
            buffered: Any = (
                source
                if isinstance(source, io.BufferedReader)
                else io.BufferedReader(source, buffer_size=1 << 20)
            )
            # Check the header first, then read only the input columns: other columns are never
            # parsed, so their values cannot fail the upload.
            check_columns(_csv_header(buffered, delimiter), inputs, service)
            # Inputs are read as text and cast per chunk: a bad value then fails only its record.
            reader = pacsv.open_csv(
                buffered,
                read_options=pacsv.ReadOptions(block_size=1 << 20),
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in inputs},
                    include_columns=list(inputs),
                    strings_can_be_null=True,
                ),
            )
            yield from reader
        else:
            raise SchemaError(
                f"Unsupported records format {content_type!r}; send one of {', '.join(FORMATS)}."
            )
    except pa.ArrowInvalid as exc:
        raise SchemaError(f"The records cannot be read as {content_type}: {exc}") from None


def ingest(
    source: BinaryIO,
    content_type: str,
    *,
    batch_id: str,
    service: str,
    inputs: dict[str, str],
    chunk_size: int,
    blobs: BlobStore,
    on_chunk: Callable[[int, int, int, str], None],
) -> int:
    """Write the chunk files of an upload; returns the number of records.

    ``on_chunk(seq, start_index, count, key)`` is called after each chunk file is written.
    Raises :class:`~batchserve.schema.SchemaError` with a clear message on bad records.
    """
    names = list(inputs)
    buffered: list[pa.RecordBatch] = []
    buffered_rows = 0
    total = 0
    seq = 0
    checked = False

    def write(table: pa.Table) -> None:
        nonlocal seq, total
        columns = [conform_column(table.column(n), inputs[n]) for n in names]
        chunk = pa.table(columns, names=names)
        key = input_key(batch_id, seq)
        with blobs.open_write(key) as f, pa.ipc.new_file(f, chunk.schema) as w:
            w.write_table(chunk)
        on_chunk(seq, total, chunk.num_rows, key)
        seq += 1
        total += chunk.num_rows

    for rb in _batches(source, content_type, inputs, service):
        if not checked:
            check_columns(rb.schema.names, inputs, service)
            checked = True
        if rb.num_rows == 0:
            continue
        buffered.append(rb.select(names))
        buffered_rows += rb.num_rows
        while buffered_rows >= chunk_size:
            table = pa.Table.from_batches(buffered)
            write(table.slice(0, chunk_size))
            rest = table.slice(chunk_size)
            buffered = rest.to_batches()
            buffered_rows = rest.num_rows
    if not checked and names:
        raise SchemaError("The upload holds no records.")
    if buffered_rows:
        write(pa.Table.from_batches(buffered))
    return total
