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
    BigInteger,
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
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, instrumentation, sessionmaker

from batchserve.states import (
    BatchState,
    ChunkState,
    check_batch_transition,
    check_chunk_transition,
)
from batchserve.store.models import (
    Batch,
    Chunk,
    Part,
    Service,
    ServiceName,
    ServicePublisher,
    Token,
    User,
    UTCDateTime,
    utcnow,
)

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
#: The most records one chunk row holds: a batch's unclaimed rest, cancelled at once, is
#: written as chunks of at most this many records (a chunk's count is a 32-bit column).
MAX_CHUNK_ROW = 1 << 30


class AlreadyExists(Exception):
    """A row with the same unique key exists."""


class LastOwner(Exception):
    """The change would leave no active owner."""


class RevisionMismatch(Exception):
    """The row changed since the caller read it (a stale etag)."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the current revision is {current}")
        self.current = current


@dataclass(frozen=True)
class ServiceBatch:
    """A batch of a service, as much as deciding whether the service may be deleted needs."""

    id: str
    owner_id: int
    owner: str | None  # the owner's username
    state: str
    sealed: bool  # its upload has finished
    deleting: bool  # its deletion was asked for


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


def make_engine(url: str) -> Engine:
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
    return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=20)


def _in_memory(url: str) -> bool:
    """An SQLite URL without a file: SQLAlchemy gives it a pool without size options."""
    return url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url


def _storable(*texts: str | None) -> bool:
    """Whether text can be in the store: PostgreSQL's text holds no NUL character, so no row
    has one, and a lookup by such text finds nothing here (as it does on SQLite) rather than
    failing in the driver."""
    return not any(t is not None and "\x00" in t for t in texts)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
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

    # --- users and tokens -------------------------------------------------------------------

    def add_user(self, username: str, password_hash: str, role: str) -> User:
        user = User(
            username=username,
            username_key=username.lower(),
            password_hash=password_hash,
            role=role,
            active=True,
            token_generation=0,
        )
        try:
            with self.session() as s:
                s.add(user)
        except IntegrityError:
            raise AlreadyExists(f"user {username!r}") from None
        return user

    def get_user(self, username: str) -> User | None:
        """The user of that name, its case aside (an exact match first: users of an earlier
        version that differ only in case keep their own names)."""
        if not _storable(username):
            return None
        with self.session() as s:
            found = s.scalar(select(User).where(User.username == username))
            if found is None:
                found = s.scalar(select(User).where(User.username_key == username.lower()))
            return found

    def get_user_by_id(self, user_id: int) -> User | None:
        with self.session() as s:
            return s.get(User, user_id)

    def update_user(self, user_id: int, **fields: Any) -> None:
        with self.session() as s:
            s.execute(update(User).where(User.id == user_id).values(**fields))

    def change_user(self, user_id: int, **fields: Any) -> None:
        """Update a user, refusing (:class:`LastOwner`) a change that would leave no active
        owner. The check and the change are one locked transaction, so two owners demoting
        each other at once cannot both succeed."""
        with self.session(locked=True) as s:
            user = s.get(User, user_id)
            if user is None:
                return
            stays_owner = fields.get("role", user.role) == "owner" and fields.get(
                "active", user.active
            )
            if not stays_owner:
                self._keep_an_owner(s, user)
            s.execute(update(User).where(User.id == user_id).values(**fields))

    def set_password(self, user_id: int, password_hash: str) -> None:
        """A new password: every token of the user stops working."""
        with self.session() as s:
            s.execute(
                update(User)
                .where(User.id == user_id)
                .values(password_hash=password_hash, token_generation=User.token_generation + 1)
            )
            s.execute(update(Token).where(Token.user_id == user_id).values(revoked=True))

    def remove_user(self, user_id: int) -> bool:
        """Delete a user who owns no service and no batch, and return True. A user who does
        (or whom another row refers to) is deactivated instead, and False is returned: their
        work keeps its owner. Refuses (:class:`LastOwner`) to remove the last active owner."""
        try:
            with self.session(locked=True) as s:
                user = s.get(User, user_id)
                if user is None:
                    return True
                self._keep_an_owner(s, user)
                owns = s.scalar(
                    select(
                        exists().where(Service.owner_id == user_id)
                        | exists().where(Batch.owner_id == user_id)
                    )
                )
                if not owns:
                    s.execute(delete(User).where(User.id == user_id))
                    return True
        except IntegrityError:
            pass  # a row of another kind refers to the user: deactivate them
        self.change_user(user_id, active=False)
        self.revoke_user_tokens(user_id)
        return False

    def revoke_user_tokens(self, user_id: int) -> None:
        """Stop every token of a user (bumps their token generation)."""
        with self.session() as s:
            s.execute(
                update(User)
                .where(User.id == user_id)
                .values(token_generation=User.token_generation + 1)
            )
            s.execute(update(Token).where(Token.user_id == user_id).values(revoked=True))

    @staticmethod
    def _keep_an_owner(s: Session, user: User) -> None:
        """Raise :class:`LastOwner` when ``user`` is the only active owner. The other owners'
        rows are locked (PostgreSQL) until the caller's transaction ends."""
        if user.role != "owner" or not user.active:
            return
        others = s.scalars(
            select(User.id)
            .where(User.role == "owner", User.active.is_(True), User.id != user.id)
            .with_for_update()
        ).all()
        if not others:
            raise LastOwner(user.username)

    def list_users(self) -> list[User]:
        with self.session() as s:
            return list(s.scalars(select(User).order_by(User.id)))

    def add_tokens(
        self,
        user_id: int,
        pair: str,
        tokens: Sequence[tuple[str, str, datetime]],
        generation: int = 0,
    ) -> None:
        """Store ``(kind, token_hash, expires_at)`` rows issued together as ``pair``, under
        the user's token ``generation`` read before the password was checked."""
        with self.session() as s:
            for kind, token_hash, expires_at in tokens:
                s.add(
                    Token(
                        user_id=user_id,
                        kind=kind,
                        pair=pair,
                        token_hash=token_hash,
                        expires_at=expires_at,
                        generation=generation,
                    )
                )

    def find_token(self, token_hash: str, kind: str) -> tuple[Token, User] | None:
        with self.session() as s:
            row = s.execute(
                select(Token, User)
                .join(User, User.id == Token.user_id)
                .where(Token.token_hash == token_hash, Token.kind == kind)
            ).first()
            return (row[0], row[1]) if row else None

    def revoke_pair(self, pair: str) -> None:
        with self.session() as s:
            s.execute(update(Token).where(Token.pair == pair).values(revoked=True))

    def touch_token(self, token_id: int, expires_at: datetime) -> None:
        with self.session() as s:
            s.execute(update(Token).where(Token.id == token_id).values(expires_at=expires_at))

    # --- services ---------------------------------------------------------------------------

    def add_service(self, **fields: Any) -> Service:
        svc = Service(**fields)
        try:
            with self.session() as s:
                s.add(svc)
        except IntegrityError:
            raise AlreadyExists(f"service {fields['name']} {fields['version']}") from None
        return svc

    def get_service(self, name: str, version: str | None) -> Service | None:
        """One version, or the newest when ``version`` is None or ``latest``."""
        if not _storable(name, version):
            return None
        with self.session() as s:
            q = select(Service).where(Service.name == name)
            if version in (None, "latest"):
                q = q.order_by(Service.created_at.desc(), Service.id.desc()).limit(1)
            else:
                q = q.where(Service.version == version)
            return s.scalar(q)

    def find_service(self, name: str, version: str | None) -> Service | None:
        """What :meth:`get_service` returns, read the cheap way for request-response calls:
        a prebuilt statement on a plain connection, no ORM session."""
        if not _storable(name, version):
            return None
        newest = version in (None, "latest")
        with self.engine.connect() as conn:
            row = conn.execute(
                _service_query(newest), {"name": name, "version": None if newest else version}
            ).first()
        if row is None:
            return None
        return Service(**{c.key: v for c, v in zip(Service.__table__.columns, row, strict=True)})

    def get_service_by_id(self, service_id: int) -> Service | None:
        with self.session() as s:
            return s.get(Service, service_id)

    def list_services(self, name: str | None = None) -> list[Service]:
        if not _storable(name):
            return []
        with self.session() as s:
            q = select(Service).order_by(Service.created_at, Service.id)
            if name is not None:
                q = q.where(Service.name == name)
            return list(s.scalars(q))

    def update_service(self, service_id: int, **fields: Any) -> None:
        with self.session() as s:
            s.execute(update(Service).where(Service.id == service_id).values(**fields))

    def delete_service(self, service_id: int) -> None:
        with self.session() as s:
            s.execute(delete(Service).where(Service.id == service_id))

    def service_batches(self, service_id: int) -> list[ServiceBatch]:
        """Every batch of a service version, uploads under way and batches being deleted
        included, with its owner's username: what deleting the service would take with it."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    Batch.id,
                    Batch.owner_id,
                    User.username,
                    Batch.state,
                    Batch.sealed,
                    Batch.deleting_since.is_not(None),
                )
                .select_from(Batch)
                .outerjoin(User, User.id == Batch.owner_id)
                .where(Batch.service_id == service_id)
                .order_by(Batch.creation_time, Batch.id)
            )
            return [ServiceBatch(*row) for row in rows]

    # --- service names ----------------------------------------------------------------------

    def get_service_name(self, name: str) -> ServiceName | None:
        if not _storable(name):
            return None
        with self.session() as s:
            return s.get(ServiceName, name)

    def claim_service_name(self, name: str, user_id: int) -> ServiceName:
        """The name's row; made with ``user_id`` as the name's owner when it has none yet."""
        found = self.get_service_name(name)
        if found is not None:
            return found
        row = ServiceName(name=name, owner_id=user_id, created_at=utcnow())
        try:
            with self.session() as s:
                s.add(row)
        except IntegrityError:
            found = self.get_service_name(name)  # another publisher claimed it first
            if found is None:
                raise
            return found
        return row

    def may_publish(self, name: str, user_id: int) -> bool:
        """True when ``user_id`` was granted the service name ``name``."""
        with self.session() as s:
            return s.get(ServicePublisher, (name, user_id)) is not None

    def grant_publisher(self, name: str, user_id: int, granted_by: int) -> bool:
        """Let ``user_id`` publish under ``name``; False when it could already."""
        try:
            with self.session() as s:
                if s.get(ServicePublisher, (name, user_id)) is not None:
                    return False
                s.add(
                    ServicePublisher(
                        name=name, user_id=user_id, granted_by=granted_by, created_at=utcnow()
                    )
                )
        except IntegrityError:  # granted by someone else at the same moment
            return False
        return True

    def revoke_publisher(self, name: str, user_id: int) -> bool:
        """Take back a grant; False when there was none."""
        with self.session() as s:
            res = s.execute(
                delete(ServicePublisher).where(
                    ServicePublisher.name == name, ServicePublisher.user_id == user_id
                )
            )
            return res.rowcount == 1  # type: ignore[attr-defined]

    def service_publishers(self, name: str) -> list[tuple[ServicePublisher, str, str | None]]:
        """The grants of a service name, oldest first: each with the grantee's username and
        the username of who granted it (None once that user is removed)."""
        granter = aliased(User)
        with self.session() as s:
            rows = s.execute(
                select(ServicePublisher, User.username, granter.username)
                .join(User, User.id == ServicePublisher.user_id)
                .outerjoin(granter, granter.id == ServicePublisher.granted_by)
                .where(ServicePublisher.name == name)
                .order_by(ServicePublisher.created_at, User.username)
            )
            return [(row[0], row[1], row[2]) for row in rows]

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
        if not _storable(batch_id):
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
        if not _storable(*(metadata or {}).keys(), *(metadata or {}).values()):
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
        **fields: Any,
    ) -> Batch | None:
        """Move a batch to ``wanted`` if the state table allows it.

        Returns the updated row, or None when the batch is gone or its current state is not in
        ``only_from`` (a race lost to another change). Raises
        :class:`~batchserve.states.InvalidTransition` for a move the table forbids.
        """
        with self.session(locked=True) as s:
            batch = s.get(Batch, batch_id, with_for_update=True)
            if batch is None or (only_from is not None and batch.state not in only_from):
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
        if wanted.is_final and self.on_end is not None:
            self.on_end(batch_id)
        return batch

    def delete_batch(self, batch_id: str) -> None:
        with self.session() as s:
            s.execute(delete(Chunk).where(Chunk.batch_id == batch_id))
            s.execute(delete(Part).where(Part.batch_id == batch_id))
            s.execute(delete(Batch).where(Batch.id == batch_id))
        if self.on_end is not None:
            self.on_end(batch_id)

    def mark_deleting(self, batch_id: str) -> bool:
        """Record that the batch is to be deleted; False when it is gone or was marked already
        (by a delete that came first)."""
        with self.session() as s:
            res = s.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.deleting_since.is_(None))
                .values(deleting_since=utcnow())
            )
            return res.rowcount == 1  # type: ignore[attr-defined]

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
        if not _storable(batch_id):
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

    def parts(self, batch_id: str) -> list[Part]:
        """A batch's upload parts, in record order."""
        with self.session() as s:
            return list(s.scalars(select(Part).where(Part.batch_id == batch_id).order_by(Part.seq)))

    def claim_chunk(
        self,
        batch_id: str,
        result_key_for: Callable[[Chunk], str],
        size_for: Callable[[int, bool], int] | None = None,
    ) -> Chunk | None:
        """Hand out the next chunk of a batch: it is running, with one more attempt.

        A chunk put back in the queue (requeued, or its worker lost) goes first, whole. Else a
        new chunk is cut from the batch's unclaimed records: ``size_for(remaining, sealed)``
        records from the first unclaimed one (without ``size_for``, all of them). While the
        upload goes on (``sealed`` False), only the records stored so far can be cut, and
        ``size_for`` may answer 0 to wait for more. ``result_key_for(chunk)`` names the file
        this attempt writes its results to. None when nothing of the batch is to run now, or
        when it is being deleted.
        """
        now = utcnow()
        pg = not self._sqlite
        with self.locked_connection() as conn:
            found = conn.execute(_claim_queries(pg).batch, {"batch_id": batch_id}).first()
            if found is None or found.deleting_since is not None:
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
                conn.execute(
                    _claim_queries(pg).restart,
                    {
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


@dataclass(frozen=True)
class _ClaimQueries:
    """The statements of :meth:`Store.claim_chunk`, built once (building one costs more than
    running it)."""

    pending: Any
    restart: Any
    batch: Any
    last_seq: Any
    advance: Any


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
        batches.c.sealed, batches.c.claimed, batches.c.total_count, batches.c.deleting_since
    ).where(batches.c.id == bindparam("batch_id"))
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
    return _ClaimQueries(pending, restart, batch, last_seq, advance)


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


@functools.cache
def _service_query(newest: bool) -> Select[Any]:
    services = Service.__table__
    query = select(services).where(services.c.name == bindparam("name"))
    if newest:
        return query.order_by(services.c.created_at.desc(), services.c.id.desc()).limit(1)
    return query.where(services.c.version == bindparam("version"))


def _counts_of(row: Sequence[Any]) -> BatchCounts:
    """:class:`BatchCounts` from the values of :func:`_count_columns`."""
    sums = dict(zip(_SUMMED, row[: len(_SUMMED)], strict=True))
    chunks, chunks_final, chunks_running = (int(v) for v in row[len(_SUMMED) :])
    values: dict[str, Any] = {n: float(v) if n in _FLOAT_SUMS else int(v) for n, v in sums.items()}
    return BatchCounts(
        **values, chunks=chunks, chunks_final=chunks_final, chunks_running=chunks_running
    )
