"""A batch described the way Azure Batch describes a job (``BatchJob``), for ``Batch.info()``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

#: batchserve's batch states in Azure Batch's job vocabulary.
AZURE_JOB_STATES = {
    "created": "active",
    "pending": "active",
    "running": "active",
    "pausing": "disabling",
    "paused": "disabled",
    "cancelling": "terminating",
    "cancelled": "completed",
    "completed": "completed",
    "failed": "completed",
}


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class MetadataItem:
    name: str
    value: str


@dataclass(frozen=True)
class EnvironmentSetting:
    name: str
    value: str


@dataclass(frozen=True)
class JobConstraints:
    max_wall_clock_time: timedelta | None = None
    max_task_retry_count: int = 0
    task_timeout: timedelta | None = None
    max_failed_records: int | None = None
    task_failure_mode: str = "noaction"


@dataclass(frozen=True)
class JobExecutionInfo:
    start_time: datetime | None
    end_time: datetime | None
    termination_reason: str | None


@dataclass(frozen=True)
class JobStatistics:
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
class BatchJobInfo:
    """``BatchJob``'s fields that apply to a batch. :meth:`as_dict` gives plain values."""

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
    readonly: frozenset[str] = field(
        default=frozenset(
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
        ),
        repr=False,
        compare=False,
    )

    def as_dict(self, exclude_readonly: bool = False) -> dict[str, Any]:
        out = {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name != "readonly" and not (exclude_readonly and f.name in self.readonly)
        }
        return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _span(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


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
        execution_info=JobExecutionInfo(start, end, info.get("termination_reason")),
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
    )
