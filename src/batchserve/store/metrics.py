"""The cluster's figures for monitoring, read in a few aggregate statements.

Mixed into :class:`~batchserve.store.Store`. A scrape reads the store as it is, so that any API
node answers for every node and the figures survive restarts; each statement aggregates over a
whole table (grouped by state, service or node), never once per batch, so a scrape costs the
same few statements with ten batches or ten thousand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import case, func, select

from batchserve.states import BatchState, ChunkState
from batchserve.store.models import Batch, Chunk, Node, Service

if TYPE_CHECKING:
    from sqlalchemy import Engine

#: The batch states whose records wait for workers (started, neither paused nor ended).
WAITING_STATES = (BatchState.PENDING.value, BatchState.RUNNING.value)


@dataclass(frozen=True)
class NodeLoad:
    """A node's workers and the chunks it runs now."""

    id: str
    host: str
    role: str
    workers: int
    running: int

    @property
    def busy(self) -> int:
        return min(self.running, self.workers)

    @property
    def idle(self) -> int:
        return self.workers - self.busy


@dataclass(frozen=True)
class ClusterFigures:
    """What every node shares through the store, as of one scrape. Batches being deleted are
    left out: they are gone for users already."""

    batches: dict[str, int] = field(default_factory=dict)  # by state
    # Records with a result, by (service name, status): succeeded, failed or cancelled.
    records: dict[tuple[str, str], int] = field(default_factory=dict)
    # Records of started batches that wait for a worker, by service name: not yet handed out,
    # or in a chunk put back in the queue.
    waiting_records: dict[str, int] = field(default_factory=dict)
    waiting_chunks: int = 0  # chunks put back in the queue (requeued, or their worker lost)
    oldest_pending: datetime | None = None  # when the longest-pending batch became pending
    nodes: list[NodeLoad] = field(default_factory=list)


class MetricQueries:
    engine: Engine

    def cluster_figures(self) -> ClusterFigures:
        """Batches by state, records by service and status, the queue, and the nodes' workers:
        three statements, in one read-only connection."""
        waiting = Batch.state.in_(WAITING_STATES)
        batches = (
            select(
                Batch.state,
                Service.name,
                func.count(),
                func.coalesce(
                    func.sum(case((waiting, Batch.total_count - Batch.claimed), else_=0)), 0
                ),
                func.min(
                    case((Batch.state == BatchState.PENDING.value, Batch.state_transition_time))
                ),
            )
            .join(Service, Service.id == Batch.service_id)
            .where(Batch.deleting_since.is_(None))
            .group_by(Batch.state, Service.name)
        )
        queued = (Chunk.state == ChunkState.PENDING.value) & waiting
        chunks = (
            select(
                Service.name,
                func.coalesce(func.sum(Chunk.succeeded), 0),
                func.coalesce(func.sum(Chunk.failed), 0),
                func.coalesce(func.sum(Chunk.cancelled), 0),
                func.count(Chunk.id).filter(queued),
                func.coalesce(func.sum(Chunk.count).filter(queued), 0),
            )
            .select_from(Chunk)
            .join(Batch, Batch.id == Chunk.batch_id)
            .join(Service, Service.id == Batch.service_id)
            .where(Batch.deleting_since.is_(None))
            .group_by(Service.name)
        )
        running = (
            select(Chunk.node_id, func.count().label("n"))
            .where(Chunk.state == ChunkState.RUNNING.value, Chunk.node_id.is_not(None))
            .group_by(Chunk.node_id)
            .subquery()
        )
        nodes = select(
            Node.id, Node.host, Node.role, Node.workers, func.coalesce(running.c.n, 0)
        ).outerjoin(running, running.c.node_id == Node.id)

        by_state: dict[str, int] = {}
        waiting_records: dict[str, int] = {}
        records: dict[tuple[str, str], int] = {}
        oldest: datetime | None = None
        waiting_chunks = 0
        with self.engine.connect() as conn:
            for state, service, count, unclaimed, pending_since in conn.execute(batches):
                by_state[state] = by_state.get(state, 0) + int(count)
                if unclaimed:
                    waiting_records[service] = waiting_records.get(service, 0) + int(unclaimed)
                if pending_since is not None and (oldest is None or pending_since < oldest):
                    oldest = pending_since
            for service, succeeded, failed, cancelled, n_queued, queued_records in conn.execute(
                chunks
            ):
                records[(service, "succeeded")] = int(succeeded)
                records[(service, "failed")] = int(failed)
                records[(service, "cancelled")] = int(cancelled)
                waiting_chunks += int(n_queued)
                if queued_records:
                    waiting_records[service] = waiting_records.get(service, 0) + int(queued_records)
            loads = [
                NodeLoad(node_id, host, role, int(workers), int(n))
                for node_id, host, role, workers, n in conn.execute(nodes)
            ]
        return ClusterFigures(
            batches=by_state,
            records=records,
            waiting_records=waiting_records,
            waiting_chunks=waiting_chunks,
            oldest_pending=oldest,
            nodes=loads,
        )
