"""A batch's job preparation and release: Azure Batch's job preparation and release tasks, as
Python functions attached to a batch before it starts.

The code runs in the workers that run the batch's chunks (see :mod:`batchserve.worker.jobtasks`):
a worker process only ever runs one publisher's code, so only the service version's publisher,
or an owner, may attach it. The API process never unpickles it: it is kept as bytes under the
batch's folder and granted to the workers with their chunks.
"""

from __future__ import annotations

from typing import Any

from batchserve.blobs import BlobStore
from batchserve.blobs.keys import JOB_TASKS, job_task_key
from batchserve.engine.auth import Principal
from batchserve.engine.batches import BatchOps
from batchserve.engine.errors import BadRequest, Conflict, Forbidden, NotFound, check_text
from batchserve.states import BatchState
from batchserve.store import RevisionMismatch, Store
from batchserve.store.models import Batch

#: The batch option that describes each kind of job task (None or absent: the batch has none).
OPTION = {kind: f"job_{kind}_task" for kind in JOB_TASKS}


def job_task(batch: Batch, kind: str) -> dict[str, Any] | None:
    """What the batch says of its job ``kind`` task: ``{"name", "size"}``, or None."""
    found = batch.options.get(OPTION[kind])
    return dict(found) if isinstance(found, dict) else None


class JobTaskOps:
    def __init__(self, batches: BatchOps, store: Store, blobs: BlobStore) -> None:
        self.batches = batches
        self.store = store
        self.blobs = blobs

    def attach(
        self, who: Principal, batch_id: str, kind: str, code: bytes, name: str | None = None
    ) -> Batch:
        """Attach (or replace) the batch's job ``kind`` task: ``code`` is the SDK's bundle of it
        (a cloudpickled ``{"code": function or source}``), ``name`` what ``info()`` calls it."""
        if kind not in JOB_TASKS:
            raise NotFound(f"A batch has no job task {kind!r}; there are {', '.join(JOB_TASKS)}.")
        if not who.can_publish:
            raise Forbidden(
                f"User {who.username!r} is a {who.role}: a job {kind} is code run in the "
                "service's workers, which only its publisher or an owner may send."
            )
        batch = self.batches.get(who, batch_id)
        if batch.state != BatchState.CREATED.value:
            raise Conflict(
                f"A job {kind} is attached before the batch starts, and batch {batch_id} is "
                f"{batch.state}. Create the batch with start=false, attach it, then start it.",
                state=batch.state,
            )
        service = self.store.get_service_by_id(batch.service_id)
        if service is None:
            raise NotFound(f"The service of batch {batch_id} was deleted.")
        if not who.is_owner and service.owner_id != who.id:
            raise Forbidden(
                f"A job {kind} runs in the workers of the service's publisher, beside its code "
                f"and models: only the publisher of {service.name} {service.version}, or an "
                "owner, may attach one to its batches."
            )
        if not code:
            raise BadRequest(
                f"The body is empty: send the job {kind}'s bundle (the SDK makes it from a "
                f"function: svc.batch(..., {kind}=fn))."
            )
        label = name or kind
        check_text(label, "name", max_length=200)
        self.blobs.write_bytes(job_task_key(batch_id, kind), code)
        options = {**batch.options, OPTION[kind]: {"name": label, "size": len(code)}}
        try:
            updated = self.store.update_batch(
                batch_id, expect_revision=batch.revision, options=options
            )
        except RevisionMismatch:
            raise Conflict(
                f"Batch {batch_id} changed while its job {kind} was being attached (was it "
                "started?); read it again and retry."
            ) from None
        if updated is None:
            raise NotFound(f"No batch {batch_id!r} exists.")
        return updated
