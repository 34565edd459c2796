"""A chunk's records: a range of record indexes read from the upload parts that hold it.

Parts are Arrow IPC files; a range is read as the slices of the record batches it covers, from
a random-access (on a local store, memory-mapped) file, so reading a range costs the range, not
the part. Workers read their chunk's inputs this way, and the API a chunk's record ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from batchserve.blobs import BlobStore


@dataclass(frozen=True)
class PartRef:
    """An upload part: its file and the records it holds, from ``start_index`` on."""

    key: str
    start_index: int
    count: int


def covering(parts: Sequence[PartRef], start: int, count: int) -> tuple[PartRef, ...]:
    """The parts (in order) that hold any record of ``[start, start + count)``."""
    stop = start + count
    return tuple(p for p in parts if p.start_index < stop and p.start_index + p.count > start)


def read_range(
    blobs: BlobStore, parts: Sequence[PartRef], start: int, count: int
) -> tuple[pa.Table, int]:
    """The records ``[start, start + count)`` as one table, and the bytes of the files read.

    Slices of parts whose column types differ (a column kept as text in one part for a bad
    value) are joined with such a column as text in every slice, which the worker checks value
    by value.
    """
    stop = start + count
    slices: list[pa.Table] = []
    read = 0
    for part in covering(parts, start, count):
        lo = max(start, part.start_index) - part.start_index
        hi = min(stop, part.start_index + part.count) - part.start_index
        with blobs.open_input_file(part.key) as f:
            reader = pa.ipc.open_file(f)
            batches: list[pa.RecordBatch] = []
            offset = 0
            for i in range(reader.num_record_batches):
                if offset >= hi:
                    break
                batch = reader.get_batch(i)
                rows = batch.num_rows
                if offset + rows > lo:
                    first = max(lo - offset, 0)
                    batches.append(batch.slice(first, min(hi - offset, rows) - first))
                    read += batch.nbytes
                offset += rows
            slices.append(pa.Table.from_batches(batches, schema=reader.schema))
    if not slices:
        raise LookupError(f"no upload part holds records {start} to {stop - 1}")
    if len(slices) == 1:
        return slices[0], read
    return pa.concat_tables(_alike(slices)), read


def _alike(tables: list[pa.Table]) -> list[pa.Table]:
    """Tables of one schema: a column whose type differs between them becomes text in all."""
    schema = tables[0].schema
    if all(t.schema == schema for t in tables):
        return tables
    differ = {name for name in schema.names if len({t.schema.field(name).type for t in tables}) > 1}
    out = []
    for table in tables:
        columns = [
            table.column(n).cast(pa.string()) if n in differ else table.column(n)
            for n in table.column_names
        ]
        out.append(pa.table(columns, names=table.column_names))
    return out
