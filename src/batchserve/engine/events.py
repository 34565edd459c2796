"""What the scheduler's loop is told, besides its tasks' events: plain values put on its queue
by the API's requests and by the node's listeners (:meth:`Scheduler.post`)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from batchserve.engine.tasks import ConsumeTask, ServiceSpec


@dataclass(frozen=True)
class Wake:
    """Something changed in the store (a batch was started); look for work."""


@dataclass(frozen=True)
class ConsumeWaiting:
    """A one-record request waits in the store for a node with workers."""


@dataclass(frozen=True)
class WarmService:
    """A service was published (or its code replaced): idle workers load it now."""

    service: ServiceSpec


@dataclass(frozen=True)
class CancelBatch:
    batch_id: str
    reason: str


@dataclass(frozen=True)
class DeleteBatch:
    """Remove a batch marked for deletion (see :meth:`Store.mark_deleting`)."""

    batch_id: str


@dataclass(frozen=True)
class CloseBatch:
    """An open batch was closed: it completes if its records are all done already."""

    batch_id: str


@dataclass(frozen=True)
class EnableBatch:
    """Queue again the chunks of a batch that is now ``enabling``, and make it ``pending``."""

    batch_id: str


@dataclass(frozen=True)
class DisableBatch:
    """Pause a batch that is now ``pausing``; ``mode`` says what happens to its running chunks:
    ``requeue`` (stopped and queued again), ``terminate`` (stopped; their unfinished records
    fail) or ``wait`` (left to finish)."""

    batch_id: str
    mode: str


@dataclass(frozen=True)
class ConsumeRequest:
    task: ConsumeTask
    future: Future[dict[str, Any]]


@dataclass(frozen=True)
class ConsumeOver:
    """A consume ended (answered), or its caller gave up on it (``abandoned``: it timed out or
    the client went away), so its worker must stop."""

    task_id: str
    abandoned: bool = False
