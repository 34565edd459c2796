"""What the nodes sharing one store know of each other: who is alive, which chunks each one
runs, the one-record requests waiting for a compute node, and the notifications that wake them.

Mixed into :class:`~batchserve.store.Store`; every method is one short transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from batchserve.states import ChunkState
from batchserve.store.models import Batch, Chunk, ConsumeRequest, Node, utcnow

if TYPE_CHECKING:
    from sqlalchemy import Engine

#: The PostgreSQL channel every node listens on. Payloads are ``kind:id``: ``batch:`` (a batch
#: changed: look at it), ``end:`` (a batch ended or is gone), ``work:`` (records wait for
#: workers), ``consume:`` (a one-record request waits) and ``consumed:`` (it was answered).
CHANNEL = "batchserve"


def node_name(node_id: str) -> str:
    """What a node's database connections are called (PostgreSQL's ``application_name``)."""
    return f"batchserve {node_id}"


class NodeQueries:
    engine: Engine
    _sqlite: bool

    if TYPE_CHECKING:

        def session(self, *, locked: bool = False) -> AbstractContextManager[Session]: ...

    # --- notifications ----------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        """True when other processes may share this store (PostgreSQL)."""
        return not self._sqlite

    def notify(self, *payloads: str) -> None:
        """Wake the other nodes (PostgreSQL ``NOTIFY``); nothing on SQLite, which one node
        has to itself. A notification lost is a delay, not a loss: nodes also look on their
        own, now and then."""
        if self._sqlite or not payloads:
            return
        try:
            with self.engine.begin() as conn:
                for payload in dict.fromkeys(payloads):
                    conn.execute(
                        text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": CHANNEL, "payload": payload[:7000]},
                    )
        except Exception:  # a wake-up is never worth failing the change that was made
            pass

    # --- nodes ------------------------------------------------------------------------------

    def register_node(self, node: Node) -> None:
        with self.session() as s:
            s.merge(node)

    def renew_node(self, node_id: str, lease_until: datetime, draining: bool, leader: bool) -> bool:
        """Renew a node's lease; False when its row is gone (it was found dead and its work
        was taken back)."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(Node)
                .where(Node.id == node_id)
                .values(
                    heartbeat_at=utcnow(),
                    lease_until=lease_until,
                    draining=draining,
                    leader=leader,
                )
            )
            return int(res.rowcount) == 1

    def end_sessions(self, node_id: str) -> int:
        """End the database connections of a node found dead (PostgreSQL): a node paused in
        the middle of a transaction holds its row locks until then. How many were ended."""
        if self._sqlite:
            return 0
        with self.engine.begin() as conn:
            ended = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name AND datname = current_database()"
                ),
                {"name": node_name(node_id)},
            )
            return len(ended.fetchall())

    def remove_node(self, node_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(Node).where(Node.id == node_id))

    def leader_node(self) -> str | None:
        """The id of the node that said last that it leads, if its lease runs."""
        with self.session() as s:
            q = (
                select(Node.id)
                .where(Node.leader.is_(True), Node.lease_until >= utcnow())
                .order_by(Node.heartbeat_at.desc())
                .limit(1)
            )
            return s.scalar(q)

    def node_rows(self) -> list[Node]:
        with self.session() as s:
            return list(s.scalars(select(Node)))

    def compute_nodes(self) -> list[Node]:
        """Nodes with workers whose lease runs, that take new work."""
        with self.session() as s:
            q = select(Node).where(
                Node.role != "api", Node.lease_until >= utcnow(), Node.draining.is_(False)
            )
            return list(s.scalars(q))

    def nodes(self) -> list[tuple[Node, int]]:
        """Every node with a row, and how many chunks each runs, the oldest node first."""
        running = (
            select(Chunk.node_id, func.count().label("n"))
            .where(Chunk.state == ChunkState.RUNNING.value, Chunk.node_id.is_not(None))
            .group_by(Chunk.node_id)
            .subquery()
        )
        q = (
            select(Node, func.coalesce(running.c.n, 0))
            .outerjoin(running, running.c.node_id == Node.id)
            .order_by(Node.started_at, Node.id)
        )
        with self.session() as s:
            return [(node, int(n)) for node, n in s.execute(q)]

    # --- chunks across nodes ----------------------------------------------------------------

    def running_chunks(self, batch_id: str) -> int:
        """How many chunks of a batch run now, on any node."""
        with self.engine.connect() as conn:
            q = select(func.count()).where(
                Chunk.batch_id == batch_id, Chunk.state == ChunkState.RUNNING.value
            )
            return int(conn.execute(q).scalar_one())

    def chunk_claims(self, chunk_ids: Iterable[int]) -> dict[int, tuple[str, str | None]]:
        """The state and result key (the claim's token) of each chunk still there."""
        ids = list(chunk_ids)
        if not ids:
            return {}
        with self.engine.connect() as conn:
            q = select(Chunk.id, Chunk.state, Chunk.result_key).where(Chunk.id.in_(ids))
            return {row.id: (row.state, row.result_key) for row in conn.execute(q)}

    def orphaned_chunks(self, live: Sequence[str]) -> list[Chunk]:
        """Running chunks whose node is not among the ``live`` ones: their claims are void."""
        with self.session() as s:
            q = select(Chunk).where(
                Chunk.state == ChunkState.RUNNING.value,
                Chunk.node_id.is_(None) | Chunk.node_id.not_in(list(live)),
            )
            return list(s.scalars(q.order_by(Chunk.id)))

    def batches_by_ids(self, batch_ids: Iterable[str]) -> dict[str, Batch]:
        """The batches still there among these, those being deleted included."""
        ids = list(batch_ids)
        if not ids:
            return {}
        with self.session() as s:
            return {b.id: b for b in s.scalars(select(Batch).where(Batch.id.in_(ids)))}

    def abandoned_uploads(self, live: Sequence[str]) -> list[Batch]:
        """Batches whose upload never finished and whose receiving node is dead."""
        with self.session() as s:
            q = select(Batch).where(
                Batch.sealed.is_(False),
                Batch.upload_node.is_(None) | Batch.upload_node.not_in(list(live)),
            )
            return list(s.scalars(q))

    # --- one-record requests ----------------------------------------------------------------

    def add_consume(self, consume_id: str, service_id: int, inputs: dict[str, Any]) -> None:
        with self.session() as s:
            s.add(
                ConsumeRequest(
                    id=consume_id,
                    service_id=service_id,
                    inputs=inputs,
                    state="pending",
                    created_at=utcnow(),
                )
            )
        self.notify(f"consume:{consume_id}")

    def claim_consumes(self, node_id: str, most: int) -> list[ConsumeRequest]:
        """Take up to ``most`` waiting requests, the oldest first, for ``node_id`` to run."""
        if most <= 0:
            return []
        with self.session(locked=True) as s:
            q = (
                select(ConsumeRequest)
                .where(ConsumeRequest.state == "pending")
                .order_by(ConsumeRequest.created_at)
                .limit(most)
            )
            if not self._sqlite:
                q = q.with_for_update(skip_locked=True)
            found = list(s.scalars(q))
            for request in found:
                request.state = "running"
                request.node_id = node_id
            return found

    def finish_consume(
        self,
        consume_id: str,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        node_id: str | None = None,
    ) -> bool:
        """Answer a request (once; a request given up by its caller takes no answer)."""
        q = update(ConsumeRequest).where(
            ConsumeRequest.id == consume_id, ConsumeRequest.state.in_(["pending", "running"])
        )
        if node_id is not None:
            q = q.where(ConsumeRequest.node_id == node_id)
        with self.engine.begin() as conn:
            done = conn.execute(q.values(state="done", result=result, error=error)).rowcount
        if done:
            self.notify(f"consumed:{consume_id}")
        return bool(done)

    def get_consume(self, consume_id: str) -> ConsumeRequest | None:
        with self.session() as s:
            return s.get(ConsumeRequest, consume_id)

    def abandon_consume(self, consume_id: str) -> None:
        """The caller gave up: the request is dropped, and stopped where it runs."""
        with self.engine.begin() as conn:
            conn.execute(
                update(ConsumeRequest)
                .where(ConsumeRequest.id == consume_id, ConsumeRequest.state != "done")
                .values(state="abandoned")
            )
        self.notify(f"batch:{consume_id}")

    def consume_states(self, consume_ids: Iterable[str]) -> dict[str, str]:
        ids = list(consume_ids)
        if not ids:
            return {}
        with self.engine.connect() as conn:
            q = select(ConsumeRequest.id, ConsumeRequest.state).where(ConsumeRequest.id.in_(ids))
            return {row.id: row.state for row in conn.execute(q)}

    def fail_orphaned_consumes(self, live: Sequence[str]) -> list[str]:
        """Requests running on nodes that died get an error as their answer."""
        with self.session() as s:
            q = select(ConsumeRequest.id).where(
                ConsumeRequest.state == "running", ConsumeRequest.node_id.not_in(list(live))
            )
            ids = list(s.scalars(q))
        failed = [
            i
            for i in ids
            if self.finish_consume(i, error="the compute node running the request stopped")
        ]
        return failed

    def forget_consumes(self, before: datetime) -> None:
        """Drop answered and abandoned requests older than ``before``."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(ConsumeRequest).where(
                    ConsumeRequest.state.in_(["done", "abandoned"]),
                    ConsumeRequest.created_at < before,
                )
            )
