"""A batch's results: pages of records, one record, the whole set as one file, and artifacts.

Results live in the chunks' result files (Arrow IPC streams, written as the chunks run), ids in
the upload parts, and the records that never ran only in their chunk's final state (cancelled or
failed): every reading here puts those together, in index order, a slice of a chunk at a time,
so that a batch of any size is read in bounded memory.
"""

from __future__ import annotations

import io
import json
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchserve.blobs import BlobNotFound, BlobStore, keys
from batchserve.blobs.segments import open_stream_reader
from batchserve.engine.errors import BadRequest, NotFound
from batchserve.engine.ingest import ID_FIELD, decode_type
from batchserve.engine.inputs import PartRef, read_range
from batchserve.engine.results import (
    cancelled_rows,
    failed_rows,
    flatten,
    iter_results,
    read_results,
)
from batchserve.states import ChunkState
from batchserve.store import Store
from batchserve.store.models import Batch, Chunk


class ResultOps:
    """Reads the results of batches (the callers have checked who may see them)."""

    def __init__(self, store: Store, blobs: BlobStore) -> None:
        self.store = store
        self.blobs = blobs

    def _parts(self, batch: Batch) -> list[PartRef]:
        return [PartRef(p.key, p.start_index, p.count) for p in self.store.parts(batch.id)]

    def _chunk_tables(
        self,
        batch: Batch,
        chunk: Chunk,
        parts: list[PartRef],
        lo: int | None = None,
        hi: int | None = None,
    ) -> Iterator[pa.Table]:
        """The result rows of a chunk that exist now (final ones, or a running chunk's so far)
        in index order, as tables of at most ``RESULT_SLICE_ROWS`` rows; with ``lo`` and ``hi``,
        those of records in ``[lo, hi)`` at least (rows outside may come along).

        Records of a cancelled or failed chunk without a result of their own get one made up
        (cancelled, or failed with the chunk's error), a slice at a time: the unclaimed rest of
        a stopped batch is one such chunk, of any size.
        """
        outputs = batch.options.get("outputs", {})
        first, end = chunk.start_index, chunk.start_index + chunk.count
        if lo is not None:
            first = max(first, lo)
        if hi is not None:
            end = min(end, hi)
        stopped = chunk.state in (ChunkState.CANCELLED.value, ChunkState.FAILED.value)
        if chunk.state == ChunkState.PENDING.value or chunk.result_key is None:
            if not stopped:
                return
            table = None
        elif not stopped:  # finished, or running: its result file as it is now, a piece at a time
            yield from self._with_ids(batch, self._result_file(chunk.result_key), parts)
            return
        else:
            try:
                with open_stream_reader(self.blobs, chunk.result_key) as f:
                    table = read_results(f, outputs)
            except BlobNotFound:
                table = None
            if table is not None and table.num_rows > 1:
                table = _in_order(table)

        def made_up(indexes: np.ndarray) -> pa.Table:
            if chunk.state == ChunkState.CANCELLED.value:
                return cancelled_rows(indexes, outputs, chunk.error or "cancelled")
            return failed_rows(
                indexes, outputs, chunk.error or "the chunk failed", "ChunkFailed", chunk.attempts
            )

        if table is None or not table.num_rows:
            for start in range(first, end, RESULT_SLICE_ROWS):
                stop = min(start + RESULT_SLICE_ROWS, end)
                yield from self._with_ids(batch, [made_up(np.arange(start, stop))], parts)
            return
        # A chunk stopped as it ran: its finished records and the rest, made up.
        done = table.column("index").to_numpy()
        missing = np.setdiff1d(np.arange(first, end, dtype=np.int64), done, assume_unique=True)
        if len(missing):
            table = pa.concat_tables([table, made_up(missing)]).sort_by("index")
        yield from self._with_ids(batch, [table], parts)

    def _result_file(self, key: str) -> Iterator[pa.Table]:
        """The rows of a result file, a record batch at a time, in index order. (A worker
        writes records in order, a batch at each flush; rows within a batch are put in order
        should they not be.)"""
        try:
            f = open_stream_reader(self.blobs, key)
        except BlobNotFound:
            return
        with f:
            for rb in iter_results(f):
                if rb.num_rows:
                    yield _in_order(pa.Table.from_batches([rb]))

    def _with_ids(
        self, batch: Batch, tables: Iterable[pa.Table], parts: list[PartRef]
    ) -> Iterator[pa.Table]:
        """``tables`` in slices of at most ``RESULT_SLICE_ROWS`` rows, each with its records'
        ids when the batch has an id column."""
        for table in tables:
            for start in range(0, table.num_rows, RESULT_SLICE_ROWS):
                piece = table.slice(start, RESULT_SLICE_ROWS)
                if batch.options.get("id_column"):
                    piece = piece.add_column(1, "id", self._ids(batch, piece, parts))
                yield piece

    def _ids(self, batch: Batch, rows: pa.Table, parts: list[PartRef]) -> pa.ChunkedArray:
        """The record ids of ``rows`` (results in index order), read from the upload parts."""
        id_type = _id_type(batch)
        index = rows.column("index")
        first = index[0].as_py()
        count = index[len(index) - 1].as_py() - first + 1
        try:
            ids = read_range(self.blobs, parts, first, count)[0].column(ID_FIELD)
        except (BlobNotFound, KeyError, LookupError):
            return pa.chunked_array([pa.nulls(rows.num_rows, id_type)])
        return ids.take(pc.subtract(index, first)).cast(id_type)

    def page(self, batch: Batch, start: int, limit: int) -> list[dict[str, Any]]:
        """Records with a final result whose index is in ``[start, start + limit)``."""
        stop = start + limit
        rows: list[dict[str, Any]] = []
        parts = self._parts(batch) if batch.options.get("id_column") else []
        for chunk in self.store.chunks_covering(batch.id, start, stop):
            for table in self._chunk_tables(batch, chunk, parts, start, stop):
                index = table.column("index")
                keep = pc.and_(pc.greater_equal(index, start), pc.less(index, stop))
                rows.extend(table.filter(keep).to_pylist())
        rows.sort(key=lambda r: r["index"])
        return rows

    def sorted_page(
        self, batch: Batch, column: str, descending: bool, start: int, limit: int
    ) -> list[dict[str, Any]] | None:
        """Places ``[start, start + limit)`` of the batch's results ordered by ``column``
        (``index``, ``status``, ``duration_ms``, ``attempts`` or ``output:<name>``), records
        without a value last either way and ties in index order; None when the batch has more
        than ``SORT_MAX_RECORDS`` records or the column's type has no order.

        Two passes in bounded memory: the column and the index of every record with a result
        (16 bytes a record for a number), then the rows of the page's records alone.
        """
        if batch.total_count > SORT_MAX_RECORDS:
            return None
        parts = self._parts(batch) if batch.options.get("id_column") else []
        values: list[pa.Array] = []
        indexes: list[pa.Array] = []
        for chunk in self.store.chunks(batch.id):
            for table in self._chunk_tables(batch, chunk, parts):
                values.extend(_sort_column(table, column).chunks)
                indexes.extend(table.column("index").chunks)
        if not sum(len(a) for a in indexes):
            return []
        keyed = pa.table({"value": pa.chunked_array(values), "index": pa.chunked_array(indexes)})
        order = [("value", "descending" if descending else "ascending"), ("index", "ascending")]
        try:
            taken = pc.sort_indices(keyed, sort_keys=order, null_placement="at_end")
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return None
        wanted = keyed.column("index").take(taken[start : start + limit]).to_pylist()
        found: dict[int, dict[str, Any]] = {}
        for chunk in self.store.chunks(batch.id):
            inside = [i for i in wanted if chunk.start_index <= i < chunk.start_index + chunk.count]
            if not inside:
                continue
            for table in self._chunk_tables(batch, chunk, parts, min(inside), max(inside) + 1):
                hit = table.filter(pc.is_in(table.column("index"), pa.array(inside, pa.int64())))
                found.update((row["index"], row) for row in hit.to_pylist())
        return [found[i] for i in wanted if i in found]

    def failures(
        self, batch: Batch, after: int, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Up to ``limit`` failed records with an index of ``after`` or more, in index order,
        and the index to continue from (None: no failed record follows). Only the chunks that
        hold failures are read, a few at a time, and a slice of a chunk at a time: a chunk that
        failed whole (millions of records, when a batch fails) is read no further than needed."""
        rows: list[dict[str, Any]] = []
        parts = self._parts(batch) if batch.options.get("id_column") else []
        position = after
        while True:
            chunks = self.store.chunks_with_failures(batch.id, position, FAILURE_CHUNKS)
            if not chunks:
                return rows, None
            for chunk in chunks:
                for table in self._chunk_tables(batch, chunk, parts, position):
                    keep = pc.and_(
                        pc.equal(table.column("status"), "failed"),
                        pc.greater_equal(table.column("index"), position),
                    )
                    found = table.filter(keep)
                    if found.num_rows > limit - len(rows):
                        rows.extend(found.slice(0, limit - len(rows)).to_pylist())
                        return rows, rows[-1]["index"] + 1
                    rows.extend(found.to_pylist())
                position = max(position, chunk.start_index + chunk.count)
                if len(rows) == limit:
                    return rows, position

    def inputs(self, batch: Batch, start: int, limit: int) -> list[dict[str, Any]]:
        """The input records whose index is in ``[start, start + limit)``, as the service gets
        them: ``{"index", "inputs"}``, and ``"id"`` when the batch has an id column. Only the
        upload parts' slices that hold the range are read."""
        stop = min(start + limit, batch.total_count)
        if start >= stop:
            return []
        try:
            table, _ = read_range(self.blobs, self._parts(batch), start, stop - start)
        except (BlobNotFound, LookupError):
            # Its parts are being removed with the batch.
            raise NotFound(f"The records of batch {batch.id} are no longer stored.") from None
        ids = None
        if ID_FIELD in table.column_names:
            ids = table.column(ID_FIELD).cast(_id_type(batch)).to_pylist()
            table = table.drop_columns([ID_FIELD])
        rows: list[dict[str, Any]] = []
        for offset, values in enumerate(table.to_pylist()):
            row: dict[str, Any] = {"index": start + offset, "inputs": values}
            if ids is not None:
                row["id"] = ids[offset]
            rows.append(row)
        return rows

    def record(self, batch: Batch, index: int) -> dict[str, Any]:
        if index < 0 or index >= batch.total_count:
            raise NotFound(
                f"Batch {batch.id} has records 0 to {batch.total_count - 1}; there is "
                f"no record {index}."
            )
        rows = self.page(batch, index, 1)
        if not rows:
            counts = self.store.batch_counts(batch.id)
            raise NotFound(
                f"Record {index} of batch {batch.id} has no result yet; the batch is "
                f"{batch.state} ({counts.completed} of {batch.total_count} done)."
            )
        return rows[0]

    def schema(self, batch: Batch, columns: list[str] | None = None) -> pa.Schema:
        """The columns of the streamed results: index, [id,] status, outputs, error, ...; or
        only ``columns`` of them, in that order."""
        table = read_results(b"", batch.options.get("outputs", {}))
        if batch.options.get("id_column"):
            table = table.add_column(1, "id", pa.nulls(0, _id_type(batch)))
        return _select(flatten(table), columns).schema

    def tables(self, batch: Batch, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Every finished result, flattened, in index order, a slice of a chunk at a time."""
        parts = self._parts(batch) if batch.options.get("id_column") else []
        for chunk in self.store.chunks(batch.id):
            for table in self._chunk_tables(batch, chunk, parts):
                yield _select(flatten(table), columns)

    def stream(
        self, batch: Batch, format: str, columns: list[str] | None = None
    ) -> Iterator[bytes]:
        """Every finished result as one file of ``format`` (see :data:`RESULT_FORMATS`),
        produced a slice of a chunk at a time: only a few slices are in memory at once.

        ``columns`` keeps only these result columns, in this order (``index``, ``id``,
        ``status``, each output by name, ``error``, ``error_type``, ``console_output``,
        ``attempts``, ``duration_ms``). The time a whole export takes is kept as the batch's
        ``export_seconds``.
        """
        if format not in RESULT_FORMATS:
            raise BadRequest(
                f"Unknown results format {format!r}; use one of {', '.join(RESULT_FORMATS)}."
            )
        schema = self.schema(batch, columns)  # a bad column is refused before streaming
        return self._timed(batch.id, self._stream(batch, format, schema, columns))

    def _stream(
        self, batch: Batch, format: str, schema: pa.Schema, columns: list[str] | None
    ) -> Iterator[bytes]:
        tables = self.tables(batch, columns)
        if format in ("csv", "tsv"):
            yield from _csv_stream(tables, schema, format)
            return
        sink = _Drain()
        writer: Any
        if format == "arrow":
            writer = pa.ipc.new_stream(sink, schema)
        elif format == "parquet":
            writer = pq.ParquetWriter(sink, schema)
        else:
            writer = None
        yield sink.take()
        for table in tables:
            if writer is None:
                sink.write(json_lines(table))
            else:
                writer.write_table(table)
            yield sink.take()
        if writer is not None:
            writer.close()
        yield sink.take()

    def _timed(self, batch_id: str, pieces: Iterator[bytes]) -> Iterator[bytes]:
        """``pieces``, and once all were taken, their time kept as the batch's export time."""
        began = time.perf_counter()
        yield from pieces
        self.store.set_batch_times(batch_id, export_seconds=time.perf_counter() - began)

    def artifacts(self, batch: Batch, index: int) -> list[str]:
        row = self.record(batch, index)
        return list(row.get("artifacts") or [])

    def artifact(self, batch: Batch, index: int, name: str) -> bytes:
        names = self.artifacts(batch, index)
        if name not in names:
            listed = ", ".join(names) if names else "none"
            raise NotFound(
                f"Record {index} of batch {batch.id} has no artifact {name!r} "
                f"(its artifacts: {listed})."
            )
        # The try of the record's chunk that wrote its result wrote its artifacts too.
        chunks = self.store.chunks_covering(batch.id, index, index + 1)
        attempt = chunks[0].attempts if chunks else 1
        for key in (
            keys.artifact_key(batch.id, index, name, attempt),
            keys.unfenced_artifact_key(batch.id, index, name),
        ):
            try:
                return self.blobs.read_bytes(key)
            except BlobNotFound:
                continue
        raise NotFound(f"The artifact {name!r} of record {index} is gone.")


#: The formats the whole result set can be streamed in (``GET .../results?format=``).
RESULT_FORMATS = ("arrow", "parquet", "csv", "tsv", "jsonl")
#: Chunks with failures looked at per store read while failed records are gathered.
FAILURE_CHUNKS = 20
#: Results are read and converted at most this many rows at a time.
RESULT_SLICE_ROWS = 1 << 17
#: Up to this many records a batch's results are sorted whole (the dashboard's results table);
#: sorting a larger one for each page shown would read every result each time.
SORT_MAX_RECORDS = 1_000_000


def _in_order(table: pa.Table) -> pa.Table:
    """``table`` sorted by record index, unless it is already (as a worker writes it)."""
    index = table.column("index").to_numpy()
    return table if (index[1:] > index[:-1]).all() else table.sort_by("index")


def _select(table: pa.Table, columns: list[str] | None) -> pa.Table:
    """``table`` with only ``columns`` (None: all), refused with a clear 400 when one is not a
    result column."""
    if columns is None:
        return table
    unknown = [c for c in columns if c not in table.column_names]
    if unknown or not columns:
        raise BadRequest(
            f"Unknown result column(s) {', '.join(repr(c) for c in unknown)}; the results of this "
            f"batch have the columns {', '.join(table.column_names)}."
            if unknown
            else "columns names no result column; leave it out to get every column."
        )
    return table.select(columns)


def _id_type(batch: Batch) -> pa.DataType:
    text = batch.options.get("id_type")
    return decode_type(text) if text else pa.null()


_JSON = json.JSONEncoder(default=str, ensure_ascii=False, allow_nan=False)


# Chunks of results turned into CSV at once: Arrow writes CSV without holding the GIL, so two
# threads keep two cores busy, and no more than this many chunks are held at a time.
CSV_THREADS = 2


def _csv_stream(tables: Iterator[pa.Table], schema: pa.Schema, format: str) -> Iterator[bytes]:
    """Result tables as one CSV (or TSV) file, in order, converted on CSV_THREADS threads."""
    delimiter = "\t" if format == "tsv" else ","

    def text(table: pa.Table, header: bool = False) -> bytes:
        sink = io.BytesIO()
        options = pacsv.WriteOptions(include_header=header, delimiter=delimiter)
        pacsv.write_csv(table, sink, write_options=options)
        return sink.getvalue()

    yield text(schema.empty_table(), header=True)
    with ThreadPoolExecutor(CSV_THREADS, thread_name_prefix="batchserve-csv") as pool:
        pending: deque[Future[bytes]] = deque()
        try:
            for table in tables:
                pending.append(pool.submit(text, table))
                if len(pending) >= CSV_THREADS:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # a download cut short: drop what was not sent yet
            for future in pending:
                future.cancel()


def json_lines(table: pa.Table) -> bytes:
    """Result rows as JSON Lines. NaN and infinite floats, which JSON cannot hold, become null;
    values JSON has no type for (dates, decimals) become text."""
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_floating(field.type):
            column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, field.type))
        columns.append(column)
    rows = pa.table(columns, schema=table.schema).to_pylist()
    return "".join(_JSON.encode(row) + "\n" for row in rows).encode("utf-8")


class _Drain:
    """A write-only file that hands out what was written since the last :meth:`take`."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        self._position += len(self._parts[-1])
        return len(self._parts[-1])

    def tell(self) -> int:
        return self._position

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def _sort_column(table: pa.Table, column: str) -> pa.ChunkedArray:
    """The values of ``column`` in result rows (an output's from its struct, with the nulls of
    records that have none)."""
    if not column.startswith("output:"):
        return table.column(column)
    name = column.removeprefix("output:")
    struct_type = table.schema.field("outputs").type
    i = struct_type.get_field_index(name)
    if i < 0:
        raise BadRequest(f"The results have no output {name!r}.")
    chunks = table.column("outputs").chunks
    return pa.chunked_array([c.flatten()[i] for c in chunks], struct_type.field(i).type)
