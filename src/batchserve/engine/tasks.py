"""What the scheduler sends to executors and what comes back: plain, picklable values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    """Run the records of one chunk file and write a result file."""

    task_id: str
    batch_id: str
    chunk_id: int
    start_index: int
    count: int
    attempt: int
    input_key: str
    result_key: str
    service: ServiceSpec
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ConsumeTask:
    """Run one record and return its result inline (request-response consumption)."""

    task_id: str
    inputs: dict[str, Any]
    service: ServiceSpec


@dataclass(frozen=True)
class Progress:
    task_id: str
    succeeded: int
    failed: int


@dataclass(frozen=True)
class Finished:
    """A task ran to its end. For a chunk, ``result`` holds the counts; for consume, the record."""

    task_id: str
    result: dict[str, Any]


@dataclass(frozen=True)
class Lost:
    """The worker running a task died (or was stopped) before the task finished."""

    task_id: str
    reason: str
    stopped: bool  # True when the executor stopped it on request (cancel), False on a crash


TaskEvent = Progress | Finished | Lost
