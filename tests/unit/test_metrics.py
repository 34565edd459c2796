"""The cluster's figures as the store gives them, and as Prometheus reads them: batches by state,
records by service, the queue, the nodes' workers; and a scrape's cost, which does not grow with
the number of batches."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from batchserve.engine.metrics import NodeMetrics
from batchserve.store import Store
from batchserve.store.models import Batch, Chunk, Node, Service, User, utcnow

_ids = itertools.count()


def add_service(store: Store, owner: User, name: str) -> Service:
    return store.add_service(
        name=name,
        version="v1",
        alias=name,
        inputs={"n": "int"},
        outputs={"sq": "int"},
        artifacts=[],
        bundle_key=f"services/{name}/v1/bundle.pkl",
        bundle_kind="callable",
        owner_id=owner.id,
    )


def add_batch(
    store: Store,
    service: Service,
    owner: User,
    state: str,
    *,
    total: int = 0,
    chunks: tuple[tuple[str, int, int, int, int], ...] = (),  # state, count, succ, fail, cancel
    **fields: Any,
) -> str:
    """A sealed batch of ``total`` records in ``state``, with these chunks cut from its start."""
    batch_id = f"m{next(_ids):05d}"
    store.add_batch(
        id=batch_id, service_id=service.id, owner_id=owner.id, chunk_size=4, total_count=total
    )
    with store.session() as s:
        batch = s.get(Batch, batch_id)
        assert batch is not None
        batch.state, batch.sealed = state, True
        for name, value in fields.items():
            setattr(batch, name, value)
        start = 0
        for seq, (chunk_state, count, succeeded, failed, cancelled) in enumerate(chunks):
            s.add(
                Chunk(
                    batch_id=batch_id,
                    seq=seq,
                    start_index=start,
                    count=count,
                    state=chunk_state,
                    succeeded=succeeded,
                    failed=failed,
                    cancelled=cancelled,
                    node_id="node-a" if chunk_state == "running" else None,
                )
            )
            start += count
        batch.claimed = start
    return batch_id


def add_node(store: Store, node_id: str, workers: int, role: str = "all") -> None:
    now = utcnow()
    store.register_node(
        Node(
            id=node_id,
            role=role,
            host="host-1",
            host_key="key",
            pid=1,
            version="test",
            workers=workers,
            executor="local",
            started_at=now,
            heartbeat_at=now,
            lease_until=now + timedelta(seconds=10),
        )
    )


def test_figures_count_batches_records_the_queue_and_the_workers(store: Store, owner: User) -> None:
    squares = add_service(store, owner, "squares")
    cubes = add_service(store, owner, "cubes")
    add_batch(store, squares, owner, "completed", total=8, chunks=(("succeeded", 8, 7, 1, 0),))
    add_batch(store, squares, owner, "cancelled", total=8, chunks=(("cancelled", 8, 2, 0, 6),))
    pending_since = utcnow() - timedelta(minutes=3)
    add_batch(store, cubes, owner, "pending", total=10, state_transition_time=pending_since)
    # Running: 4 records running on node-a, 4 put back in the queue, 12 never handed out.
    add_batch(
        store,
        cubes,
        owner,
        "running",
        total=20,
        chunks=(("running", 4, 1, 0, 0), ("pending", 4, 0, 0, 0)),
    )
    add_batch(  # being deleted: gone for users, and for the figures
        store, cubes, owner, "completed", total=4, chunks=(("succeeded", 4, 4, 0, 0),),
        deleting_since=utcnow(),
    )  # fmt: skip
    add_node(store, "node-a", workers=2)
    add_node(store, "node-b", workers=3, role="compute")

    figures = store.cluster_figures()

    assert figures.batches == {"completed": 1, "cancelled": 1, "pending": 1, "running": 1}
    assert figures.records[("squares", "succeeded")] == 9
    assert figures.records[("squares", "failed")] == 1
    assert figures.records[("squares", "cancelled")] == 6
    assert figures.records[("cubes", "succeeded")] == 1
    assert figures.waiting_records == {"cubes": 10 + 12 + 4}
    assert figures.waiting_chunks == 1
    assert figures.oldest_pending is not None
    assert abs((figures.oldest_pending - pending_since).total_seconds()) < 1
    loads = {n.id: (n.busy, n.idle) for n in figures.nodes}
    assert loads == {"node-a": (1, 1), "node-b": (0, 3)}


def _samples(metrics: NodeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_scrape_shows_the_figures_with_their_labels(store: Store, owner: User) -> None:
    squares = add_service(store, owner, "squares")
    add_batch(store, squares, owner, "completed", total=4, chunks=(("succeeded", 4, 4, 0, 0),))
    add_node(store, "node-a", workers=2)
    metrics = NodeMetrics()
    metrics.watch_cluster(store)

    samples = _samples(metrics)

    assert samples[("batchserve_store_up", ())] == 1
    assert samples[("batchserve_batches", (("state", "completed"),))] == 1
    assert samples[("batchserve_batches", (("state", "running"),))] == 0
    assert samples[("batchserve_records", (("service", "squares"), ("status", "succeeded")))] == 4
    node = (("host", "host-1"), ("node", "node-a"), ("role", "all"))
    assert samples[("batchserve_node_workers", (*node, ("state", "idle")))] == 2
    assert samples[("batchserve_node_running_chunks", node)] == 0
    assert samples[("batchserve_queue_oldest_pending_seconds", ())] == 0


def test_the_node_counts_chunks_retries_and_lost_workers(store: Store, owner: User) -> None:
    squares = add_service(store, owner, "squares")
    metrics = NodeMetrics()  # a compute node's: no cluster figures
    metrics.chunk_finished(store, squares.id, 0.2, succeeded=3, failed=1)
    metrics.chunk_finished(store, squares.id, 0.4, succeeded=4, failed=0)
    metrics.chunk_queued_again({"lost_workers": 1})
    metrics.chunk_queued_again({"requeued": 4})
    metrics.chunk_queued_again({})  # a deleted batch's chunk: no retry
    metrics.worker_lost(stopped=False)
    became_pending = utcnow()
    moved = Batch(
        state="running",
        previous_state_transition_time=became_pending,
        state_transition_time=became_pending + timedelta(seconds=3),
    )
    metrics.batch_started(moved)
    metrics.batch_started(None)  # another node moved it first, and counts it

    samples = _samples(metrics)

    service = (("service", "squares"),)
    assert samples[("batchserve_chunk_run_seconds_count", service)] == 2
    assert abs(samples[("batchserve_chunk_run_seconds_sum", service)] - 0.6) < 1e-9
    assert samples[("batchserve_chunk_records_total", (*service, ("status", "succeeded")))] == 7
    assert samples[("batchserve_chunk_records_total", (*service, ("status", "failed")))] == 1
    assert samples[("batchserve_chunk_retries_total", (("reason", "lost_worker"),))] == 1
    assert samples[("batchserve_chunk_retries_total", (("reason", "requeued"),))] == 1
    assert ("batchserve_chunk_retries_total", (("reason", "timed_out"),)) not in samples
    assert samples[("batchserve_worker_restarts_total", (("reason", "crashed"),))] == 1
    assert samples[("batchserve_queue_wait_seconds_count", ())] == 1
    assert samples[("batchserve_queue_wait_seconds_sum", ())] == 3
    assert not any(name == "batchserve_store_up" for name, _ in samples)


@contextmanager
def statements(store: Store) -> Iterator[list[str]]:
    """The SQL statements run on the store meanwhile."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", count)


def test_a_scrape_runs_as_many_statements_for_many_batches_as_for_one(
    store: Store, owner: User
) -> None:
    squares = add_service(store, owner, "squares")
    add_batch(store, squares, owner, "completed", total=4, chunks=(("succeeded", 4, 4, 0, 0),))
    with statements(store) as few:
        store.cluster_figures()
    for _ in range(200):
        add_batch(store, squares, owner, "running", total=8, chunks=(("running", 4, 1, 0, 0),))
    with statements(store) as many:
        figures = store.cluster_figures()
    assert figures.batches["running"] == 200
    assert len(many) == len(few) <= 3
