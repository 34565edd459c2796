"""What the scheduler sends to executors and what comes back: plain values.

Tasks cross to worker processes as JSON (:func:`task_to_wire`, :func:`task_from_wire`); what
comes back is checked as data (:func:`chunk_result`), never unpickled.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from batchserve.engine.inputs import PartRef
from batchserve.resources import DEFAULT_RESOURCES


def effective_resources(resources: dict[str, Any] | None) -> dict[str, Any]:
    """``resources`` with the defaults filled in (services published before resources could be
    set have none)."""
    return {**DEFAULT_RESOURCES, **(resources or {})}


# Its dicts make it unhashable: what is kept per service is keyed by ``key``.
@dataclass(frozen=True)
class ServiceSpec:
    """What a worker needs to load and run a service."""

    key: str  # cache key in the worker (the bundle's blob key)
    bundle_key: str
    mode: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    artifacts: tuple[str, ...]
    # Who published the code: a worker process only ever runs one publisher's code, so no
    # service can reach what another publisher's services were given.
    publisher: str = ""
    # What each worker of the service needs: ``num_cpus`` and ``num_gpus`` (numbers, fractions
    # allowed), ``memory`` (bytes; None: nothing reserved). A resource left out has its default
    # (:data:`~batchserve.resources.DEFAULT_RESOURCES`, see :func:`effective_resources`).
    resources: dict[str, Any] = field(default_factory=dict)


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
    # The batch's job preparation (run once by each worker before its first chunk of the batch)
    # and release (run by each such worker after the batch ends): blob keys of their bundles.
    preparation_key: str | None = None
    release_key: str | None = None


@dataclass(frozen=True)
class ReleaseTask:
    """Run a batch's job release code, in a worker that ran chunks of the batch, once the
    batch has ended. Nothing of it is reported to the batch: a failure is logged."""

    task_id: str
    batch_id: str
    release_key: str
    service: ServiceSpec
    environment: dict[str, str] = field(default_factory=dict)


def release_task_of(task: ChunkTask) -> ReleaseTask:
    """The job release a worker owes for having run ``task`` (which must have a release)."""
    assert task.release_key is not None
    return ReleaseTask(
        f"release-{task.batch_id}-{task.task_id}",
        task.batch_id,
        task.release_key,
        task.service,
        dict(task.environment),
    )


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


Task = ChunkTask | ConsumeTask | LoadTask | ReleaseTask
_KINDS: dict[str, type[Any]] = {
    "chunk": ChunkTask,
    "consume": ConsumeTask,
    "load": LoadTask,
    "release": ReleaseTask,
}


def task_to_wire(task: Task) -> dict[str, Any]:
    kind = next(k for k, t in _KINDS.items() if isinstance(task, t))
    return {"kind": kind, **dataclasses.asdict(task)}


def task_from_wire(data: dict[str, Any]) -> Task:
    fields = dict(data)
    cls = _KINDS[fields.pop("kind")]
    service = dict(fields["service"])
    service["artifacts"] = tuple(service["artifacts"])
    fields["service"] = ServiceSpec(**service)
    if cls is ChunkTask:
        fields["parts"] = tuple(PartRef(**p) for p in fields["parts"])
    return cls(**fields)


#: The figures a finished chunk reports (see :class:`Finished`).
CHUNK_FIGURES = (
    "succeeded",
    "failed",
    "retried",
    "timed_out",
    "cpu_user",
    "cpu_system",
    "bytes_in",
    "bytes_out",
    "run_seconds",
    "records_seconds",
    "load_seconds",
)
_COUNTS = {"succeeded", "failed", "retried", "timed_out", "bytes_in", "bytes_out"}


def chunk_result(raw: Any, count: int) -> dict[str, Any]:
    """A chunk's result as a worker reported it, checked: known figures only, as numbers in
    range (a worker runs untrusted code, so what it says is input like any other)."""
    if not isinstance(raw, dict):
        return {"error": "the worker sent an unreadable result"}
    if "error" in raw:
        return {"error": str(raw["error"])[:10_000]}
    out: dict[str, Any] = {}
    for name in CHUNK_FIGURES:
        value = raw.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            value = 0
        value = float(value)
        if not math.isfinite(value) or value < 0:
            value = 0.0
        out[name] = int(value) if name in _COUNTS else value
    out["succeeded"] = min(out["succeeded"], count)
    out["failed"] = min(out["failed"], count - out["succeeded"])
    return out


def consume_result(raw: Any, outputs: dict[str, str], artifacts: tuple[str, ...]) -> dict[str, Any]:
    """A consume's result row as a worker reported it, checked: the declared outputs with
    scalar values, the declared artifacts, text where text belongs."""
    if not isinstance(raw, dict):
        raw = {}
    if "error" in raw and "status" not in raw:  # the task itself failed (see the worker)
        raw = {"status": "failed", "error": raw["error"], "error_type": "WorkerError"}
    status = "succeeded" if raw.get("status") == "succeeded" else "failed"
    given = raw.get("outputs") if isinstance(raw.get("outputs"), dict) else {}
    files = raw.get("artifact_data") if isinstance(raw.get("artifact_data"), dict) else {}

    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    def number(value: Any) -> float | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else None

    return {
        "index": 0,
        "status": status,
        "outputs": {
            n: v
            for n, v in given.items()
            if n in outputs and (v is None or isinstance(v, (int, float, str, bool)))
        },
        "error": text(raw.get("error")),
        "error_type": text(raw.get("error_type")),
        "console_output": text(raw.get("console_output")) or "",
        "artifacts": [a for a in raw.get("artifacts") or [] if a in artifacts],
        "artifact_data": {n: v for n, v in files.items() if n in artifacts and isinstance(v, str)},
        "duration_ms": number(raw.get("duration_ms")),
        "attempts": int(number(raw.get("attempts")) or 1),
    }
