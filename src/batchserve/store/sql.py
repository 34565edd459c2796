"""The metadata store over SQLAlchemy: SQLite (embedded default) or PostgreSQL.

Every method is one short transaction and returns detached rows (``expire_on_commit=False``),
so callers never hold a session. Batch state changes go through :meth:`Store.transition`,
which consults the one state table in :mod:`batchserve.states`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, instrumentation, sessionmaker

from batchserve.states import (
    BatchState,
    ChunkState,
    check_batch_transition,
)
from batchserve.store.accounts import AccountQueries
from batchserve.store.base import RevisionMismatch, storable
from batchserve.store.chunks import ChunkQueries
from batchserve.store.metrics import MetricQueries
from batchserve.store.models import (
    Batch,
    Chunk,
    Part,
    Service,
    User,
    utcnow,
)
from batchserve.store.nodes import NodeQueries
from batchserve.store.progress import ProgressQueries
from batchserve.store.services import ServiceQueries

_CHUNKS: Table = Chunk.__table__  # type: ignore[assignment]
_BATCHES: Table = Batch.__table__  # type: ignore[assignment]

# Chunk columns that a batch's statistics sum up, and which of them are seconds.
_SUMMED = (
    "succeeded",
    "failed",
    "cancelled",
    "retried",
    "timed_out",
    "requeued",
    "cpu_user",
    "cpu_system",
    "wait_seconds",
    "bytes_in",
    "bytes_out",
    "run_seconds",
)
_FLOAT_SUMS = frozenset({"cpu_user", "cpu_system", "wait_seconds", "run_seconds"})


@dataclass(frozen=True)
class BatchCounts:
    """A batch's record counts and task statistics, summed over its chunks now."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    chunks: int = 0
    chunks_final: int = 0
    chunks_running: int = 0
    retried: int = 0
    timed_out: int = 0
    requeued: int = 0
    cpu_user: float = 0.0
    cpu_system: float = 0.0
    wait_seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    run_seconds: float = 0.0

    @property
    def completed(self) -> int:
        return self.succeeded + self.failed


#: PostgreSQL settings of every connection of a node. No statement waits more than a few seconds
#: for a row lock (a node paused in the middle of a transaction must not stop the others for
#: long: the statement fails, and the step is done again), and a transaction left idle by a
#: paused or cut-off node is ended by the server, its locks with it.
PG_OPTIONS = "-c lock_timeout=5000 -c idle_in_transaction_session_timeout=30000"


def make_engine(url: str, name: str = "batchserve") -> Engine:
    if url.startswith("sqlite"):
        # As many pooled connections as the server has request threads (anyio's default limit
        # is 40): past the pool size each checkout opens, sets up and closes a new connection,
        # which under 32 concurrent status polls cost more than the reads themselves.
        pool: dict[str, Any] = {} if _in_memory(url) else {"pool_size": 40, "max_overflow": 10}
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **pool
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # Up to 40 request threads and the scheduler read and write at once; SQLAlchemy's default
    # of 5 (+10 opened and closed on demand) would queue them. 20 + 20 keeps two servers within
    # PostgreSQL's default of 100 connections.
    # Each node's connections carry its name, so that a node found dead can have them ended.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=20,
        max_overflow=20,
        connect_args={"application_name": name[:63], "options": PG_OPTIONS},
    )


def _in_memory(url: str) -> bool:
    """An SQLite URL without a file: SQLAlchemy gives it a pool without size options."""
    return url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url


class Store(
    AccountQueries, ServiceQueries, ChunkQueries, NodeQueries, MetricQueries, ProgressQueries
):
    def __init__(self, url: str, name: str = "batchserve") -> None:
        """``name``: what this process's connections are called (PostgreSQL's
        ``application_name``); a node's is ``batchserve <node id>``."""
        self.url = url
        self.name = name
        self.engine = make_engine(url, name)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._sqlite = self.engine.dialect.name == "sqlite"
        # Status polling on a local file: the read runs on the event loop, where every
        # microsecond counts. A database across a network is read the usual way on a thread.
        self._status_read = (
            _Prepared(_batch_status_query(), self.engine.dialect) if self._sqlite else None
        )
        # Told the id of a batch, once committed, that ended (reached a final state) or is gone.
        self.on_end: Callable[[str], None] | None = None

    @property
    def reads_are_local(self) -> bool:
        """True when a read is a look into a local file that no writer holds up (SQLite in
        WAL mode): tens of microseconds, cheaper done at once than handed to a thread."""
        return self._sqlite

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def locked_connection(self) -> Iterator[Connection]:
        """One transaction on a plain connection that reads rows in order to change them (see
        :meth:`session`): SQLite's write lock is taken at once; PostgreSQL statements lock
        their rows with ``FOR UPDATE``."""
        with self.engine.begin() as conn:
            if self._sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    @contextmanager
    def session(self, *, locked: bool = False) -> Iterator[Session]:
        """One transaction. ``locked``: it reads rows in order to change them, so no other
        writer may come between its reads and its writes. PostgreSQL does that with the rows'
        ``FOR UPDATE``; SQLite has no row locks, and its driver starts a transaction only at
        the first write, so such a transaction takes SQLite's write lock at once instead.
        """
        with self._sessions.begin() as s:
            if locked and self._sqlite:
                s.execute(text("BEGIN IMMEDIATE"))
            yield s

    # --- batches ----------------------------------------------------------------------------

    def add_batch(self, **fields: Any) -> Batch:
        now = utcnow()
        batch = Batch(
            creation_time=now,
            last_modified=now,
            state_transition_time=now,
            state=BatchState.CREATED.value,
            revision=1,
            **fields,
        )
        with self.session() as s:
            s.add(batch)
        return batch

    def get_batch(self, batch_id: str) -> Batch | None:
        if not storable(batch_id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(_batch_query(), {"batch_id": batch_id}).first()
        return None if row is None else _detached_batch(row)

    def list_batches(
        self,
        *,
        service_ids: Sequence[int] | None = None,
        states: Sequence[str] | None = None,
        owner_id: int | None = None,
        metadata: Mapping[str, str] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        before: tuple[datetime, str] | None = None,
        include_deleting: bool = False,
    ) -> list[Batch]:
        """Sealed batches, newest first: the ``limit`` after ``before``, the (creation_time, id) of
        the last row of the previous page.

        ``metadata`` keeps the batches whose metadata has every one of these key/value pairs;
        ``created_after`` and ``created_before`` bound the creation time (both exclusive).
        Paging by (creation_time, id) rather than by offset keeps pages stable while batches are
        added: a new batch sorts before every page already read. Batches marked for deletion
        are left out unless ``include_deleting``.
        """
        if not storable(*(metadata or {}).keys(), *(metadata or {}).values()):
            return []
        with self.session() as s:
            q = select(Batch).where(Batch.sealed.is_(True))
            if not include_deleting:
                q = q.where(Batch.deleting_since.is_(None))
            if service_ids is not None:
                q = q.where(Batch.service_id.in_(service_ids))
            if states:
                q = q.where(Batch.state.in_(states))
            if owner_id is not None:
                q = q.where(Batch.owner_id == owner_id)
            for key, value in (metadata or {}).items():
                q = q.where(self._metadata_is(key, value))
            if created_after is not None:
                q = q.where(Batch.creation_time > created_after)
            if created_before is not None:
                q = q.where(Batch.creation_time < created_before)
            if before is not None:
                t, bid = before
                q = q.where(
                    (Batch.creation_time < t) | ((Batch.creation_time == t) & (Batch.id < bid))
                )
            q = q.order_by(Batch.creation_time.desc(), Batch.id.desc()).limit(limit)
            return list(s.scalars(q))

    def _metadata_is(self, key: str, value: str) -> ColumnElement[bool]:
        """A condition: the batch's ``options["metadata"][key]`` equals ``value``."""
        if self.engine.dialect.name == "sqlite":
            # SQLite's JSON paths cannot spell every key (quotes, non-ASCII), so the metadata
            # object is walked with json_each and its keys compared as plain text.
            pairs = func.json_each(Batch.options, "$.metadata").table_valued("key", "value")
            match = select(literal(1)).select_from(pairs)
            return exists(match.where(pairs.c.key == key, pairs.c.value == value))
        return Batch.options["metadata"][key].as_string() == value

    def update_batch(
        self, batch_id: str, *, expect_revision: int | None = None, **fields: Any
    ) -> Batch | None:
        """Change batch settings (not its state); bumps the etag and ``last_modified``.

        With ``expect_revision`` the change is made only if the batch is still at that revision
        (else :class:`RevisionMismatch`), checked and written in one transaction.
        """
        with self.session(locked=True) as s:
            batch = s.get(Batch, batch_id, with_for_update=True)
            if batch is None:
                return None
            if expect_revision is not None and batch.revision != expect_revision:
                raise RevisionMismatch(batch.revision)
            for k, v in fields.items():
                setattr(batch, k, v)
            batch.revision += 1
            batch.last_modified = utcnow()
        self.notify(f"batch:{batch_id}")
        return batch

    def set_batch_times(self, batch_id: str, **fields: Any) -> None:
        """Record times of a batch (``export_seconds``): not a change of the batch, so its etag
        and ``last_modified`` stay."""
        with self.engine.begin() as conn:
            conn.execute(update(Batch).where(Batch.id == batch_id).values(**fields))

    def transition(
        self,
        batch_id: str,
        wanted: BatchState,
        *,
        only_from: Sequence[BatchState] | None = None,
        expect_revision: int | None = None,
        **fields: Any,
    ) -> Batch | None:
        """Move a batch to ``wanted`` if the state table allows it.

        Returns the updated row, or None when the batch is gone or its current state is not in
        ``only_from`` (a race lost to another change). Raises
        :class:`~batchserve.states.InvalidTransition` for a move the table forbids, and
        :class:`RevisionMismatch` when ``expect_revision`` is given and the batch is at another.
        """
        with self.session(locked=True) as s:
            batch = s.get(Batch, batch_id, with_for_update=True)
            if batch is None:
                return None
            if expect_revision is not None and batch.revision != expect_revision:
                raise RevisionMismatch(batch.revision)
            if only_from is not None and batch.state not in only_from:
                return None
            check_batch_transition(batch.state, wanted)
            now = utcnow()
            batch.previous_state = batch.state
            batch.previous_state_transition_time = batch.state_transition_time
            batch.state = wanted.value
            batch.state_transition_time = now
            batch.last_modified = now
            batch.revision += 1
            for k, v in fields.items():
                setattr(batch, k, v)
        self.notify(f"end:{batch_id}" if wanted.is_final else f"batch:{batch_id}")
        if wanted.is_final and self.on_end is not None:
            self.on_end(batch_id)
        return batch

    def delete_batch(self, batch_id: str) -> None:
        with self.session() as s:
            s.execute(delete(Chunk).where(Chunk.batch_id == batch_id))
            s.execute(delete(Part).where(Part.batch_id == batch_id))
            s.execute(delete(Batch).where(Batch.id == batch_id))
        self.notify(f"end:{batch_id}")
        if self.on_end is not None:
            self.on_end(batch_id)

    def mark_deleting(self, batch_id: str, *, expect_revision: int | None = None) -> bool:
        """Record that the batch is to be deleted; False when it is gone or was marked already
        (by a delete that came first). With ``expect_revision``, :class:`RevisionMismatch` when
        the batch is at another revision (checked and marked in one transaction)."""
        with self.session(locked=True) as s:
            batch = s.get(Batch, batch_id, with_for_update=True)
            if batch is None or batch.deleting_since is not None:
                return False
            if expect_revision is not None and batch.revision != expect_revision:
                raise RevisionMismatch(batch.revision)
            # Its state says so too (Azure Batch's ``deleting``); ``deleting_since`` is what the
            # engine acts on, whatever state the batch had.
            check_batch_transition(batch.state, BatchState.DELETING)
            now = utcnow()
            batch.previous_state = batch.state
            batch.previous_state_transition_time = batch.state_transition_time
            batch.state = BatchState.DELETING.value
            batch.state_transition_time = now
            batch.last_modified = now
            batch.revision += 1
            batch.deleting_since = now
            marked = True
        if marked:
            self.notify(f"batch:{batch_id}")
        return bool(marked)

    def batches_being_deleted(self) -> list[Batch]:
        """Batches marked for deletion and not removed yet, the longest waiting first."""
        with self.session() as s:
            q = select(Batch).where(Batch.deleting_since.is_not(None))
            return list(s.scalars(q.order_by(Batch.deleting_since, Batch.id)))

    def batches_in_states(
        self, states: Sequence[BatchState], *, sealed: bool | None = True
    ) -> list[Batch]:
        """Batches in these states, highest priority first, first come first within one.

        Batches marked for deletion are left out: nothing is done with them but their removal.
        """
        q = select(*Batch.__table__.columns).where(
            Batch.state.in_([st.value for st in states]), Batch.deleting_since.is_(None)
        )
        if sealed is not None:
            q = q.where(Batch.sealed.is_(sealed))
        q = q.order_by(Batch.priority.desc(), Batch.creation_time, Batch.id)
        with self.engine.connect() as conn:
            return [_detached_batch(row) for row in conn.execute(q)]

    def ended_batches(self, batch_ids: Sequence[str]) -> set[str]:
        """Which of these batches have ended: in a final state, being deleted, or gone."""
        if not batch_ids:
            return set()
        final = [st.value for st in BatchState if st.is_final]
        q = select(Batch.id, Batch.state, Batch.deleting_since).where(Batch.id.in_(batch_ids))
        with self.engine.connect() as conn:
            live = {
                row.id
                for row in conn.execute(q)
                if row.state not in final and row.deleting_since is None
            }
        return set(batch_ids) - live

    def batch_counts(self, batch_id: str) -> BatchCounts:
        with self.engine.connect() as conn:
            row = conn.execute(_counts_query(), {"batch_id": batch_id}).one()
        return _counts_of(row)

    def batch_status(self, batch_id: str) -> tuple[Batch, BatchCounts, str | None] | None:
        """A batch, its counts and its owner's username, read in one statement.

        The hot read behind status polling: one round trip on a plain connection (no ORM
        session), with a statement built once (building it and its cache key cost more than
        running it), where ``get_batch`` + ``batch_counts`` + ``get_user_by_id`` took three
        transactions.
        """
        if not storable(batch_id):
            return None
        if self._status_read is not None:
            row = self._status_read.first(self.engine, {"batch_id": batch_id})
        else:
            with self.engine.connect() as conn:
                row = conn.execute(_batch_status_query(), {"batch_id": batch_id}).first()
        if row is None:
            return None
        columns = Batch.__table__.columns
        return _detached_batch(row), _counts_of(row[len(columns) + 1 :]), row[len(columns)]

    def mark_queued(self, batch_id: str) -> None:
        """The batch was started: its pending chunks wait for workers from now on."""
        with self.session() as s:
            s.execute(
                update(Chunk)
                .where(Chunk.batch_id == batch_id, Chunk.state == ChunkState.PENDING.value)
                .values(queued_at=utcnow())
            )

    def observe_costs(self, service_id: int, *, chunk: float, call: float, record: float) -> None:
        """Keep a service's estimated costs (see :mod:`batchserve.engine.costs`) for its next
        batches."""
        with self.session() as s:
            s.execute(
                update(Service)
                .where(Service.id == service_id)
                .values(chunk_seconds=chunk, call_seconds=call, record_seconds=record)
            )

    # --- parts and chunks -------------------------------------------------------------------


def _count_columns() -> list[Any]:
    """The aggregates over a batch's chunks that make its :class:`BatchCounts`, in order."""
    # Final = neither pending nor running: two comparisons, where IN (...) would be expanded
    # anew for every execution of the cached statement.
    final = (Chunk.state != ChunkState.PENDING.value) & (Chunk.state != ChunkState.RUNNING.value)
    return [
        *(func.coalesce(func.sum(getattr(Chunk, n)), 0) for n in _SUMMED),
        func.count(Chunk.id),
        func.count(Chunk.id).filter(final),
        func.count(Chunk.id).filter(Chunk.state == ChunkState.RUNNING.value),
    ]


class _Prepared:
    """A SELECT compiled once for SQLite and run on a pooled DBAPI connection, its values
    converted by the column types' own result processors: the statement and the conversions
    SQLAlchemy would run, without its per-execution bookkeeping (an execution context, a
    result object, a cache lookup), which costs more than a read of one row."""

    def __init__(self, statement: Select[Any], dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.positional = compiled.positiontup
        self.defaults = {k: v for k, v in compiled.params.items() if v is not None}
        self.processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.selected_columns
        ]

    def first(self, engine: Engine, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        values = {**self.defaults, **params}
        bound: Any = [values[k] for k in self.positional] if self.positional else values
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self.sql, bound)
                row = cursor.fetchone()
            finally:
                cursor.close()
        finally:  # back to the pool, which ends the read transaction
            connection.close()
        if row is None:
            return None
        return tuple(v if f is None else f(v) for f, v in zip(self.processors, row, strict=True))


@functools.cache
def _batch_manager() -> Any:
    return instrumentation.manager_of_class(Batch)


@functools.cache
def _batch_keys() -> tuple[str, ...]:
    return tuple(c.key for c in Batch.__table__.columns)


def _detached_batch(row: Sequence[Any]) -> Batch:
    """A detached Batch from a row that starts with the batch's columns, made as the ORM's own
    loader makes one: the values go straight into its __dict__. Read through a session, or
    made with Batch(**values), every value would pass through attribute events, which cost
    more than the read: the scheduler reads batches after every worker message."""
    batch = _batch_manager().new_instance()
    batch.__dict__.update(zip(_batch_keys(), row, strict=False))
    return batch


@functools.cache
def _batch_query() -> Select[Any]:
    return select(*Batch.__table__.columns).where(Batch.id == bindparam("batch_id"))


@functools.cache
def _counts_query() -> Select[Any]:
    return select(*_count_columns()).where(Chunk.batch_id == bindparam("batch_id"))


@functools.cache
def _batch_status_query() -> Select[Any]:
    batches, users, chunks = Batch.__table__, User.__table__, Chunk.__table__
    return (
        select(batches, users.c.username, *_count_columns())
        .select_from(
            batches.outerjoin(users, users.c.id == batches.c.owner_id).outerjoin(
                chunks, chunks.c.batch_id == batches.c.id
            )
        )
        .where(batches.c.id == bindparam("batch_id"))
        # Grouped by the primary key: every batch column depends on it (PostgreSQL agrees).
        .group_by(batches.c.id, users.c.username)
    )


def _counts_of(row: Sequence[Any]) -> BatchCounts:
    """:class:`BatchCounts` from the values of :func:`_count_columns`."""
    sums = dict(zip(_SUMMED, row[: len(_SUMMED)], strict=True))
    chunks, chunks_final, chunks_running = (int(v) for v in row[len(_SUMMED) :])
    values: dict[str, Any] = {n: float(v) if n in _FLOAT_SUMS else int(v) for n, v in sums.items()}
    return BatchCounts(
        **values, chunks=chunks, chunks_final=chunks_final, chunks_running=chunks_running
    )
