"""Batch operations: create (upload), start, cancel, delete, inspect, and read results."""

from __future__ import annotations

import base64
import io
import json
import math
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchserve.blobs import BlobNotFound, BlobStore, keys
from batchserve.engine.auth import Principal
from batchserve.engine.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PreconditionFailed,
    UnsupportedMediaType,
    check_text,
)
from batchserve.engine.ingest import (
    FORMATS,
    ID_FIELD,
    decode_type,
    encode_type,
    ingest,
    unsupported,
)
from batchserve.engine.inputs import PartRef, read_range
from batchserve.engine.results import (
    cancelled_rows,
    failed_rows,
    flatten,
    iter_results,
    read_results,
)
from batchserve.engine.scheduler import (
    CancelBatch,
    DeleteBatch,
    DisableBatch,
    Scheduler,
    Wake,
    remove_batch,
)
from batchserve.schema import SchemaError
from batchserve.states import BatchState, ChunkState, InvalidTransition, states_allowing
from batchserve.store import BatchCounts, RevisionMismatch, Store
from batchserve.store.models import Batch, Chunk, Service, utcnow

DISABLE_MODES = ("requeue", "terminate", "wait")
MOVE_TRIES = 5  # a user's state change raced by the scheduler is tried again this many times
# How long a delete waits for the scheduler to stop the batch's workers and remove it, which
# usually takes a moment; past it the removal goes on after the answer.
DELETE_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class BatchPage:
    """One page of a batch listing; ``next_cursor`` asks for the next (None: this is the last)."""

    batches: list[Batch]
    next_cursor: str | None


def parse_states(values: list[str] | None) -> list[str] | None:
    """Canonical state names from repeated and/or comma-separated values; None means any."""
    names = [n.strip().lower() for v in values or [] for n in v.split(",") if n.strip()]
    valid = [s.value for s in BatchState if s.name.isupper()]
    bad = [n for n in names if n not in valid]
    if bad:
        raise BadRequest(
            f"Unknown batch state(s): {', '.join(repr(n) for n in bad)}; the states are "
            f"{', '.join(valid)}.",
            unknown=bad,
            states=valid,
        )
    return names or None


def encode_cursor(last: Batch) -> str:
    """The opaque position after ``last``: its (creation time, id), the listing's sort key."""
    raw = json.dumps([last.creation_time.isoformat(), last.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, batch_id = json.loads(raw)
        at = datetime.fromisoformat(when)
        if at.tzinfo is None or not isinstance(batch_id, str):
            raise ValueError(cursor)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise BadRequest(
            f"The cursor {cursor!r} is not one this server handed out; pass the next_cursor of "
            "the previous page, or leave cursor out to start from the newest batch."
        ) from None
    return at, batch_id


class BatchOps:
    def __init__(self, store: Store, blobs: BlobStore, scheduler: Scheduler) -> None:
        self.store = store
        self.blobs = blobs
        self.scheduler = scheduler

    # --- create and control -----------------------------------------------------------------

    def create(
        self,
        who: Principal,
        service: Service,
        source: BinaryIO,
        content_type: str,
        *,
        parallel_count: int = 10,
        chunk_size: int | None = None,
        record_count: int | None = None,
        start: bool = True,
        options: dict[str, Any] | None = None,
        id_column: str | None = None,
        spool_dir: Path | None = None,
    ) -> Batch:
        """Stream records into upload parts and create the batch (started unless ``start``).

        ``chunk_size`` fixes the records per chunk; without it, chunks are cut as they are handed
        out, from what the service's chunks cost. ``record_count`` is the count the client
        announced (not needed: the upload tells it). ``id_column`` names a column of the records
        whose values are carried into the results as each record's ``id``; ``spool_dir`` holds
        the temporary copy of a Parquet or Arrow file upload while it is read.
        """
        began = time.perf_counter()
        if content_type not in FORMATS:
            raise UnsupportedMediaType(str(unsupported(content_type)))
        if id_column is not None and not id_column.strip():
            raise BadRequest("id_column must name a column of the records; it is empty.")
        if id_column is not None:
            check_text(id_column, "id_column")
        if not service.inputs:
            raise BadRequest(
                f"Service {service.name} {service.version} declares no inputs, so "
                "it cannot be batched; consume it instead."
            )
        if parallel_count < 1:
            raise BadRequest("parallel_count must be at least 1.")
        if chunk_size is not None and chunk_size < 1:
            raise BadRequest("chunk_size must be at least 1.")
        batch_id = uuid.uuid4().hex
        opts = dict(options or {})
        priority = int(opts.pop("priority", 0) or 0)
        display_name = opts.pop("display_name", None)
        if not -1000 <= priority <= 1000:
            raise BadRequest("priority must be from -1000 to 1000.")
        if display_name is not None:
            check_text(display_name, "display_name", max_length=1024)
        _check_constraints(opts)
        if opts.get("depends_on"):
            opts["depends_on"] = self._dependencies(who, opts["depends_on"])
        opts.update(
            service={"name": service.name, "version": service.version},
            inputs=dict(service.inputs),
            outputs=dict(service.outputs),
        )
        if id_column is not None:
            opts["id_column"] = id_column
        self.store.add_batch(
            id=batch_id,
            service_id=service.id,
            owner_id=who.id,
            parallel_count=parallel_count,
            chunk_size=chunk_size or 0,
            options=opts,
            priority=priority,
            display_name=display_name,
        )
        if start:
            # Started at once: its records run as their parts are stored, while the rest of
            # the upload streams in. (Users see the batch only once its upload is complete.)
            self.store.transition(
                batch_id, BatchState.PENDING, only_from=[BatchState.CREATED], start_time=utcnow()
            )

        def stored(seq: int, start_index: int, count: int, size: int, key: str) -> None:
            self.store.add_part(batch_id, seq, start_index, count, size, key)
            if start:
                self.scheduler.post(Wake())

        try:
            done = ingest(
                source,
                content_type,
                batch_id=batch_id,
                service=f"{service.name} {service.version}",
                inputs=service.inputs,
                blobs=self.blobs,
                on_part=stored,
                id_column=id_column,
                spool_dir=spool_dir,
            )
        except SchemaError as exc:
            self._abandon(batch_id)
            raise BadRequest(str(exc)) from None
        except BaseException:
            self._abandon(batch_id)
            raise
        if done.id_type is not None:
            opts["id_type"] = encode_type(done.id_type)
        batch = self.store.update_batch(
            batch_id,
            total_count=done.records,
            sealed=True,
            options=opts,
            ingest_seconds=time.perf_counter() - began,
        )
        assert batch is not None
        if start:
            self.scheduler.post(Wake())  # the last records, and the end of the batch
        return batch

    def _abandon(self, batch_id: str) -> None:
        """Remove a batch whose upload failed. Its stored records may have begun to run: then
        the scheduler stops their workers before it removes the batch, so that none of them
        writes a file after the removal."""
        self.store.mark_deleting(batch_id)  # no chunk of it is handed out from now on
        batch = self.store.get_batch(batch_id)
        if batch is not None and batch.claimed:
            self.scheduler.post(DeleteBatch(batch_id))
        else:
            remove_batch(self.store, self.blobs, batch_id)

    def get(self, who: Principal, batch_id: str) -> Batch:
        return _visible(who, batch_id, self.store.get_batch(batch_id))

    def status(self, who: Principal, batch_id: str) -> tuple[Batch, BatchCounts, str | None]:
        """A batch, its counts and its creator's username, in one read (status polling)."""
        found = self.store.batch_status(batch_id)
        _visible(who, batch_id, found[0] if found else None)
        assert found is not None
        return found

    def _dependencies(self, who: Principal, ids: Any) -> list[str]:
        if isinstance(ids, str) or not isinstance(ids, (list, tuple)):
            raise BadRequest("depends_on must be a list of batch ids.")
        found: list[str] = []
        for other_id in ids:
            try:
                other = _visible(who, str(other_id), self.store.get_batch(str(other_id)))
            except NotFound:
                raise BadRequest(
                    f"depends_on names batch {other_id!r}, which does not exist (or is not "
                    "yours to see); a batch can depend only on batches that exist."
                ) from None
            found.append(other.id)
        return list(dict.fromkeys(found))

    def start(self, who: Principal, batch_id: str) -> Batch:
        batch = self._move(
            who,
            batch_id,
            BatchState.PENDING,
            "start",
            allowed_from=[BatchState.CREATED],
            start_time=utcnow(),
        )
        self.store.mark_queued(batch_id)
        self.scheduler.post(Wake())
        return batch

    def disable(self, who: Principal, batch_id: str, disable_tasks: str = "requeue") -> Batch:
        """Pause a batch: no new chunk of it starts; ``disable_tasks`` says what happens to the
        running ones (``requeue``, ``terminate`` or ``wait``). It is ``pausing`` until none
        runs, then ``paused``."""
        if disable_tasks not in DISABLE_MODES:
            raise BadRequest(
                f"disable_tasks must be one of {', '.join(DISABLE_MODES)}, not {disable_tasks!r}."
            )
        moved = self._move(
            who,
            batch_id,
            BatchState.PAUSING,
            "disable",
            allowed_from=[BatchState.PENDING, BatchState.RUNNING],
        )
        self.scheduler.post(DisableBatch(batch_id, disable_tasks))
        return moved

    def enable(self, who: Principal, batch_id: str) -> Batch:
        """Let a paused batch run again."""
        moved = self._move(
            who, batch_id, BatchState.PENDING, "enable", allowed_from=[BatchState.PAUSED]
        )
        self.store.mark_queued(batch_id)
        self.scheduler.post(Wake())
        return moved

    def cancel(self, who: Principal, batch_id: str, reason: str = "UserTerminate") -> Batch:
        check_text(reason, "The reason", max_length=200)
        batch = self.get(who, batch_id)
        if batch.state == BatchState.CREATED.value:
            self.store.finish_pending_chunks(batch_id, ChunkState.CANCELLED, "cancelled")
            return self._move(
                who,
                batch_id,
                BatchState.CANCELLED,
                "cancel",
                termination_reason=reason,
                end_time=utcnow(),
            )
        if BatchState(batch.state).is_final or batch.state == BatchState.CANCELLING.value:
            return batch  # cancelling a finished batch changes nothing (idempotent)
        moved = self._move(
            who, batch_id, BatchState.CANCELLING, "cancel", termination_reason=reason
        )
        self.scheduler.post(CancelBatch(batch_id, "cancelled before it ran"))
        return moved

    def update(
        self,
        who: Principal,
        batch_id: str,
        *,
        if_match: str | None = None,
        priority: int | None = None,
        parallel_count: int | None = None,
        metadata: dict[str, str] | None = None,
        max_failed_records: int | None = None,
        max_wall_clock_time: float | None = None,
        max_task_retry_count: int | None = None,
    ) -> Batch:
        """Change a batch's settings while it is not finished; ``if_match`` is an etag."""
        batch = self.get(who, batch_id)
        if BatchState(batch.state).is_final:
            raise Conflict(
                f"Batch {batch_id} is {batch.state}; its settings can be changed only while it is "
                "created, pending, running, pausing or paused.",
                state=batch.state,
            )
        expect = None
        if if_match is not None:
            try:
                expect = int(if_match.strip().removeprefix("W/").strip('"'))
            except ValueError:
                raise PreconditionFailed(
                    f"The If-Match value {if_match!r} is not an etag of "
                    "this server; read the batch for its etag."
                ) from None
        fields: dict[str, Any] = {}
        if priority is not None:
            if not -1000 <= priority <= 1000:
                raise BadRequest("priority must be from -1000 to 1000.")
            fields["priority"] = priority
        if parallel_count is not None:
            if parallel_count < 1:
                raise BadRequest("parallel_count must be at least 1.")
            fields["parallel_count"] = parallel_count
        options = dict(batch.options)
        if metadata is not None:
            options["metadata"] = dict(metadata)
        if max_failed_records is not None:
            options["max_failed_records"] = max_failed_records
        if max_wall_clock_time is not None:
            options["max_wall_clock_time"] = max_wall_clock_time
        if max_task_retry_count is not None:
            options["max_task_retry_count"] = max_task_retry_count
        _check_constraints(options)
        if options != batch.options:
            fields["options"] = options
        try:
            updated = self.store.update_batch(batch_id, expect_revision=expect, **fields)
        except RevisionMismatch as exc:
            raise PreconditionFailed(
                f"Batch {batch_id} changed since etag {if_match} was read (its etag is now "
                f'"{exc.current}"); read it again and retry with the new etag.'
            ) from None
        if updated is None:
            raise NotFound(f"No batch {batch_id!r} exists.")
        self.scheduler.post(Wake())  # a new priority or parallel count may free work now
        return updated

    def delete(self, who: Principal, batch_id: str) -> bool:
        """Delete a batch with its records, results and files, stopping it first if it runs.

        The batch is marked for deletion before anything else, and from then on it is gone for
        users: it is not found, not listed, and none of its chunks starts again. A finished
        batch is removed at once. One that is not finished is removed by the scheduler, once it
        has stopped the batch's workers, so that none writes a file after the removal; the call
        waits for that up to ``DELETE_WAIT_SECONDS``. True when the batch was removed, False when
        its removal goes on after the call. A removal cut short by a crash is finished when the
        engine starts again.
        """
        batch = self.get(who, batch_id)
        if not self.store.mark_deleting(batch_id):
            raise _not_found(batch_id)  # a delete that came first marked it
        if BatchState(batch.state).is_final:  # none of its workers runs
            remove_batch(self.store, self.blobs, batch_id)
            return True
        self.scheduler.post(DeleteBatch(batch_id))
        deadline = time.monotonic() + DELETE_WAIT_SECONDS
        while self.store.get_batch(batch_id) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _move(
        self,
        who: Principal,
        batch_id: str,
        wanted: BatchState,
        action: str,
        *,
        allowed_from: list[BatchState] | None = None,
        **fields: Any,
    ) -> Batch:
        """Move a batch for a user's ``action``; 409 naming the states that allow it when the
        batch is in another (``allowed_from``, by default every state the table allows).

        The scheduler may move the batch at the same moment (pending to running, say): the move
        is then tried again from the state it has now.
        """
        for _ in range(MOVE_TRIES):
            batch = self.get(who, batch_id)
            try:
                if allowed_from is not None and batch.state not in allowed_from:
                    raise InvalidTransition("batch", batch.state, wanted.value, frozenset())
                moved = self.store.transition(
                    batch_id, wanted, only_from=[BatchState(batch.state)], **fields
                )
            except InvalidTransition:
                allowed = ", ".join(s.value for s in (allowed_from or states_allowing(wanted)))
                raise Conflict(
                    f"Cannot {action} batch {batch_id}: it is {batch.state}; {action} is "
                    f"allowed only when the batch is {allowed}.",
                    state=batch.state,
                ) from None
            if moved is not None:
                return moved
        raise Conflict(
            f"Batch {batch_id} kept changing state while {action!r} was being applied; read it "
            "again and retry."
        )

    def list_batches(
        self,
        who: Principal,
        *,
        service: Service | None = None,
        services: list[Service] | None = None,
        states: list[str] | None = None,
        limit: int = 100,
    ) -> list[Batch]:
        """Up to ``limit`` batches ``who`` may see, newest first (see :meth:`list_page`)."""
        return self.list_page(
            who, service=service, services=services, states=states, limit=limit
        ).batches

    def list_page(
        self,
        who: Principal,
        *,
        service: Service | None = None,
        services: list[Service] | None = None,
        states: list[str] | None = None,
        metadata: dict[str, str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> BatchPage:
        """One page of the batches ``who`` may see (their own; an owner sees all), newest first.

        ``states`` are canonical state names (an entry may hold several, comma-separated);
        ``metadata`` keeps batches whose metadata has all these pairs. ``cursor`` is the
        ``next_cursor`` of the previous page; the page's own is None at the end.
        """
        ids = (
            [service.id]
            if service is not None
            else ([s.id for s in services] if services is not None else None)
        )
        page = self.store.list_batches(
            service_ids=ids,
            states=parse_states(states),
            metadata=metadata,
            created_after=created_after,
            created_before=created_before,
            limit=limit + 1,  # one more tells whether another page follows
            before=decode_cursor(cursor) if cursor else None,
            owner_id=None if who.is_owner else who.id,
        )
        more = len(page) > limit
        page = page[:limit]
        return BatchPage(page, encode_cursor(page[-1]) if more else None)

    def counts(self, batch_id: str) -> BatchCounts:
        return self.store.batch_counts(batch_id)

    # --- results ----------------------------------------------------------------------------

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
                with self.blobs.open_read(chunk.result_key) as f:
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
            f = self.blobs.open_read(key)
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

    def results(self, batch: Batch, start: int, limit: int) -> list[dict[str, Any]]:
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

    def result(self, batch: Batch, index: int) -> dict[str, Any]:
        if index < 0 or index >= batch.total_count:
            raise NotFound(
                f"Batch {batch.id} has records 0 to {batch.total_count - 1}; there is "
                f"no record {index}."
            )
        rows = self.results(batch, index, 1)
        if not rows:
            counts = self.counts(batch.id)
            raise NotFound(
                f"Record {index} of batch {batch.id} has no result yet; the batch is "
                f"{batch.state} ({counts.completed} of {batch.total_count} done)."
            )
        return rows[0]

    def results_schema(self, batch: Batch, columns: list[str] | None = None) -> pa.Schema:
        """The columns of the streamed results: index, [id,] status, outputs, error, ...; or
        only ``columns`` of them, in that order."""
        table = read_results(b"", batch.options.get("outputs", {}))
        if batch.options.get("id_column"):
            table = table.add_column(1, "id", pa.nulls(0, _id_type(batch)))
        return _select(flatten(table), columns).schema

    def results_tables(self, batch: Batch, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Every finished result, flattened, in index order, a slice of a chunk at a time."""
        parts = self._parts(batch) if batch.options.get("id_column") else []
        for chunk in self.store.chunks(batch.id):
            for table in self._chunk_tables(batch, chunk, parts):
                yield _select(flatten(table), columns)

    def results_stream(
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
        schema = self.results_schema(batch, columns)  # a bad column is refused before streaming
        return self._timed(batch.id, self._stream(batch, format, schema, columns))

    def _stream(
        self, batch: Batch, format: str, schema: pa.Schema, columns: list[str] | None
    ) -> Iterator[bytes]:
        tables = self.results_tables(batch, columns)
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

    def results_arrow(self, batch: Batch) -> Iterator[bytes]:
        """Every finished result as one Arrow IPC stream, in index order, chunk by chunk."""
        return self.results_stream(batch, "arrow")

    def artifacts(self, batch: Batch, index: int) -> list[str]:
        row = self.result(batch, index)
        return list(row.get("artifacts") or [])

    def artifact(self, batch: Batch, index: int, name: str) -> bytes:
        names = self.artifacts(batch, index)
        if name not in names:
            listed = ", ".join(names) if names else "none"
            raise NotFound(
                f"Record {index} of batch {batch.id} has no artifact {name!r} "
                f"(its artifacts: {listed})."
            )
        try:
            return self.blobs.read_bytes(keys.artifact_key(batch.id, index, name))
        except BlobNotFound:
            raise NotFound(f"The artifact {name!r} of record {index} is gone.") from None


def _check_constraints(options: dict[str, Any]) -> None:
    """Check a batch's limits and texts; a clear 400 for a wrong one."""
    wall = options.get("max_wall_clock_time")
    if wall is not None and not (_seconds(wall) and wall > 0):
        raise BadRequest("max_wall_clock_time must be a number of seconds greater than 0.")
    retries = options.get("max_task_retry_count")
    if retries is not None and not (isinstance(retries, int) and retries >= -1):
        raise BadRequest(
            "max_task_retry_count must be a whole number: 0 for no retry, N for up to N "
            "retries of a failed record, -1 for no limit."
        )
    timeout = options.get("task_timeout")
    if timeout is not None and not (_seconds(timeout) and timeout > 0):
        raise BadRequest("task_timeout must be a number of seconds greater than 0.")
    for what in ("metadata", "environment"):
        for key, value in (options.get(what) or {}).items():
            check_text(key, f"The {what} key {key!r}")
            check_text(value, f"The {what} value of {key!r}")


def _seconds(value: Any) -> bool:
    """A finite number: an infinite limit is no limit (leave it out), and JSON cannot hold it."""
    return isinstance(value, (int, float)) and math.isfinite(value)


#: The formats the whole result set can be streamed in (``GET .../results?format=``).
RESULT_FORMATS = ("arrow", "parquet", "csv", "tsv", "jsonl")
#: Results are read and converted at most this many rows at a time.
RESULT_SLICE_ROWS = 1 << 17


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


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch {batch_id!r} exists (or it is not yours to see).")


def _visible(who: Principal, batch_id: str, batch: Batch | None) -> Batch:
    """``batch`` if ``who`` may see it: its upload has finished, it is not being deleted, and it
    is theirs (an owner sees every batch)."""
    if (
        batch is None
        or not batch.sealed
        or batch.deleting_since is not None
        or (not who.is_owner and batch.owner_id != who.id)
    ):
        raise _not_found(batch_id)
    return batch
