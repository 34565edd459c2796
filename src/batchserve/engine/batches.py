"""Batch operations: create (upload), start, cancel, delete, inspect, and read results."""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

import pyarrow as pa

from batchserve.blobs import BlobNotFound, BlobStore
from batchserve.engine.auth import Principal
from batchserve.engine.errors import BadRequest, Conflict, NotFound, PreconditionFailed
from batchserve.engine.ingest import ingest
from batchserve.engine.results import (
    cancelled_rows,
    failed_rows,
    flatten,
    read_results,
)
from batchserve.engine.runtime import artifact_key
from batchserve.engine.scheduler import CancelBatch, Scheduler, Wake
from batchserve.schema import SchemaError
from batchserve.states import BatchState, ChunkState, InvalidTransition, states_allowing
from batchserve.store import BatchCounts, RevisionMismatch, Store
from batchserve.store.models import Batch, Chunk, Service, utcnow


def choose_chunk_size(
    record_count: int | None, parallel_count: int, default: int, maximum: int
) -> int:
    """Enough chunks to keep every parallel slot busy (about four each), within limits."""
    if not record_count:
        return default
    return max(1, min(maximum, math.ceil(record_count / (4 * max(parallel_count, 1)))))


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
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        scheduler: Scheduler,
        *,
        default_chunk_size: int,
        max_chunk_size: int,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.scheduler = scheduler
        self.default_chunk_size = default_chunk_size
        self.max_chunk_size = max_chunk_size

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
    ) -> Batch:
        """Stream records into chunk files and create the batch (started unless ``start``)."""
        if not service.inputs:
            raise BadRequest(
                f"Service {service.name} {service.version} declares no inputs, so "
                "it cannot be batched; consume it instead."
            )
        if parallel_count < 1:
            raise BadRequest("parallel_count must be at least 1.")
        if chunk_size is not None and chunk_size < 1:
            raise BadRequest("chunk_size must be at least 1.")
        size = chunk_size or choose_chunk_size(
            record_count, parallel_count, self.default_chunk_size, self.max_chunk_size
        )
        batch_id = uuid.uuid4().hex
        opts = dict(options or {})
        priority = int(opts.pop("priority", 0) or 0)
        display_name = opts.pop("display_name", None)
        if not -1000 <= priority <= 1000:
            raise BadRequest("priority must be from -1000 to 1000.")
        opts.update(
            service={"name": service.name, "version": service.version},
            inputs=dict(service.inputs),
            outputs=dict(service.outputs),
        )
        self.store.add_batch(
            id=batch_id,
            service_id=service.id,
            owner_id=who.id,
            parallel_count=parallel_count,
            chunk_size=size,
            options=opts,
            priority=priority,
            display_name=display_name,
        )

        def on_chunk(seq: int, start_index: int, count: int, key: str) -> None:
            self.store.add_chunk(batch_id, seq, start_index, count, key)

        try:
            total = ingest(
                source,
                content_type,
                batch_id=batch_id,
                service=f"{service.name} {service.version}",
                inputs=service.inputs,
                chunk_size=size,
                blobs=self.blobs,
                on_chunk=on_chunk,
            )
        except SchemaError as exc:
            self._discard(batch_id)
            raise BadRequest(str(exc)) from None
        except BaseException:
            self._discard(batch_id)
            raise
        batch = self.store.update_batch(batch_id, total_count=total, sealed=True)
        assert batch is not None
        return self.start(who, batch_id) if start else batch

    def _discard(self, batch_id: str) -> None:
        self.store.delete_batch(batch_id)
        self.blobs.delete_prefix(f"batches/{batch_id}")

    def get(self, who: Principal, batch_id: str) -> Batch:
        batch = self.store.get_batch(batch_id)
        if batch is None or not batch.sealed or (not who.is_owner and batch.owner_id != who.id):
            raise NotFound(f"No batch {batch_id!r} exists (or it is not yours to see).")
        return batch

    def start(self, who: Principal, batch_id: str) -> Batch:
        batch = self._move(who, batch_id, BatchState.PENDING, "start")
        self.scheduler.post(Wake())
        if batch.total_count == 0:  # nothing to run: the scheduler completes it
            self.scheduler.post(Wake())
        return batch

    def cancel(self, who: Principal, batch_id: str, reason: str = "UserTerminate") -> Batch:
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

    def delete(self, who: Principal, batch_id: str) -> None:
        batch = self.get(who, batch_id)
        if not BatchState(batch.state).is_final:
            self.cancel(who, batch_id)
            # Let the scheduler stop the workers first, so none writes files after the removal
            # (it ignores events of batches that are gone, should this time run out).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                current = self.store.get_batch(batch_id)
                if current is None or BatchState(current.state).is_final:
                    break
                time.sleep(0.02)
        self.store.delete_batch(batch_id)
        self.blobs.delete_prefix(f"batches/{batch_id}")

    def _move(
        self, who: Principal, batch_id: str, wanted: BatchState, action: str, **fields: Any
    ) -> Batch:
        batch = self.get(who, batch_id)
        try:
            moved = self.store.transition(
                batch_id, wanted, only_from=[BatchState(batch.state)], **fields
            )
        except InvalidTransition:
            allowed = ", ".join(s.value for s in states_allowing(wanted))
            raise Conflict(
                f"Cannot {action} batch {batch_id}: it is {batch.state}; {action} is "
                f"allowed only when the batch is {allowed}.",
                state=batch.state,
            ) from None
        if moved is None:  # the state changed under us; report the fresh state
            raise Conflict(
                f"Batch {batch_id} changed state while it was being {action}ed; read it again."
            )
        return moved

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

    def _chunk_rows(self, batch: Batch, chunk: Chunk) -> pa.Table | None:
        """The result rows of a chunk that exist now: final ones, or a running chunk's so far."""
        outputs = batch.options.get("outputs", {})
        if chunk.state == ChunkState.PENDING.value or chunk.result_key is None:
            table = None
        else:
            try:
                with self.blobs.open_read(chunk.result_key) as f:
                    table = read_results(f, outputs)
            except BlobNotFound:
                table = None
        if chunk.state in (ChunkState.CANCELLED.value, ChunkState.FAILED.value):
            done = set(table.column("index").to_pylist()) if table is not None else set()
            missing = [
                i
                for i in range(chunk.start_index, chunk.start_index + chunk.count)
                if i not in done
            ]
            if missing:
                filler = (
                    cancelled_rows(missing, outputs, chunk.error or "cancelled")
                    if chunk.state == ChunkState.CANCELLED.value
                    else failed_rows(
                        missing,
                        outputs,
                        chunk.error or "the chunk failed",
                        "ChunkFailed",
                        chunk.attempts,
                    )
                )
                table = (
                    filler if table is None else pa.concat_tables([table, filler]).sort_by("index")
                )
        return table

    def results(self, batch: Batch, start: int, limit: int) -> list[dict[str, Any]]:
        """Records with a final result whose index is in ``[start, start + limit)``."""
        stop = start + limit
        rows: list[dict[str, Any]] = []
        for chunk in self.store.chunks_covering(batch.id, start, stop):
            table = self._chunk_rows(batch, chunk)
            if table is None:
                continue
            for row in table.to_pylist():
                if start <= row["index"] < stop:
                    rows.append(row)
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

    def results_arrow(self, batch: Batch) -> Iterator[bytes]:
        """Every finished result as one Arrow IPC stream, in index order, chunk by chunk."""
        outputs = batch.options.get("outputs", {})
        sink = _Drain()
        with pa.ipc.new_stream(sink, flatten(read_results(b"", outputs)).schema) as writer:
            yield sink.take()
            for chunk in self.store.chunks(batch.id):
                table = self._chunk_rows(batch, chunk)
                if table is not None and table.num_rows:
                    writer.write_table(flatten(table))
                    yield sink.take()
        yield sink.take()

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
            return self.blobs.read_bytes(artifact_key(batch.id, index, name))
        except BlobNotFound:
            raise NotFound(f"The artifact {name!r} of record {index} is gone.") from None


class _Drain:
    """A write-only file that hands out what was written since the last :meth:`take`."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(self._parts[-1])

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data
