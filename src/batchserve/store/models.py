"""The metadata store's tables. Records, results and files never live here: only metadata."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend: SQLite keeps no zone, and PostgreSQL
    gives its times in the session's zone (the server's ``TimeZone`` setting), not in UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JSONValue(TypeDecorator[Any]):
    """JSON that every backend keeps alike. PostgreSQL's ``json`` refuses NaN and Infinity
    (SQLite stores them, then its JSON functions fail on them), and it stores a NUL character
    (``\\u0000``) but then fails every read into the document, a metadata filter over all
    batches included; so such values are refused everywhere."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        problem = _unstorable(value)
        if problem is not None:
            raise ValueError(f"a JSON value holding {problem} given to the store")
        return value


def _unstorable(value: Any) -> str | None:
    """What in a JSON value PostgreSQL cannot keep, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return "a NUL character" if "\x00" in value else None
    items: list[Any] = []
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    return next((p for p in map(_unstorable, items) if p is not None), None)


class ErrorText(TypeDecorator[str]):
    """An error message, which may quote anything an exception said. PostgreSQL's text cannot
    hold a NUL character: one becomes U+FFFD (the replacement character) on every backend,
    rather than failing the write of the error there."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return value.replace("\x00", "\ufffd") if value is not None else None


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(200), unique=True)
    # The username in lower case: no two users differ only in case, and logins ignore case.
    username_key: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(400))
    role: Mapped[str] = mapped_column(String(20))  # owner | contributor | reader
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A deactivated user can no longer log in, and their tokens stop working; their services
    # and batches stay. (A user who owns none is deleted instead.)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Bumped when the password changes or the user is deactivated: a token issued under an
    # earlier generation is refused, even one issued by a login that was checking the old
    # password at that very moment.
    token_generation: Mapped[int] = mapped_column(Integer, default=0)


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # access | refresh
    pair: Mapped[str] = mapped_column(String(32), index=True)  # access+refresh issued together
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    generation: Mapped[int] = mapped_column(Integer, default=0)  # the user's token_generation


class Service(Base):
    __tablename__ = "services"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_service_name_version"),
        {"sqlite_autoincrement": True},  # ids are never reused
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    alias: Mapped[str] = mapped_column(String(200))
    mode: Mapped[str] = mapped_column(String(20), default="row")  # row | vectorized
    inputs: Mapped[dict[str, str]] = mapped_column(JSONValue)
    outputs: Mapped[dict[str, str]] = mapped_column(JSONValue)
    artifacts: Mapped[list[str]] = mapped_column(JSONValue)
    bundle_key: Mapped[str] = mapped_column(String(500))
    bundle_kind: Mapped[str] = mapped_column(String(20))  # callable | code
    runtime: Mapped[str] = mapped_column(String(20), default="python")
    extra: Mapped[dict[str, Any]] = mapped_column(JSONValue, default=dict)  # face-specific fields
    # What each worker of the service needs (num_cpus, num_gpus, memory; see ServiceSpec in
    # batchserve.engine.tasks). {}: the defaults, as for services published before it was kept.
    resources: Mapped[dict[str, Any]] = mapped_column(JSONValue, default=dict)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What a chunk of this service costs, measured over its finished chunks (moving averages;
    # see batchserve.engine.costs): seconds per record, fixed seconds per call (vectorized) and
    # fixed seconds per chunk. They size the ranges of records the scheduler hands out.
    record_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    call_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    chunk_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class ServiceName(Base):
    """A service name and the user it belongs to: its first publisher. Only they, the users
    they grant it to (:class:`ServicePublisher`) and owners add versions under it, so that
    "latest" never resolves to code of someone else."""

    __tablename__ = "service_names"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    # None once that user is removed: the name stays taken, and only owners publish under it.
    owner_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ServicePublisher(Base):
    """A user allowed to add versions under a service name that is not theirs."""

    __tablename__ = "service_publishers"

    name: Mapped[str] = mapped_column(
        ForeignKey("service_names.name", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    granted_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


#: A batch's ``parallel_count`` that sets no limit: only the workers limit it (Azure Batch's -1).
NO_PARALLEL_LIMIT = -1


def parallel_cap(parallel_count: int) -> int:
    """How many chunks of a batch may run at once: ``parallel_count``, or as many as there are
    workers when it is -1."""
    return parallel_count if parallel_count > 0 else 1 << 62


def is_open(batch: Batch) -> bool:
    """True for an open batch (Azure Batch's ``onAllTasksComplete`` ``noaction``): records may
    still be added, and it does not complete when they are done, until it is closed."""
    return batch.options.get("on_all_tasks_complete") == "noaction"


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_state_priority", "state", "priority", "creation_time"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    state: Mapped[str] = mapped_column(String(20))
    previous_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    state_transition_time: Mapped[datetime] = mapped_column(UTCDateTime)
    previous_state_transition_time: Mapped[datetime | None] = mapped_column(
        UTCDateTime, nullable=True
    )
    creation_time: Mapped[datetime] = mapped_column(UTCDateTime)
    last_modified: Mapped[datetime] = mapped_column(UTCDateTime)
    revision: Mapped[int] = mapped_column(Integer, default=1)  # the etag's source
    start_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    termination_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[str | None] = mapped_column(ErrorText, nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    parallel_count: Mapped[int] = mapped_column(Integer, default=10)
    chunk_size: Mapped[int] = mapped_column(Integer)
    total_count: Mapped[int] = mapped_column(BigInteger, default=0)
    sealed: Mapped[bool] = mapped_column(Boolean, default=False)  # every record is uploaded
    display_name: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    # Options, plus a copy of the service's schemas so results stay readable on their own.
    options: Mapped[dict[str, Any]] = mapped_column(JSONValue, default=dict)
    # When a delete was asked for. From then on the batch is gone for users; its rows and files
    # are removed once none of its workers runs (by the scheduler, or at start after a crash).
    deleting_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    # Records already handed out in chunks (from index 0 on); the rest wait in the upload parts.
    claimed: Mapped[int] = mapped_column(BigInteger, default=0)
    # When its first chunk started, and how long its stages took (seconds; None: not yet).
    run_start_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ingest_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    export_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The node receiving its upload: an unsealed batch is abandoned only once that node died.
    upload_node: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Why it cannot run, or could not (Azure Batch's JobSchedulingError): {"category", "code",
    # "message", "details"}; None when nothing stands in its way.
    scheduling_error: Mapped[dict[str, Any] | None] = mapped_column(JSONValue, nullable=True)

    @property
    def parallel_cap(self) -> int:
        """How many of its chunks may run at once (see :func:`parallel_cap`)."""
        return parallel_cap(self.parallel_count)


class Part(Base):
    """A stretch of a batch's records as uploaded: one columnar file, cut once as the upload
    streams. Chunks are record ranges over parts, cut when they are handed out."""

    __tablename__ = "parts"
    __table_args__ = (UniqueConstraint("batch_id", "seq", name="uq_part_batch_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    start_index: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # of the file (0: not known)
    key: Mapped[str] = mapped_column(String(500))


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("batch_id", "seq", name="uq_chunk_batch_seq"),
        Index("ix_chunks_batch_state", "batch_id", "state"),
        Index("ix_chunks_node_state", "node_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    start_index: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # tries started, retries included
    lost_workers: Mapped[int] = mapped_column(Integer, default=0)
    result_key: Mapped[str | None] = mapped_column(String(500), nullable=True)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    cancelled: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(ErrorText, nullable=True)
    # Since when the chunk waits for a worker (set when its batch starts and when it is requeued).
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Statistics, summed over the chunk's tries.
    retried: Mapped[int] = mapped_column(Integer, default=0)  # record tries after the first
    timed_out: Mapped[int] = mapped_column(Integer, default=0)  # tries stopped by task_timeout
    requeued: Mapped[int] = mapped_column(Integer, default=0)  # records put back by preemption
    cpu_user: Mapped[float] = mapped_column(Float, default=0.0)
    cpu_system: Mapped[float] = mapped_column(Float, default=0.0)
    wait_seconds: Mapped[float] = mapped_column(Float, default=0.0)  # queued -> started, summed
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    run_seconds: Mapped[float] = mapped_column(Float, default=0.0)  # in a worker, summed
    # The node whose claim it runs under (the claim's fencing token is its result key).
    node_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Node(Base):
    """A running batchserve process: an API node, a compute node, or both. Its heartbeat
    renews its lease; once the lease has run out the node is dead and its work is taken back."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(20))  # all, api or compute
    host: Mapped[str] = mapped_column(String(255))
    # The host's boot and process namespace: a node with the same key and a pid that no longer
    # runs is dead at once, without waiting for its lease.
    host_key: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(50))
    workers: Mapped[int] = mapped_column(Integer)
    executor: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime] = mapped_column(UTCDateTime)
    draining: Mapped[bool] = mapped_column(Boolean, default=False)  # claims nothing new
    leader: Mapped[bool] = mapped_column(Boolean, default=False)  # as of its last heartbeat


class ConsumeRequest(Base):
    """A one-record request received by a node that runs no service code, waiting for a
    compute node (``pending``), run by one (``running``), answered (``done``) or given up by
    its caller (``abandoned``)."""

    __tablename__ = "consumes"
    __table_args__ = (Index("ix_consumes_state", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    service_id: Mapped[int] = mapped_column(Integer)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20))
    node_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
