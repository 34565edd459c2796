"""What the scheduler sends to executors and what comes back: plain, picklable values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from batchserve.engine.inputs import PartRef


@dataclass(frozen=True)
class ServiceSpec:
    """What a worker needs to load and run a service."""

    key: str  # cache key in the worker (the bundle's blob key)
    bundle_key: str
    mode: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    artifacts: tuple[str, ...]


@dataclass(frozen=True)
class ChunkTask:
    """Run the records ``[start_index, start_index + count)``, read from the upload ``parts``
    that hold them, and write a result file."""

    task_id: str
    batch_id: str
    chunk_id: int
    start_index: int
    count: int
    attempt: int
    parts: tuple[PartRef, ...]
    result_key: str
    service: ServiceSpec
    environment: dict[str, str] = field(default_factory=dict)
    # A record that fails is tried again this many times (-1: until it succeeds), in place.
    max_task_retry_count: int = 0
    # Seconds one try of a record (row mode) or one call (vectorized) may run; None: no limit.
    task_timeout: float | None = None


@dataclass(frozen=True)
class ConsumeTask:
    """Run one record and return its result inline (request-response consumption)."""

    task_id: str
    inputs: dict[str, Any]
    service: ServiceSpec


@dataclass(frozen=True)
class LoadTask:
    """Load a service into the worker (running its init), ahead of its first records: a newly
    published service is loaded by idle workers, so its first batch does not wait for it."""

    task_id: str
    service: ServiceSpec


@dataclass(frozen=True)
class Progress:
    task_id: str
    succeeded: int
    failed: int


@dataclass(frozen=True)
class Finished:
    """A task ran to its end. For consume, ``result`` is the record; for a chunk, the counts:

    ``succeeded``, ``failed`` (records), ``retried`` (tries after the first, over all records),
    ``timed_out`` (tries stopped by ``task_timeout``), ``cpu_user`` and ``cpu_system`` (seconds
    of the worker process spent on the task), ``bytes_in`` (bytes of the chunk's inputs read),
    ``bytes_out`` (bytes of results written), ``run_seconds`` (the worker's time on the task),
    ``records_seconds`` (the part of it spent on the records: reading their columns, running
    them, writing their results) and ``load_seconds`` (loading the service, when this task
    loaded it). A chunk that could not run has ``error`` instead.
    """

    task_id: str
    result: dict[str, Any]


@dataclass(frozen=True)
class Lost:
    """The worker running a task died (or was stopped) before the task finished."""

    task_id: str
    reason: str
    stopped: bool  # True when the executor stopped it on request (cancel), False on a crash


TaskEvent = Progress | Finished | Lost
