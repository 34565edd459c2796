"""The batch and chunk state machines: the one place where states and their transitions live.

Nothing else in batchserve assigns a state by hand. The engine asks :func:`check_batch_transition`
(or :func:`check_chunk_transition`) before it writes a new state, and the store records
``previous_state``, both transition times, a new etag and ``last_modified`` with every change.
"""

from __future__ import annotations

from enum import StrEnum


class BatchState(StrEnum):
    """The canonical states of a batch (= job). The value is the wire spelling."""

    CREATED = "created"  # defined, records uploaded, not started
    PENDING = "pending"  # started, waiting for capacity or dependencies
    RUNNING = "running"  # records in progress
    PAUSING = "pausing"  # disable requested; running chunks are being requeued, stopped or awaited
    PAUSED = "paused"  # disabled: no chunk of it runs until it is enabled again
    CANCELLING = "cancelling"  # cancel or terminate requested; running chunks are being stopped
    CANCELLED = "cancelled"  # stopped by the user; finished results are kept
    COMPLETED = "completed"  # every record has a final result (some may have failed)
    FAILED = "failed"  # stopped by failure policy, wall-clock limit or an engine error

    # ML Server's clients compare ``state`` with ``STATE.complete`` / ``STATE.failed``.
    complete = "completed"
    failed = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        """True when the batch will never change state again (except by deletion)."""
        return self in FINAL_BATCH_STATES

    @property
    def is_active(self) -> bool:
        """True while records of the batch may still be scheduled or run."""
        return self in (BatchState.PENDING, BatchState.RUNNING)


FINAL_BATCH_STATES = frozenset({BatchState.CANCELLED, BatchState.COMPLETED, BatchState.FAILED})

_B = BatchState
# from-state -> the states it may move to.
BATCH_TRANSITIONS: dict[BatchState, frozenset[BatchState]] = {
    _B.CREATED: frozenset({_B.PENDING, _B.CANCELLED, _B.FAILED}),
    _B.PENDING: frozenset(
        {_B.RUNNING, _B.PAUSING, _B.PAUSED, _B.CANCELLING, _B.CANCELLED, _B.COMPLETED, _B.FAILED}
    ),
    _B.RUNNING: frozenset({_B.PENDING, _B.PAUSING, _B.CANCELLING, _B.COMPLETED, _B.FAILED}),
    _B.PAUSING: frozenset({_B.PAUSED, _B.CANCELLING, _B.FAILED}),
    _B.PAUSED: frozenset({_B.PENDING, _B.CANCELLING, _B.CANCELLED, _B.FAILED}),
    _B.CANCELLING: frozenset({_B.CANCELLED}),
    _B.CANCELLED: frozenset(),
    _B.COMPLETED: frozenset(),
    _B.FAILED: frozenset(),
}


class ChunkState(StrEnum):
    """States of a chunk (= task), the unit of scheduling, retry and preemption."""

    PENDING = "pending"  # waiting to be dispatched (new, retried or requeued)
    RUNNING = "running"  # dispatched to a worker
    SUCCEEDED = "succeeded"  # every record of it has a result (records may have failed)
    FAILED = "failed"  # the chunk itself failed after its retries (its records are failed)
    CANCELLED = "cancelled"  # stopped by cancel; records finished before the stop are kept

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        return self in (ChunkState.SUCCEEDED, ChunkState.FAILED, ChunkState.CANCELLED)


_C = ChunkState
CHUNK_TRANSITIONS: dict[ChunkState, frozenset[ChunkState]] = {
    _C.PENDING: frozenset({_C.RUNNING, _C.CANCELLED, _C.FAILED}),
    # RUNNING -> PENDING is a retry after a lost worker, a requeue or a crash recovery.
    _C.RUNNING: frozenset({_C.PENDING, _C.SUCCEEDED, _C.FAILED, _C.CANCELLED}),
    _C.SUCCEEDED: frozenset(),
    _C.FAILED: frozenset(),
    _C.CANCELLED: frozenset(),
}


class InvalidTransition(Exception):
    """A state change that the state table does not allow."""

    def __init__(self, kind: str, current: str, wanted: str, allowed: frozenset[str]) -> None:
        self.current = current
        self.wanted = wanted
        names = ", ".join(sorted(str(s) for s in allowed)) or "none (it is final)"
        super().__init__(
            f"A {kind} in state '{current}' cannot become '{wanted}'; from '{current}' it may "
            f"become: {names}."
        )


def check_batch_transition(current: BatchState | str, wanted: BatchState | str) -> BatchState:
    """Return ``wanted`` as a :class:`BatchState` if the table allows the move, else raise."""
    cur, new = BatchState(current), BatchState(wanted)
    allowed = BATCH_TRANSITIONS[cur]
    if new not in allowed:
        raise InvalidTransition("batch", cur.value, new.value, frozenset(s.value for s in allowed))
    return new


def check_chunk_transition(current: ChunkState | str, wanted: ChunkState | str) -> ChunkState:
    cur, new = ChunkState(current), ChunkState(wanted)
    allowed = CHUNK_TRANSITIONS[cur]
    if new not in allowed:
        raise InvalidTransition("chunk", cur.value, new.value, frozenset(s.value for s in allowed))
    return new


def states_allowing(target: BatchState) -> list[BatchState]:
    """The batch states from which ``target`` can be reached (for 409 messages)."""
    return [s for s, nxt in BATCH_TRANSITIONS.items() if target in nxt]
