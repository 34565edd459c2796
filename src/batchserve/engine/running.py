"""What a node remembers of the chunks it runs, and the helpers every part of the scheduler
shares: a service's spec for the workers, result keys, and removing a batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchserve.blobs import BlobStore, keys
from batchserve.engine.tasks import ServiceSpec
from batchserve.store import Store
from batchserve.store.models import Chunk, Service


@dataclass
class RunningChunk:
    """A chunk this node runs: what the scheduler remembers of it while it runs."""

    batch_id: str
    chunk_id: int
    result_key: str
    count: int
    service_id: int
    started: float  # time.monotonic() at dispatch
    last_seen: float  # time.monotonic() of the last sign of progress
    # Seconds of silence after which the worker is presumed stuck past its task_timeout.
    stuck_after: float | None = None
    preemptible: bool = False  # its batch allows a higher priority to requeue it
    expected_end: float = 0.0  # time.monotonic() when it should finish, by the cost estimate
    costs_key: tuple[int, str] | None = None  # whose cost estimate it updates (service, bundle)
    claim_seconds: float = 0.0  # the scheduler's time claiming and sending it


def service_spec(service: Service) -> ServiceSpec:
    return ServiceSpec(
        key=service.bundle_key,
        bundle_key=service.bundle_key,
        mode=service.mode,
        inputs=dict(service.inputs),
        outputs=dict(service.outputs),
        artifacts=tuple(service.artifacts),
        publisher=str(service.owner_id),
        resources=dict(service.resources or {}),
    )


def result_key(chunk: Chunk, *, segmented: bool = False) -> str:
    return keys.result_key(chunk.batch_id, chunk.seq, chunk.attempts, segmented=segmented)


def scheduling_error(category: str, code: str, message: str, **details: str) -> dict[str, Any]:
    """A batch's ``scheduling_error`` as the store keeps it (Azure Batch's
    ``JobSchedulingError``): ``category`` is ``usererror`` (the batch asks for what cannot be)
    or ``servererror`` (the servers cannot run it now)."""
    return {"category": category, "code": code, "message": message, "details": details}


def remove_batch(store: Store, blobs: BlobStore, batch_id: str) -> None:
    """Remove a batch's files, then its rows: once its row is gone, nothing of it is left. (A
    crash in between leaves the row, and the removal is done again at start.)"""
    blobs.delete_prefix(keys.batch_prefix(batch_id))
    store.delete_batch(batch_id)
