"""A batch described the way Azure Batch describes a job (``BatchJob``), for ``Batch.info()``.

Like the models of Azure's SDK, each part reads as a mapping (``job["priority"]``, ``get``,
``keys``, ``items``, ``values``) and :meth:`~JobModel.as_dict` gives values that
``json.dumps`` takes: times as ISO-8601 text, durations as ISO-8601 durations (``PT10M``),
nested parts as dicts. Unlike them, the parts are read-only: change a batch with
``Batch.update()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

#: batchserve's batch states in Azure Batch's job vocabulary.
AZURE_JOB_STATES = {
    "created": "active",
    "pending": "active",
    "running": "active",
    "pausing": "disabling",
    "paused": "disabled",
    "enabling": "enabling",
    "deleting": "deleting",
    "cancelling": "terminating",
    "cancelled": "completed",
    "completed": "completed",
    "failed": "completed",
}


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


class JobModel:
    """What every part of the job view has: read as a mapping of its fields, and
    :meth:`as_dict`."""

    #: Fields the server sets, left out by ``as_dict(exclude_readonly=True)``.
    readonly_fields: ClassVar[frozenset[str]] = frozenset()

    def _names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]

    def as_dict(self, *, exclude_readonly: bool = False) -> dict[str, Any]:
        """The fields as JSON-ready values (``json.dumps(info.as_dict())`` works)."""
        return {
            name: _plain(getattr(self, name))
            for name in self._names()
            if not (exclude_readonly and name in self.readonly_fields)
        }

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(
                f"{type(self).__name__} has no field {key!r}; its fields: {self._names()}"
            )
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """The field ``key``, or ``default`` when there is none."""
        return getattr(self, key) if key in self._names() else default

    def keys(self) -> KeysView[str]:
        return dict.fromkeys(self._names()).keys()

    def values(self) -> ValuesView[Any]:
        return {n: getattr(self, n) for n in self._names()}.values()

    def items(self) -> ItemsView[str, Any]:
        return {n: getattr(self, n) for n in self._names()}.items()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, key: object) -> bool:
        return key in self._names()

    def __len__(self) -> int:
        return len(self._names())


@dataclass(frozen=True)
class MetadataItem(JobModel):
    name: str
    value: str


@dataclass(frozen=True)
class EnvironmentSetting(JobModel):
    name: str
    value: str


@dataclass(frozen=True)
class JobConstraints(JobModel):
    max_wall_clock_time: timedelta | None = None
    max_task_retry_count: int = 0
    task_timeout: timedelta | None = None
    max_failed_records: int | None = None
    task_failure_mode: str = "noaction"


@dataclass(frozen=True)
class JobSchedulingError(JobModel):
    """Why the batch cannot run, or could not (Azure Batch's ``JobSchedulingError``)."""

    category: str  # "usererror" (the batch or its service asks for what cannot be) or "servererror"
    code: str
    message: str
    details: tuple[MetadataItem, ...] = ()


@dataclass(frozen=True)
class JobPreparationTask(JobModel):
    """The batch's job preparation: a function each worker runs before its first chunk of the
    batch (Azure Batch's ``JobPreparationTask``; ``id`` is the function's name). Records wait
    for it (``wait_for_success``): where it fails, they fail with its error."""

    id: str
    size: int  # bytes of its code, as sent
    wait_for_success: bool = True


@dataclass(frozen=True)
class JobReleaseTask(JobModel):
    """The batch's job release: a function each worker that ran the batch runs after the batch
    ends (Azure Batch's ``JobReleaseTask``; ``id`` is the function's name)."""

    id: str
    size: int


@dataclass(frozen=True)
class JobExecutionInfo(JobModel):
    start_time: datetime | None
    end_time: datetime | None
    termination_reason: str | None
    scheduling_error: JobSchedulingError | None = None


@dataclass(frozen=True)
class JobStatistics(JobModel):
    """Live figures of the batch (not rolled up later, as Azure Batch does)."""

    succeeded_records: int
    failed_records: int
    cancelled_records: int
    total_records: int
    retried_records: int
    requeued_records: int
    timed_out_tries: int
    wall_clock_time: timedelta | None
    records_per_second: float | None
    user_cpu_time: timedelta
    kernel_cpu_time: timedelta
    wait_time: timedelta
    read_bytes: int
    write_bytes: int
    #: Where the batch's time went, in seconds (None: not known, or not yet): receiving and
    #: storing its records; from start until its first records ran; its workers' time on its
    #: chunks, summed over workers; the last download of all its results as one file.
    ingest_seconds: float | None = None
    queue_seconds: float | None = None
    run_seconds: float = 0.0
    export_seconds: float | None = None


@dataclass(frozen=True)
class BatchJobInfo(JobModel):
    """``BatchJob``'s fields that apply to a batch. It reads as a mapping of its fields, and
    :meth:`as_dict` gives JSON-ready values."""

    id: str
    display_name: str | None
    url: str
    etag: str
    last_modified: datetime
    creation_time: datetime
    state: str  # Azure Batch's job state (see AZURE_JOB_STATES)
    batch_state: str  # batchserve's own state
    state_transition_time: datetime
    previous_state: str | None
    previous_state_transition_time: datetime | None
    priority: int
    allow_task_preemption: bool
    max_parallel_tasks: int
    depends_on: tuple[str, ...]
    constraints: JobConstraints
    common_environment_settings: tuple[EnvironmentSetting, ...]
    metadata: tuple[MetadataItem, ...]
    execution_info: JobExecutionInfo
    job_statistics: JobStatistics
    #: ``noaction`` (an open batch: records may still be added, it ends only once closed) or
    #: ``terminatejob`` (it ends once every record has a result).
    all_tasks_complete_mode: str = "terminatejob"
    job_preparation_task: JobPreparationTask | None = None
    job_release_task: JobReleaseTask | None = None

    readonly_fields = frozenset(
        {
            "id",
            "url",
            "etag",
            "last_modified",
            "creation_time",
            "state",
            "batch_state",
            "state_transition_time",
            "previous_state",
            "previous_state_transition_time",
            "execution_info",
            "job_statistics",
        }
    )


def _plain(value: Any) -> Any:
    """``value`` as JSON takes it."""
    if isinstance(value, JobModel):
        return value.as_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _duration(value)
    return value


def _duration(span: timedelta) -> str:
    """An ISO-8601 duration, as Azure's SDK writes them: ``PT10M``, ``P1DT2H0.5S``."""
    sign = "-" if span < timedelta(0) else ""
    span = abs(span)
    hours, rest = divmod(span.seconds, 3600)
    minutes, secs = divmod(rest, 60)
    seconds = secs + span.microseconds / 1_000_000
    day = f"{span.days}D" if span.days else ""
    clock = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M")) if n) + (
        f"{seconds:g}S" if seconds else ""
    )
    if not day and not clock:
        return "PT0S"
    return f"{sign}P{day}" + (f"T{clock}" if clock else "")


def _span(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


_Task = TypeVar("_Task", JobPreparationTask, JobReleaseTask)


def job_info(info: dict[str, Any], base_url: str) -> BatchJobInfo:
    """Build the job view from a ``BatchPublic`` answer."""
    start, end = _time(info.get("start_time")), _time(info.get("end_time"))
    stats = info.get("statistics") or {}
    previous = info.get("previous_state")
    return BatchJobInfo(
        id=info["id"],
        display_name=info.get("display_name"),
        url=f"{base_url.rstrip('/')}/v1/batches/{info['id']}",
        etag=info["etag"],
        last_modified=_time(info["last_modified"]),  # type: ignore[arg-type]
        creation_time=_time(info["creation_time"]),  # type: ignore[arg-type]
        state=AZURE_JOB_STATES[info["state"]],
        batch_state=info["state"],
        state_transition_time=_time(info["state_transition_time"]),  # type: ignore[arg-type]
        previous_state=AZURE_JOB_STATES.get(previous) if previous else None,
        previous_state_transition_time=_time(info.get("previous_state_transition_time")),
        priority=int(info.get("priority") or 0),
        allow_task_preemption=bool(info.get("allow_preemption")),
        max_parallel_tasks=int(info["parallel_count"]),
        depends_on=tuple(info.get("depends_on") or ()),
        constraints=JobConstraints(
            max_wall_clock_time=_span(info.get("max_wall_clock_time")),
            max_task_retry_count=int(info.get("max_task_retry_count") or 0),
            task_timeout=_span(info.get("task_timeout")),
            max_failed_records=info.get("max_failed_records"),
            task_failure_mode=info.get("task_failure_mode") or "noaction",
        ),
        common_environment_settings=tuple(
            EnvironmentSetting(k, v) for k, v in (info.get("environment") or {}).items()
        ),
        metadata=tuple(MetadataItem(k, v) for k, v in (info.get("metadata") or {}).items()),
        execution_info=JobExecutionInfo(
            start, end, info.get("termination_reason"), _scheduling_error(info)
        ),
        job_statistics=JobStatistics(
            succeeded_records=int(info.get("succeeded_item_count") or 0),
            failed_records=int(info.get("failed_item_count") or 0),
            cancelled_records=int(info.get("cancelled_item_count") or 0),
            total_records=int(info.get("total_item_count") or 0),
            retried_records=int(stats.get("retried_records") or 0),
            requeued_records=int(stats.get("requeued_records") or 0),
            timed_out_tries=int(stats.get("timed_out_tries") or 0),
            wall_clock_time=_span(stats.get("wall_clock_seconds")),
            records_per_second=stats.get("records_per_second"),
            user_cpu_time=timedelta(seconds=stats.get("user_cpu_seconds") or 0.0),
            kernel_cpu_time=timedelta(seconds=stats.get("system_cpu_seconds") or 0.0),
            wait_time=timedelta(seconds=stats.get("wait_seconds") or 0.0),
            read_bytes=int(stats.get("read_bytes") or 0),
            write_bytes=int(stats.get("write_bytes") or 0),
            ingest_seconds=stats.get("ingest_seconds"),
            queue_seconds=stats.get("queue_seconds"),
            run_seconds=float(stats.get("run_seconds") or 0.0),
            export_seconds=stats.get("export_seconds"),
        ),
        all_tasks_complete_mode=info.get("on_all_tasks_complete") or "terminatejob",
        job_preparation_task=_job_task(JobPreparationTask, info.get("job_preparation_task")),
        job_release_task=_job_task(JobReleaseTask, info.get("job_release_task")),
    )


def _job_task(kind: type[_Task], raw: Any) -> _Task | None:
    if not isinstance(raw, dict):
        return None
    return kind(id=str(raw.get("name") or ""), size=int(raw.get("size") or 0))


def _scheduling_error(info: dict[str, Any]) -> JobSchedulingError | None:
    raw = info.get("scheduling_error")
    if not raw:
        return None
    return JobSchedulingError(
        category=str(raw.get("category") or "usererror"),
        code=str(raw.get("code") or ""),
        message=str(raw.get("message") or ""),
        details=tuple(MetadataItem(str(k), str(v)) for k, v in (raw.get("details") or {}).items()),
    )
