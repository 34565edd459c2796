"""Request and response bodies of the native API (``XCreate`` / ``XPublic``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from batchserve.engine.tasks import effective_resources
from batchserve.store import BatchCounts
from batchserve.store.models import Batch, Service, utcnow


class LoginRequest(BaseModel):
    username: str
    password: str


class RefreshRequest(BaseModel):
    refreshToken: str


class TokenPublic(BaseModel):
    token_type: str = "Bearer"
    access_token: str
    expires_in: int
    expires_on: int
    refresh_token: str


class UserPublic(BaseModel):
    username: str
    role: str


class AccountPublic(UserPublic):
    """A user as owners manage them."""

    active: bool = Field(description="False: deactivated (cannot log in; their work stays).")


class ServiceCreate(BaseModel):
    """The ``metadata`` part of a publish request."""

    name: str
    version: str | None = None
    description: str = ""
    alias: str | None = None
    mode: str = "row"
    bundle_kind: str = "callable"
    inputs: dict[str, str] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    artifacts: list[str] = Field(default_factory=list)
    # What each worker needs: {"num_cpus", "num_gpus", "memory"}. Any JSON is let through here:
    # the engine checks it, and answers what is wrong with it (422), not that the body is.
    resources: Any = None


class ResourcesPublic(BaseModel):
    """What each worker of a service is given."""

    num_cpus: int | float = Field(description="CPUs; a fraction shares one between workers.")
    num_gpus: int | float = Field(description="GPUs; a fraction shares one between workers.")
    memory: int | None = Field(description="Bytes of memory reserved; null: none reserved.")


class ServicePublic(BaseModel):
    name: str
    version: str
    description: str
    alias: str
    mode: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    artifacts: list[str]
    bundle_kind: str
    resources: ResourcesPublic
    published_by: str | None
    created_at: datetime

    @classmethod
    def of(cls, svc: Service, published_by: str | None) -> ServicePublic:
        return cls(
            name=svc.name,
            version=svc.version,
            description=svc.description,
            alias=svc.alias,
            mode=svc.mode,
            inputs=svc.inputs,
            outputs=svc.outputs,
            artifacts=svc.artifacts,
            bundle_kind=svc.bundle_kind,
            resources=ResourcesPublic(**effective_resources(svc.resources)),
            published_by=published_by,
            created_at=svc.created_at,
        )


class ServiceList(BaseModel):
    services: list[ServicePublic]


class GrantPublic(BaseModel):
    username: str
    granted_by: str | None = Field(description="Who granted it (null once removed).")
    granted_at: datetime


class PublishersPublic(BaseModel):
    """Who may add versions under a service name: its owner (its first publisher), the users
    granted it, and every user with the owner role."""

    name: str
    owner: str | None = Field(description="The name's owner (null once that user is removed).")
    granted: list[GrantPublic]


class ConsumeRequest(BaseModel):
    inputs: dict[str, Any] = Field(default_factory=dict)


class RecordResult(BaseModel):
    index: int
    id: Any = None  # the record's id, when the batch was given an id_column
    status: str
    outputs: dict[str, Any]
    error: str | None = None
    error_type: str | None = None
    console_output: str = ""
    artifacts: list[str] = Field(default_factory=list)
    duration_ms: float | None = None
    attempts: int = 0
    artifact_data: dict[str, str] | None = None


class ServiceRef(BaseModel):
    name: str
    version: str


class BatchStatistics(BaseModel):
    """Live figures of a batch, summed over its chunks as they are now."""

    succeeded_records: int
    failed_records: int
    cancelled_records: int
    retried_records: int = Field(description="Tries of records after their first, in all.")
    timed_out_tries: int = Field(description="Tries stopped by task_timeout.")
    requeued_records: int = Field(
        description="Records put back in the queue by preemption or disable (not failures)."
    )
    wall_clock_seconds: float | None = Field(description="From start to end (or to now).")
    records_per_second: float | None
    user_cpu_seconds: float
    system_cpu_seconds: float
    wait_seconds: float = Field(description="Time chunks waited for a worker, summed.")
    read_bytes: int = Field(description="Bytes of input files the workers read.")
    write_bytes: int = Field(description="Bytes of result files the workers wrote.")
    ingest_seconds: float | None = Field(
        None, description="Receiving and storing the records, from the upload's start to its end."
    )
    queue_seconds: float | None = Field(
        None, description="From start until its first records ran (waiting for workers)."
    )
    run_seconds: float = Field(
        0.0, description="Time workers spent on its chunks, summed over workers and tries."
    )
    export_seconds: float | None = Field(
        None, description="The last download of all its results as one file (format=...)."
    )

    @classmethod
    def of(cls, batch: Batch, counts: BatchCounts) -> BatchStatistics:
        wall = None
        if batch.start_time is not None:
            end = batch.end_time or utcnow()
            wall = max(0.0, (end - batch.start_time).total_seconds())
        rate = counts.completed / wall if wall else None
        queue = None
        if batch.start_time is not None and batch.run_start_time is not None:
            queue = max(0.0, (batch.run_start_time - batch.start_time).total_seconds())
        return cls(
            succeeded_records=counts.succeeded,
            failed_records=counts.failed,
            cancelled_records=counts.cancelled,
            retried_records=counts.retried,
            timed_out_tries=counts.timed_out,
            requeued_records=counts.requeued,
            wall_clock_seconds=wall,
            records_per_second=rate,
            user_cpu_seconds=counts.cpu_user,
            system_cpu_seconds=counts.cpu_system,
            wait_seconds=counts.wait_seconds,
            read_bytes=counts.bytes_in,
            write_bytes=counts.bytes_out,
            ingest_seconds=batch.ingest_seconds,
            queue_seconds=queue,
            run_seconds=counts.run_seconds,
            export_seconds=batch.export_seconds,
        )


class SchedulingError(BaseModel):
    """Why a batch cannot run, or could not (Azure Batch's ``JobSchedulingError``)."""

    category: str = Field(
        description="usererror (the batch asks for what cannot be) or servererror (the servers "
        "cannot run it now)."
    )
    code: str = Field(description="DependencyFailed, NoComputeNodes.")
    message: str
    details: dict[str, str] = Field(default_factory=dict)


class JobTaskPublic(BaseModel):
    """A batch's job preparation or release code, as attached."""

    name: str = Field(description="The function's name, as the SDK sent it.")
    size: int = Field(description="Bytes of its bundle.")


class BatchPublic(BaseModel):
    id: str
    service: ServiceRef
    state: str
    previous_state: str | None
    state_transition_time: datetime
    previous_state_transition_time: datetime | None
    creation_time: datetime
    last_modified: datetime
    etag: str
    start_time: datetime | None
    end_time: datetime | None
    termination_reason: str | None
    parallel_count: int
    chunk_size: int | None = Field(
        description="Records per chunk when the batch asked for a size; null when chunks are "
        "cut as they are handed out, from what the service's chunks cost."
    )
    priority: int
    created_by: str | None
    total_item_count: int
    completed_item_count: int
    succeeded_item_count: int
    failed_item_count: int
    cancelled_item_count: int
    chunk_count: int
    error: str | None
    display_name: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)
    max_failed_records: int | None = None
    task_failure_mode: str = "noaction"
    max_wall_clock_time: float | None = None
    max_task_retry_count: int = 0
    task_timeout: float | None = None
    allow_preemption: bool = False
    on_all_tasks_complete: str = Field(
        "terminatejob",
        description="noaction: an open batch, which takes more records and does not complete "
        "until it is closed; terminatejob: it completes once every record has a result.",
    )
    depends_on: list[str] = Field(default_factory=list)
    id_column: str | None = Field(
        None,
        description="The column of the records whose values are carried into the results as "
        "each record's id (records added to an open batch carry it too).",
    )
    scheduling_error: SchedulingError | None = None
    job_preparation_task: JobTaskPublic | None = Field(
        None, description="Run once by each worker before its first chunk of the batch."
    )
    job_release_task: JobTaskPublic | None = Field(
        None, description="Run once by each worker that ran the batch, after the batch ends."
    )
    statistics: BatchStatistics

    @classmethod
    def of(cls, batch: Batch, counts: BatchCounts, created_by: str | None) -> BatchPublic:
        svc = batch.options.get("service", {})
        opts = batch.options
        return cls(
            id=batch.id,
            service=ServiceRef(name=svc.get("name", ""), version=svc.get("version", "")),
            state=batch.state,
            previous_state=batch.previous_state,
            state_transition_time=batch.state_transition_time,
            previous_state_transition_time=batch.previous_state_transition_time,
            creation_time=batch.creation_time,
            last_modified=batch.last_modified,
            etag=f'"{batch.revision}"',
            start_time=batch.start_time,
            end_time=batch.end_time,
            termination_reason=batch.termination_reason,
            parallel_count=batch.parallel_count,
            chunk_size=batch.chunk_size or None,
            priority=batch.priority,
            created_by=created_by,
            total_item_count=batch.total_count,
            completed_item_count=counts.completed,
            succeeded_item_count=counts.succeeded,
            failed_item_count=counts.failed,
            cancelled_item_count=counts.cancelled,
            chunk_count=counts.chunks,
            error=batch.error,
            display_name=batch.display_name,
            metadata=batch.options.get("metadata") or {},
            environment=batch.options.get("environment") or {},
            max_failed_records=batch.options.get("max_failed_records"),
            task_failure_mode=batch.options.get("task_failure_mode") or "noaction",
            max_wall_clock_time=opts.get("max_wall_clock_time"),
            max_task_retry_count=opts.get("max_task_retry_count") or 0,
            task_timeout=opts.get("task_timeout"),
            allow_preemption=bool(opts.get("allow_preemption")),
            on_all_tasks_complete=opts.get("on_all_tasks_complete") or "terminatejob",
            depends_on=list(opts.get("depends_on") or []),
            id_column=opts.get("id_column"),
            scheduling_error=(
                SchedulingError.model_validate(batch.scheduling_error)
                if batch.scheduling_error
                else None
            ),
            job_preparation_task=opts.get("job_preparation_task"),
            job_release_task=opts.get("job_release_task"),
            statistics=BatchStatistics.of(batch, counts),
        )


class BatchUpdate(BaseModel):
    """Settings of a batch that may change while it runs; absent fields stay as they are."""

    priority: int | None = Field(None, ge=-1000, le=1000)
    parallel_count: int | None = Field(
        None,
        ge=-1,
        le=10_000,
        description="Chunks run at once at most; -1: no limit but the workers.",
    )
    metadata: dict[str, str] | None = None
    max_failed_records: int | None = Field(None, ge=0)
    max_wall_clock_time: float | None = Field(None, gt=0)
    max_task_retry_count: int | None = Field(None, ge=-1)
    allow_preemption: bool | None = Field(
        None, description="Higher-priority batches may requeue this batch's running chunks."
    )
    display_name: str | None = Field(None, max_length=1024, description='"" removes it.')
    on_all_tasks_complete: Literal["noaction", "terminatejob"] | None = Field(
        None, description="terminatejob closes an open batch (as POST .../close does)."
    )


class RecordsAdded(BaseModel):
    """Records added to an open batch: they are ``first_index`` to ``first_index + count - 1``."""

    first_index: int
    count: int
    batch: BatchPublic


class DisableRequest(BaseModel):
    disable_tasks: Literal["requeue", "terminate", "wait"] = Field(
        "requeue",
        description="What happens to running chunks: requeue them, stop them (their unfinished "
        "records fail), or let them finish.",
    )


class TerminateRequest(BaseModel):
    reason: str | None = Field(None, max_length=200)


class BatchList(BaseModel):
    batches: list[BatchPublic]
    next_cursor: str | None = None  # the cursor of the next page; None on the last one


class ResultPage(BaseModel):
    batch: BatchPublic
    start: int
    limit: int
    next_start: int | None
    results: list[RecordResult]


class InputRecord(BaseModel):
    index: int
    id: Any = None  # the record's id, when the batch was given an id_column
    inputs: dict[str, Any]


class InputPage(BaseModel):
    """A page of a batch's input records, in index order."""

    start: int
    limit: int
    next_start: int | None
    records: list[InputRecord]


class ArtifactList(BaseModel):
    artifacts: list[str]


class Health(BaseModel):
    status: str
    version: str
