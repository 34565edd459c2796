"""A batch's upload parts and chunks in the store: parts recorded as the upload is cut, chunks
claimed as record ranges (under a lease, with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), their
states and counts as they run, and their settling when a batch stops.

Mixed into :class:`~batchserve.store.Store`; every method is one short transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Select,
    Table,
    bindparam,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Session

from batchserve.states import BatchState, ChunkState, check_chunk_transition
from batchserve.store.models import (
    Batch,
    Chunk,
    Part,
    UTCDateTime,
    parallel_cap,
    utcnow,
)

#: The most records one chunk row holds: a batch's unclaimed rest, cancelled at once, is
#: written as chunks of at most this many records (a chunk's count is a 32-bit column).
MAX_CHUNK_ROW = 1 << 30
#: Batch states in which no chunk starts.
_NOT_CLAIMING = frozenset(
    s.value
    for s in (
        BatchState.PAUSING,
        BatchState.PAUSED,
        BatchState.ENABLING,
        BatchState.CANCELLING,
        BatchState.CANCELLED,
        BatchState.COMPLETED,
        BatchState.FAILED,
        BatchState.DELETING,
    )
)

_CHUNKS: Table = Chunk.__table__  # type: ignore[assignment]
_BATCHES: Table = Batch.__table__  # type: ignore[assignment]


class ChunkQueries:
    engine: Engine
    _sqlite: bool

    if TYPE_CHECKING:

        def session(self, *, locked: bool = False) -> AbstractContextManager[Session]: ...

        def locked_connection(self) -> AbstractContextManager[Connection]: ...

        def notify(self, *payloads: str) -> None: ...

    def add_part(
        self, batch_id: str, seq: int, start_index: int, count: int, size: int, key: str
    ) -> None:
        """Record a written part. While the upload goes on, the batch's ``total_count`` is the
        records stored so far: a started batch's workers may run them before the upload ends."""
        with self.session() as s:
            s.add(
                Part(
                    batch_id=batch_id,
                    seq=seq,
                    start_index=start_index,
                    count=count,
                    bytes=size,
                    key=key,
                )
            )
            s.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.sealed.is_(False))
                .values(total_count=start_index + count)
            )
        self.notify(f"work:{batch_id}")

    def append_parts(
        self,
        batch_id: str,
        parts: Sequence[tuple[int, int, int, str]],
        records: int,
        may_add: Callable[[Batch], str | None],
    ) -> int:
        """Add the parts ``(start_index, count, bytes, key)`` of records added to a batch, whose
        ``start_index`` counts from 0 in the addition: they take the batch's next indices, and
        the next part numbers, in one transaction, so that additions made at once (on any node)
        never share an index. ``may_add(batch)`` says why the batch takes no records now (read
        locked), or None. Returns the index of the first record added; ValueError with the
        reason when it may not."""
        with self.session(locked=True) as s:
            batch = s.get(Batch, batch_id, with_for_update=True)
            if batch is None:
                raise ValueError(f"Batch {batch_id} does not exist any more.")
            problem = may_add(batch)
            if problem is not None:
                raise ValueError(problem)
            first = batch.total_count
            seq = s.scalar(select(func.max(Part.seq)).where(Part.batch_id == batch_id))
            seq = -1 if seq is None else seq
            for start, count, size, key in parts:
                seq += 1
                s.add(
                    Part(
                        batch_id=batch_id,
                        seq=seq,
                        start_index=first + start,
                        count=count,
                        bytes=size,
                        key=key,
                    )
                )
            # Adding records is no change of the batch's settings or state (as in Azure Batch,
            # adding tasks leaves a job's etag): its revision stays.
            batch.total_count = first + records
        self.notify(f"batch:{batch_id}")
        return int(first)

    def parts(self, batch_id: str) -> list[Part]:
        """A batch's upload parts, in record order."""
        with self.session() as s:
            return list(s.scalars(select(Part).where(Part.batch_id == batch_id).order_by(Part.seq)))

    def claim_chunk(
        self,
        batch_id: str,
        result_key_for: Callable[[Chunk], str],
        size_for: Callable[[int, bool], int] | None = None,
        *,
        node_id: str | None = None,
    ) -> Chunk | None:
        """Hand out the next chunk of a batch: it is running, with one more attempt.

        A chunk put back in the queue (requeued, or its worker lost) goes first, whole. Else a
        new chunk is cut from the batch's unclaimed records: ``size_for(remaining, sealed)``
        records from the first unclaimed one (without ``size_for``, all of them). While the
        upload goes on (``sealed`` False), only the records stored so far can be cut, and
        ``size_for`` may answer 0 to wait for more. ``result_key_for(chunk)`` names the file
        this attempt writes its results to. None when nothing of the batch is to run now, when
        its ``parallel_count`` chunks run already (on any node), or when it is being deleted.

        The claim is ``node_id``'s, and its token is the result key: every write of the attempt
        names it, so a node that lost its claim (its lease ran out) changes nothing. The batch
        row, locked, makes claims of one batch one at a time across nodes: its cap and its
        unclaimed records are read and changed by one claim at a time.
        """
        now = utcnow()
        pg = not self._sqlite
        with self.locked_connection() as conn:
            found = conn.execute(_claim_queries(pg).batch, {"batch_id": batch_id}).first()
            if found is None or found.deleting_since is not None:
                return None
            if found.state in _NOT_CLAIMING:
                return None  # cancelled, paused or ended meanwhile (by another node, say)
            running = conn.execute(_claim_queries(pg).running, {"batch_id": batch_id}).scalar()
            if (running or 0) >= parallel_cap(found.parallel_count):
                return None
            row = conn.execute(_claim_queries(pg).pending, {"batch_id": batch_id}).first()
            if row is not None:
                chunk = Chunk(**row._mapping)
                check_chunk_transition(chunk.state, ChunkState.RUNNING)
                waited = (now - chunk.queued_at).total_seconds() if chunk.queued_at else 0.0
                chunk.state = ChunkState.RUNNING.value
                chunk.attempts += 1
                chunk.wait_seconds += max(0.0, waited)
                chunk.queued_at = None
                chunk.started_at = now
                chunk.succeeded = chunk.failed = chunk.cancelled = 0
                chunk.result_key = result_key_for(chunk)
                chunk.node_id = node_id
                conn.execute(
                    _claim_queries(pg).restart,
                    {
                        "node_id": node_id,
                        "chunk_id": chunk.id,
                        "attempts": chunk.attempts,
                        "wait_seconds": chunk.wait_seconds,
                        "started_at": now,
                        "result_key": chunk.result_key,
                    },
                )
                return chunk
            if found.claimed >= found.total_count:
                return None
            remaining = found.total_count - found.claimed
            wanted = size_for(remaining, found.sealed) if size_for is not None else remaining
            if wanted <= 0:
                return None
            count = min(wanted, remaining, MAX_CHUNK_ROW)
            last = conn.execute(_claim_queries(pg).last_seq, {"batch_id": batch_id}).scalar()
            chunk = Chunk(
                batch_id=batch_id,
                seq=0 if last is None else last + 1,
                start_index=found.claimed,
                count=count,
                state=ChunkState.RUNNING.value,
                attempts=1,
                lost_workers=0,
                wait_seconds=0.0,
                started_at=now,
                succeeded=0,
                failed=0,
                cancelled=0,
                node_id=node_id,
            )
            chunk.result_key = result_key_for(chunk)
            values = {c.key: getattr(chunk, c.key) for c in _CHUNKS.columns if c.key != "id"}
            inserted = conn.execute(
                insert(_CHUNKS).values({k: v for k, v in values.items() if v is not None})
            )
            chunk.id = inserted.inserted_primary_key[0]  # type: ignore[index]
            conn.execute(
                _claim_queries(pg).advance, {"batch_id": batch_id, "count": count, "now": now}
            )
            return chunk

    def has_waiting_records(self, batch_id: str) -> bool:
        """True while records of the batch wait for a worker: unclaimed, or in a chunk put back
        in the queue."""
        return self._has_work(batch_id, (ChunkState.PENDING,))

    def has_unfinished_records(self, batch_id: str) -> bool:
        """True while records of the batch wait or run: one look in the batch row and in the
        chunk index, where counting every chunk's state grows with the batch."""
        return self._has_work(batch_id, (ChunkState.PENDING, ChunkState.RUNNING))

    def _has_work(self, batch_id: str, states: tuple[ChunkState, ...]) -> bool:
        with self.engine.connect() as conn:
            unclaimed = conn.execute(_unclaimed_query(), {"batch_id": batch_id}).first()
            if unclaimed is not None:
                return True
            found = conn.execute(_chunk_in_states_query(states), {"batch_id": batch_id})
            return found.first() is not None

    def get_chunk(self, chunk_id: int) -> Chunk | None:
        with self.session() as s:
            return s.get(Chunk, chunk_id)

    def chunks(self, batch_id: str, states: Sequence[ChunkState] | None = None) -> list[Chunk]:
        with self.session() as s:
            q = select(Chunk).where(Chunk.batch_id == batch_id).order_by(Chunk.start_index)
            if states is not None:
                q = q.where(Chunk.state.in_([st.value for st in states]))
            return list(s.scalars(q))

    def chunks_covering(self, batch_id: str, start: int, stop: int) -> list[Chunk]:
        """Chunks holding any index in ``[start, stop)``, in order."""
        # The bounds are compared as 64-bit numbers: a range past the last record may reach
        # beyond the 32-bit index columns, which PostgreSQL would refuse to compare as such.
        first, end = literal(start, BigInteger), literal(stop, BigInteger)
        with self.session() as s:
            q = (
                select(Chunk)
                .where(
                    Chunk.batch_id == batch_id,
                    Chunk.start_index < end,
                    Chunk.start_index + Chunk.count > first,
                )
                .order_by(Chunk.start_index)
            )
            return list(s.scalars(q))

    def set_chunk(
        self,
        chunk_id: int,
        *,
        expect_state: ChunkState | None = None,
        expect_key: str | None = None,
        **fields: Any,
    ) -> bool:
        """Update a chunk if it is still in ``expect_state`` (and attempt ``expect_key``).

        A new ``state`` needs ``expect_state``: the move is checked against the state table.
        """
        if "state" in fields:
            if expect_state is None:
                raise ValueError("changing a chunk's state needs expect_state")
            check_chunk_transition(expect_state, fields["state"])
        q = update(Chunk).where(Chunk.id == chunk_id)
        if expect_state is not None:
            q = q.where(Chunk.state == expect_state.value)
        if expect_key is not None:
            q = q.where(Chunk.result_key == expect_key)
        # Run on a connection, not a session: a plain table update. The scheduler sets chunks
        # after every worker message, and a session would look for copies of the row it holds
        # none of.
        with self.engine.begin() as conn:
            return conn.execute(q.values(**fields)).rowcount == 1

    def requeue_running_chunks(self) -> int:
        """At start-up: chunks left running by a previous process go back to pending."""
        check_chunk_transition(ChunkState.RUNNING, ChunkState.PENDING)
        with self.session() as s:
            res = s.execute(
                update(Chunk)
                .where(Chunk.state == ChunkState.RUNNING.value)
                .values(
                    state=ChunkState.PENDING.value,
                    succeeded=0,
                    failed=0,
                    cancelled=0,
                    queued_at=utcnow(),
                )
            )
            return int(res.rowcount)  # type: ignore[attr-defined]

    def finish_pending_chunks(self, batch_id: str, state: ChunkState, error: str) -> None:
        """Move every record of a batch that waits for a worker to a final state without
        running: cancelled (``state`` CANCELLED) or failed (FAILED). Pending chunks move, and
        the unclaimed rest becomes chunks in that state.

        A pending chunk may still name the result file of an attempt that was cut off (a lost
        worker, a crash); that file is dropped with it, so its results and counts agree.
        """
        counter = "cancelled" if state == ChunkState.CANCELLED else "failed"
        check_chunk_transition(ChunkState.PENDING, state)
        now = utcnow()
        with self.session(locked=True) as s:
            s.execute(
                update(Chunk)
                .where(Chunk.batch_id == batch_id, Chunk.state == ChunkState.PENDING.value)
                .values(
                    {
                        "state": state.value,
                        "finished_at": now,
                        "error": error,
                        "result_key": None,
                        "succeeded": 0,
                        "failed": 0,
                        "cancelled": 0,
                        counter: Chunk.count,
                    }
                )
            )
            batch = s.get(Batch, batch_id, with_for_update=True)
            if batch is None or not batch.sealed or batch.claimed >= batch.total_count:
                return
            last = s.scalar(select(func.max(Chunk.seq)).where(Chunk.batch_id == batch_id))
            seq = 0 if last is None else last + 1
            while batch.claimed < batch.total_count:
                count = min(batch.total_count - batch.claimed, MAX_CHUNK_ROW)
                s.add(
                    Chunk(
                        batch_id=batch_id,
                        seq=seq,
                        start_index=batch.claimed,
                        count=count,
                        state=state.value,
                        attempts=0,
                        lost_workers=0,
                        finished_at=now,
                        error=error,
                        succeeded=0,
                        failed=count if counter == "failed" else 0,
                        cancelled=count if counter == "cancelled" else 0,
                    )
                )
                batch.claimed += count
                seq += 1


@dataclass(frozen=True)
class _ClaimQueries:
    """The statements of :meth:`Store.claim_chunk`, built once (building one costs more than
    running it)."""

    pending: Any
    restart: Any
    batch: Any
    last_seq: Any
    advance: Any
    running: Any


@functools.cache
def _claim_queries(postgresql: bool) -> _ClaimQueries:
    chunks, batches = _CHUNKS, _BATCHES
    pending = (
        select(chunks)
        .where(
            chunks.c.batch_id == bindparam("batch_id"),
            chunks.c.state == ChunkState.PENDING.value,
        )
        .order_by(chunks.c.start_index)
        .limit(1)
    )
    batch = select(
        batches.c.sealed,
        batches.c.claimed,
        batches.c.total_count,
        batches.c.deleting_since,
        batches.c.parallel_count,
        batches.c.state,
    ).where(batches.c.id == bindparam("batch_id"))
    running = select(func.count()).where(
        chunks.c.batch_id == bindparam("batch_id"), chunks.c.state == ChunkState.RUNNING.value
    )
    if postgresql:  # SQLite's write lock, taken first, keeps others out instead
        pending = pending.with_for_update(skip_locked=True)
        batch = batch.with_for_update()
    restart = (
        update(chunks)
        .where(chunks.c.id == bindparam("chunk_id"))
        .values(
            state=ChunkState.RUNNING.value,
            attempts=bindparam("attempts"),
            wait_seconds=bindparam("wait_seconds"),
            queued_at=None,
            started_at=bindparam("started_at"),
            succeeded=0,
            failed=0,
            cancelled=0,
            result_key=bindparam("result_key"),
            node_id=bindparam("node_id"),
        )
    )
    last_seq = select(func.max(chunks.c.seq)).where(chunks.c.batch_id == bindparam("batch_id"))
    advance = (
        update(batches)
        .where(batches.c.id == bindparam("batch_id"))
        .values(
            claimed=batches.c.claimed + bindparam("count", type_=BigInteger),
            run_start_time=func.coalesce(
                batches.c.run_start_time, bindparam("now", type_=UTCDateTime())
            ),
        )
    )
    return _ClaimQueries(pending, restart, batch, last_seq, advance, running)


@functools.cache
def _unclaimed_query() -> Select[Any]:
    return select(Batch.id).where(
        Batch.id == bindparam("batch_id"),
        Batch.sealed.is_(True),
        Batch.claimed < Batch.total_count,
    )


@functools.cache
def _chunk_in_states_query(states: tuple[ChunkState, ...]) -> Select[Any]:
    return (
        select(Chunk.id)
        .where(
            Chunk.batch_id == bindparam("batch_id"), Chunk.state.in_([st.value for st in states])
        )
        .limit(1)
    )
