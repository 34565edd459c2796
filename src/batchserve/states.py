"""The batch and chunk state machines: the one place where states and their transitions live.

Nothing else in batchserve assigns a state by hand. The engine asks :func:`check_batch_transition`
(or :func:`check_chunk_transition`) before it writes a new state, and the store records
``previous_state``, both transition times, a new etag and ``last_modified`` with every change.
"""

from __future__ import annotations

from enum import StrEnum


class BatchState(StrEnum):
    """The canonical states of a batch (= job). The value is the wire spelling.

    A state also equals, ignoring case, its canonical name and its spelling in Machine Learning
    Server (:data:`ML_SERVER_STATES`) where that spelling names no other state: ``"complete"``
    and ``"Completed"`` equal ``COMPLETED``, ``"inProgress"`` equals ``RUNNING`` (and
    ``PAUSING`` and ``PAUSED``), ``"Failed"`` equals ``FAILED``, ``"pending"`` ``PENDING``. So a
    poll loop written for ML Server (``while resp.state != "complete"``) reads the same here.
    The hash is the canonical value's: in sets and dict keys only the canonical spelling matches.
    """

    CREATED = "created"  # defined, records uploaded, not started
    PENDING = "pending"  # started, waiting for capacity or dependencies
    RUNNING = "running"  # records in progress
    PAUSING = "pausing"  # disable requested; running chunks are being requeued, stopped or awaited
    PAUSED = "paused"  # disabled: no chunk of it runs until it is enabled again
    ENABLING = "enabling"  # enable requested; its chunks are being queued again
    CANCELLING = "cancelling"  # cancel or terminate requested; running chunks are being stopped
    CANCELLED = "cancelled"  # stopped by the user; finished results are kept
    COMPLETED = "completed"  # every record has a final result (some may have failed)
    FAILED = "failed"  # stopped by failure policy, wall-clock limit or an engine error
    DELETING = "deleting"  # delete requested; its workers are being stopped and its data removed

    # ML Server's clients compare ``state`` with ``STATE.complete`` / ``STATE.failed``.
    complete = "completed"
    failed = "failed"

    def __str__(self) -> str:
        return self.value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BatchState):
            return self is other
        if isinstance(other, str):
            spelling = other.casefold()
            return spelling == self.value or self in _ML_SERVER_ALIASES.get(spelling, ())
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    # Defining __eq__ would otherwise leave the members unhashable.
    __hash__ = str.__hash__

    @property
    def is_final(self) -> bool:
        """True when the batch will never change state again (except by deletion)."""
        return self in FINAL_BATCH_STATES

    @property
    def is_active(self) -> bool:
        """True while records of the batch may still be scheduled or run."""
        return self in (BatchState.PENDING, BatchState.RUNNING)


FINAL_BATCH_STATES = frozenset({BatchState.CANCELLED, BatchState.COMPLETED, BatchState.FAILED})

#: The canonical states in Machine Learning Server's spelling, as its face reports them. ML Server
#: has no cancelled state (its cancel deletes), so a batch cancelled through another face reads as
#: failed there.
ML_SERVER_STATES: dict[BatchState, str] = {
    BatchState.CREATED: "pending",
    BatchState.PENDING: "pending",
    BatchState.RUNNING: "inProgress",
    BatchState.PAUSING: "inProgress",
    BatchState.PAUSED: "inProgress",
    BatchState.ENABLING: "inProgress",
    BatchState.CANCELLING: "failed",
    BatchState.CANCELLED: "failed",
    BatchState.COMPLETED: "complete",
    BatchState.FAILED: "failed",
    BatchState.DELETING: "failed",
}

# The ML Server spellings a state equals besides its own name: those that are no canonical name.
# ("pending" stays PENDING's alone and "failed" FAILED's: a created batch is not pending, nor a
# cancelled one failed, when batchserve code compares them.)
_ML_SERVER_ALIASES: dict[str, frozenset[BatchState]] = {
    spelling.casefold(): frozenset(s for s, sp in ML_SERVER_STATES.items() if sp == spelling)
    for spelling in set(ML_SERVER_STATES.values())
    if spelling.casefold() not in {s.value for s in BatchState}
}

_B = BatchState
# from-state -> the states it may move to. Any batch may be deleted (a final one too): DELETING
# is the one way out of a final state, and leads nowhere (the batch is removed).
BATCH_TRANSITIONS: dict[BatchState, frozenset[BatchState]] = {
    _B.CREATED: frozenset({_B.PENDING, _B.CANCELLED, _B.FAILED, _B.DELETING}),
    _B.PENDING: frozenset(
        {
            _B.RUNNING,
            _B.PAUSING,
            _B.PAUSED,
            _B.CANCELLING,
            _B.CANCELLED,
            _B.COMPLETED,
            _B.FAILED,
            _B.DELETING,
        }
    ),
    _B.RUNNING: frozenset(
        {_B.PENDING, _B.PAUSING, _B.CANCELLING, _B.COMPLETED, _B.FAILED, _B.DELETING}
    ),
    _B.PAUSING: frozenset({_B.PAUSED, _B.CANCELLING, _B.FAILED, _B.DELETING}),
    _B.PAUSED: frozenset({_B.ENABLING, _B.CANCELLING, _B.CANCELLED, _B.FAILED, _B.DELETING}),
    _B.ENABLING: frozenset({_B.PENDING, _B.CANCELLING, _B.FAILED, _B.DELETING}),
    _B.CANCELLING: frozenset({_B.CANCELLED, _B.DELETING}),
    _B.CANCELLED: frozenset({_B.DELETING}),
    _B.COMPLETED: frozenset({_B.DELETING}),
    _B.FAILED: frozenset({_B.DELETING}),
    _B.DELETING: frozenset(),
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
