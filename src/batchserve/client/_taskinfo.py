"""Batches described as batch inference tasks: :class:`BatchTaskStatus` and :class:`BatchTaskInfo`.

The batch-task operations (``_operations.py``) speak this vocabulary. A batch has nine
states (:class:`~batchserve.states.BatchState`); a task has six statuses, so some states share a
status:

=============================  ===========  ===================================================
batch state                    task status  why
=============================  ===========  ===================================================
``created``                    CREATED      records uploaded, not started
``pending``                    PENDING      waiting for workers or for the batches it needs
``paused``                     PENDING      waiting to be enabled; nothing of it runs
``running``                    IN_PROGRESS  records are being run
``pausing``                    IN_PROGRESS  chunks still run while being requeued or awaited
``completed``                  COMPLETED    every record has a final result
``failed``                     FAILED       stopped by its failure policy, a limit or an error
``cancelling``, ``cancelled``  CANCELED     a cancel was asked for; nothing more of it runs
=============================  ===========  ===================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any
from urllib.parse import quote

from batchserve.errors import UsageError
from batchserve.states import BatchState


class BatchTaskStatus(IntEnum):
    """The status of a batch seen as a task; the values are those of the task API."""

    UNKNOWN = -1  # a state this SDK does not know (a newer server)
    STATUS_UNSPECIFIED = 0  # as a listing filter: any status
    CREATED = 1  # created, not started
    PENDING = 2  # started or paused, no record running
    IN_PROGRESS = 3  # records running
    COMPLETED = 4  # every record has a final result (some may have failed)
    FAILED = 5  # the batch failed
    CANCELED = 6  # cancelled, or being cancelled
    # batchserve's own spelling (its states say ``cancelled``): an alias, the same member.
    CANCELLED = 6

    @property
    def is_running(self) -> bool:
        """True while the batch may still change: created, pending or in progress."""
        return self in (_S.CREATED, _S.PENDING, _S.IN_PROGRESS)

    @property
    def is_succeeded(self) -> bool:
        return self is _S.COMPLETED

    @property
    def is_failed(self) -> bool:
        """True for a failed or a cancelled batch: neither has a result."""
        return self in (_S.FAILED, _S.CANCELED)

    @property
    def is_finished(self) -> bool:
        return self.is_succeeded or self.is_failed

    @property
    def status_name(self) -> str:
        """``success``, ``failed`` (a cancelled batch too), ``running`` (created, pending or in
        progress), or ``unknown``: the task API's summary of the status."""
        if self.is_succeeded:
            return "success"
        if self.is_failed:
            return "failed"
        return "running" if self.is_running else "unknown"

    @classmethod
    def of_state(cls, state: BatchState | str) -> BatchTaskStatus:
        """The status of a batch in ``state``; UNKNOWN for a state this SDK does not know.
        ``canceled`` (one l) is read as ``cancelled``."""
        try:
            return _STATUS_OF_STATE[BatchState(_STATE_SPELLINGS.get(str(state), state))]
        except ValueError:
            return cls.UNKNOWN

    @property
    def states(self) -> tuple[BatchState, ...]:
        """The batch states that have this status (none for UNKNOWN and STATUS_UNSPECIFIED)."""
        return tuple(s for s, status in _STATUS_OF_STATE.items() if status is self)


_S = BatchTaskStatus
#: State names spelled as the task API spells its statuses.
_STATE_SPELLINGS = {"canceled": BatchState.CANCELLED.value}
_STATUS_OF_STATE: dict[BatchState, BatchTaskStatus] = {
    BatchState.CREATED: _S.CREATED,
    BatchState.PENDING: _S.PENDING,
    BatchState.PAUSED: _S.PENDING,
    BatchState.RUNNING: _S.IN_PROGRESS,
    BatchState.PAUSING: _S.IN_PROGRESS,
    BatchState.ENABLING: _S.PENDING,  # nothing of it runs yet, as when paused
    BatchState.COMPLETED: _S.COMPLETED,
    BatchState.FAILED: _S.FAILED,
    BatchState.CANCELLING: _S.CANCELED,
    BatchState.CANCELLED: _S.CANCELED,
    BatchState.DELETING: _S.CANCELED,
}


def parse_status(value: BatchTaskStatus | int | str) -> BatchTaskStatus:
    """A status given as the enum, its number, or its name in any case (``"in_progress"``;
    ``"canceled"`` and ``"cancelled"`` are the same status).

    Raises :class:`~batchserve.errors.UsageError` (a ``ValueError``) for anything else.
    """
    names = ", ".join(s.name for s in BatchTaskStatus if s.value > 0) + " (or CANCELLED)"
    if isinstance(value, BatchTaskStatus):
        return value
    if isinstance(value, bool):  # a bool is an int to Python, never a status to a person
        raise UsageError(f"{value!r} is not a batch task status; the statuses are {names}.")
    if isinstance(value, int):
        try:
            return BatchTaskStatus(value)
        except ValueError:
            numbers = ", ".join(f"{s.value} ({s.name})" for s in BatchTaskStatus if s.value > 0)
            raise UsageError(
                f"{value} is not the number of a batch task status; they are {numbers}."
            ) from None
    if isinstance(value, str):
        try:
            return BatchTaskStatus[value.strip().upper()]
        except KeyError:
            raise UsageError(
                f"{value!r} is not a batch task status; the statuses are {names} "
                "(in any case, e.g. 'in_progress')."
            ) from None
    raise UsageError(
        f"A status is a BatchTaskStatus, its number or its name, not a {type(value).__name__}."
    )


def states_for_filter(status: BatchTaskStatus | int | str | None) -> list[str] | None:
    """The batch states a listing filtered by ``status`` asks the server for (None: any)."""
    if status is None:
        return None
    parsed = parse_status(status)
    if parsed is BatchTaskStatus.STATUS_UNSPECIFIED:
        return None
    if parsed is BatchTaskStatus.UNKNOWN:
        raise UsageError("No batch has the status UNKNOWN: filter by another status, or by none.")
    # A batch being deleted is gone for readers: a listing asks for it only by its own name.
    return [s.value for s in parsed.states if s is not BatchState.DELETING]


@dataclass(frozen=True)
class ServiceRef:
    """The service version a batch runs."""

    name: str
    version: str


@dataclass(frozen=True)
class LineErrorInfo:
    """A record that failed on its own: its 0-based index in the batch and the error."""

    index: int
    message: str
    error_type: str | None = None

    @property
    def line_number(self) -> int:
        """The task API's name for :attr:`index`."""
        return self.index


@dataclass(frozen=True)
class ChunkErrorInfo:
    """A chunk (a run of records scheduled together) that failed as a whole after its retries
    (a lost worker, say): its records from ``first_index`` to ``last_index`` that had not
    finished before the failure failed with ``message``."""

    chunk_number: int
    first_index: int
    last_index: int
    message: str

    @property
    def batch_number(self) -> int:
        """The task API's name for :attr:`chunk_number`."""
        return self.chunk_number


@dataclass(frozen=True)
class BatchTaskErrorsInfo:
    """What went wrong in a batch. ``message`` is the batch's own error (None when it has
    none); ``line_errors`` are records that failed, ``chunk_errors`` chunks that failed."""

    line_errors: tuple[LineErrorInfo, ...] = ()
    chunk_errors: tuple[ChunkErrorInfo, ...] = ()
    message: str | None = None

    @property
    def batch_errors(self) -> tuple[ChunkErrorInfo, ...]:
        """The task API's name for :attr:`chunk_errors`."""
        return self.chunk_errors

    def __bool__(self) -> bool:
        return bool(self.line_errors or self.chunk_errors or self.message)


#: The ``error_type`` of the records of a chunk that failed as a whole.
CHUNK_FAILED = "ChunkFailed"


def errors_info(
    message: str | None, failed: Iterable[Mapping[str, Any]], chunk_size: int | None = None
) -> BatchTaskErrorsInfo:
    """The errors of a batch from its error message and its failed records, in index order
    (mappings with ``index``, ``error`` and ``error_type``).

    Records of a failed chunk are reported once, as that chunk's error, not line by line. A
    chunk is numbered by its records when the batch asked for a fixed ``chunk_size``; else
    (chunks cut to measure) the failed chunks are numbered in order, from 0.
    """
    lines: list[LineErrorInfo] = []
    chunks: list[ChunkErrorInfo] = []
    size = max(1, chunk_size) if chunk_size else None
    for row in failed:
        index, text = int(row["index"]), str(row.get("error") or "failed")
        if row.get("error_type") != CHUNK_FAILED:
            lines.append(LineErrorInfo(index, text, row.get("error_type")))
            continue
        last = chunks[-1] if chunks else None
        if size is not None:
            same = last is not None and last.chunk_number == index // size
            number = index // size
        else:  # one run of records failed with one message is one chunk
            same = last is not None and last.last_index == index - 1 and last.message == text
            number = len(chunks)
        if same and last is not None:
            chunks[-1] = ChunkErrorInfo(last.chunk_number, last.first_index, index, last.message)
        else:
            chunks.append(ChunkErrorInfo(number, index, index, text))
    return BatchTaskErrorsInfo(tuple(lines), tuple(chunks), message)


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclass(frozen=True)
class BatchTaskInfo:
    """A batch as a batch inference task, read from the server at one moment.

    ``operation_id`` is ``task_id``: a batch is its own operation. ``model_uri`` names the
    service version it runs, ``name:version``. The task API's datasets are locations here:
    ``source_dataset_id`` is the URL of the batch's input records, ``result_dataset_id`` the URL
    of its results once it has completed (None before, and for a failed or cancelled batch).
    ``labels`` is the batch's metadata; ``state`` its batchserve state, which ``status``
    summarises; ``created_by`` the user who created it.
    """

    task_id: str
    operation_id: str
    model_uri: str
    source_dataset_id: str
    result_dataset_id: str | None
    service: ServiceRef
    status: BatchTaskStatus
    state: BatchState | str
    labels: Mapping[str, str]
    display_name: str | None
    created_by: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    total_item_count: int
    completed_item_count: int
    errors: BatchTaskErrorsInfo

    @property
    def id(self) -> str:
        return self.task_id


def task_info(
    data: Mapping[str, Any], errors: BatchTaskErrorsInfo, base_url: str = ""
) -> BatchTaskInfo:
    """A :class:`BatchTaskInfo` from the server's description of a batch (``BatchPublic``);
    its locations start with ``base_url``, the server's."""
    ref = data.get("service") or {}
    raw_state = str(data["state"])
    try:
        state: BatchState | str = BatchState(raw_state)
    except ValueError:
        state = raw_state
    task_id = str(data["id"])
    status = BatchTaskStatus.of_state(raw_state)
    service = ServiceRef(str(ref.get("name", "")), str(ref.get("version", "")))
    location = f"{base_url.rstrip('/')}/v1/batches/{quote(task_id, safe='')}"
    return BatchTaskInfo(
        task_id=task_id,
        operation_id=task_id,
        model_uri=f"{service.name}:{service.version}",
        source_dataset_id=f"{location}/records",
        result_dataset_id=f"{location}/results" if status.is_succeeded else None,
        service=service,
        status=status,
        state=state,
        labels=dict(data.get("metadata") or {}),
        display_name=data.get("display_name"),
        created_by=data.get("created_by"),
        created_at=_time(data.get("creation_time")),
        started_at=_time(data.get("start_time")),
        finished_at=_time(data.get("end_time")),
        total_item_count=int(data.get("total_item_count") or 0),
        completed_item_count=int(data.get("completed_item_count") or 0),
        errors=errors,
    )
