"""Open batches (Azure Batch's jobs whose ``onAllTasksComplete`` is ``noaction``): records are
added while the batch waits or runs, taking its next indices, until it is closed. Part of
:class:`~batchserve.engine.batches.BatchOps`."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from batchserve.blobs import BlobStore, keys
from batchserve.engine.auth import Principal
from batchserve.engine.errors import (
    BadRequest,
    Conflict,
    NotFound,
    UnsupportedMediaType,
)
from batchserve.engine.ingest import (
    FORMATS,
    MAX_LINE_BYTES,
    ingest,
    unsupported,
)
from batchserve.engine.preconditions import check_etag, revision, stale
from batchserve.engine.scheduler import (
    CloseBatch,
    Scheduler,
    Wake,
)
from batchserve.schema import SchemaError
from batchserve.states import BatchState
from batchserve.store import RevisionMismatch, Store
from batchserve.store.models import Batch, is_open


class OpenBatches:
    store: Store
    blobs: BlobStore
    scheduler: Scheduler

    if TYPE_CHECKING:

        def get(self, who: Principal, batch_id: str) -> Batch: ...

    def add_records(
        self,
        who: Principal,
        batch_id: str,
        source: BinaryIO,
        content_type: str,
        *,
        spool_dir: Path | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> tuple[Batch, int, int]:
        """Add records to an open batch, while it waits or runs: they take its next indices
        and run like the others. Returns the batch, the index of the first record added and
        how many were. 409 when the batch is not open (or closed since), or is finished."""
        if content_type not in FORMATS:
            raise UnsupportedMediaType(str(unsupported(content_type)))
        batch = self.get(who, batch_id)
        if (problem := _no_more_records(batch)) is not None:
            raise Conflict(problem, state=batch.state)
        service = self.store.get_service_by_id(batch.service_id)
        if service is None:
            raise Conflict(f"The service of batch {batch_id} was deleted; it takes no records.")
        addition = uuid.uuid4().hex[:12]
        written: list[tuple[int, int, int, str]] = []

        def stored(seq: int, start_index: int, count: int, size: int, key: str) -> None:
            written.append((start_index, count, size, key))

        try:
            done = ingest(
                source,
                content_type,
                batch_id=batch_id,
                service=f"{service.name} {service.version}",
                inputs=service.inputs,
                blobs=self.blobs,
                on_part=stored,
                id_column=batch.options.get("id_column"),
                spool_dir=spool_dir,
                max_line_bytes=max_line_bytes,
                key_for=lambda seq: keys.added_part_key(batch_id, addition, seq),
            )
            first = self.store.append_parts(batch_id, written, done.records, _no_more_records)
        except SchemaError as exc:
            self._forget_parts(written)
            raise BadRequest(str(exc)) from None
        except ValueError as exc:  # closed, ended or deleted while the records arrived
            self._forget_parts(written)
            raise Conflict(str(exc)) from None
        except BaseException:
            self._forget_parts(written)
            raise
        self.scheduler.post(Wake())
        return self.get(who, batch_id), first, done.records

    def _forget_parts(self, written: list[tuple[int, int, int, str]]) -> None:
        for _, _, _, key in written:
            self.blobs.delete(key)

    def close(self, who: Principal, batch_id: str, *, if_match: str | None = None) -> Batch:
        """Close an open batch: it takes no more records, and completes once they are all done
        (Azure Batch's ``onAllTasksComplete`` becoming ``terminatejob``). Closing a batch that
        is not open changes nothing."""
        batch = self.get(who, batch_id)
        check_etag(batch, if_match)
        if not is_open(batch):
            return batch
        options = {**batch.options, "on_all_tasks_complete": "terminatejob", "closed_at": True}
        try:
            closed = self.store.update_batch(
                batch_id, expect_revision=revision(if_match), options=options
            )
        except RevisionMismatch as exc:
            raise stale(batch_id, if_match, exc.current) from None
        if closed is None:
            raise NotFound(f"No batch {batch_id!r} exists (or it is not yours to see).")
        self.scheduler.post(CloseBatch(batch_id))
        return closed


def _no_more_records(batch: Batch) -> str | None:
    """Why ``batch`` takes no more records, or None when it does (it is open, not finished)."""
    if batch.deleting_since is not None:
        return f"Batch {batch.id} is being deleted; it takes no records."
    if BatchState(batch.state).is_final or batch.state == BatchState.CANCELLING.value:
        return (
            f"Batch {batch.id} is {batch.state}; records can be added only to an open batch that "
            "is not finished."
        )
    if not is_open(batch):
        closed = "was closed" if batch.options.get("closed_at") else "is not open"
        return (
            f"Batch {batch.id} {closed}; records can be added only to an open batch (made with "
            "open=True, or on_all_tasks_complete=noaction) until it is closed."
        )
    return None
