"""What a node tells Prometheus: its own counters, and the cluster's figures read from the store.

Two kinds of figures, kept apart on purpose:

- **Observed here** (:class:`NodeMetrics`): how long chunks ran, records finished, chunk
  retries, workers lost. They are counted by the process where they happen, so each node
  (compute nodes too) shows its own, and they restart from zero with it, as Prometheus counters
  do.
- **Read from the store at scrape time** (:class:`ClusterCollector`): batches by state, records
  by service, the queue, the nodes' workers. Nothing of them lives in a node's memory, so any API
  node shows the whole cluster, and a restart loses nothing.

Each engine has a registry of its own (not prometheus-client's process-wide default), so that
several engines in one process, as in tests, never clash.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from batchserve.states import BatchState
from batchserve.store.models import utcnow

if TYPE_CHECKING:
    from batchserve.store import Store
    from batchserve.store.models import Batch

log = logging.getLogger(__name__)

#: Chunks aim at a fraction of a second (target_chunk_seconds), but a record may take minutes.
CHUNK_SECONDS_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip

#: The chunk columns a requeue bumps, and the retry reason each stands for.
_RETRY_REASONS = {"lost_workers": "lost_worker", "timed_out": "timed_out", "requeued": "requeued"}

#: From a claim at once to batches that waited hours behind others or for their dependencies.
QUEUE_WAIT_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0,
)  # fmt: skip

#: Service names remembered for labels; past this many the memory is dropped and read again.
_NAMES_KEPT = 10_000


class NodeMetrics:
    """The registry of one node and the instruments its scheduler feeds."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # CPU, memory, open files of this process
        self.chunk_seconds = Histogram(
            "batchserve_chunk_run_seconds",
            "Seconds chunks ran on a worker of this node, from dispatch to their result, by "
            "service.",
            ["service"],
            buckets=CHUNK_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.chunk_records = Counter(
            "batchserve_chunk_records",
            "Records of the chunks that finished on this node, by service and status "
            "(succeeded, failed).",
            ["service", "status"],
            registry=self.registry,
        )
        self.chunk_retries = Counter(
            "batchserve_chunk_retries",
            "Chunks this node queued again to run from their start, by reason: lost_worker "
            "(its worker died), timed_out (a record ignored its task_timeout), requeued "
            "(preempted or disabled).",
            ["reason"],
            registry=self.registry,
        )
        self.worker_restarts = Counter(
            "batchserve_worker_restarts",
            "Workers of this node replaced while they ran a chunk or a consume, by reason: "
            "crashed (the process died) or stopped (killed on purpose: cancel, preemption, "
            "a stuck record).",
            ["reason"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "batchserve_queue_wait_seconds",
            "Seconds batches waited, from becoming pending (started, enabled again) to the "
            "claim of their first chunk, by this node; dependencies waited for included.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=self.registry,
        )
        self._names: dict[int, str] = {}

    def watch_cluster(self, store: Store) -> None:
        """Also show the cluster's figures, read from ``store`` at each scrape (API nodes)."""
        self.registry.register(ClusterCollector(store))

    # --- hooks: called on the scheduler's thread --------------------------------------------

    def chunk_finished(
        self, store: Store, service_id: int, seconds: float, succeeded: int, failed: int
    ) -> None:
        """A chunk came back from its worker (with its results, or an error)."""
        try:
            service = self._service_name(store, service_id)
            self.chunk_seconds.labels(service).observe(max(seconds, 0.0))
            if succeeded:
                self.chunk_records.labels(service, "succeeded").inc(succeeded)
            if failed:
                self.chunk_records.labels(service, "failed").inc(failed)
        except Exception:  # a figure is never worth leaving a finished chunk unrecorded
            log.exception("could not count a finished chunk")

    def batch_started(self, batch: Batch | None) -> None:
        """A pending batch had its first chunk claimed here and is running (``batch``: as the
        transition left it; None when another node moved it first, and counts it)."""
        if batch is None or batch.previous_state_transition_time is None:
            return
        waited = batch.state_transition_time - batch.previous_state_transition_time
        self.queue_wait.observe(max(0.0, waited.total_seconds()))

    def chunk_queued_again(self, counters: Collection[str]) -> None:
        """A running chunk went back to the queue; ``counters``, the chunk's columns its
        requeue bumps, say why. Without one (its batch is being deleted) it is no retry."""
        for column, reason in _RETRY_REASONS.items():
            if column in counters:
                self.chunk_retries.labels(reason).inc()
                return

    def worker_lost(self, stopped: bool) -> None:
        self.worker_restarts.labels("stopped" if stopped else "crashed").inc()

    def _service_name(self, store: Store, service_id: int) -> str:
        name = self._names.get(service_id)
        if name is None:
            service = store.get_service_by_id(service_id)
            name = service.name if service is not None else str(service_id)
            if len(self._names) >= _NAMES_KEPT:
                self._names.clear()
            self._names[service_id] = name
        return name


class ClusterCollector(Collector):
    """The cluster's figures, read from the store when Prometheus scrapes (a few aggregate
    statements; see :meth:`batchserve.store.metrics.MetricQueries.cluster_figures`)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        # Nothing to check at registration: reading the store there would be a scrape.
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "batchserve_store_up",
            "1 when this scrape could read the cluster's figures from the store, 0 when not.",
        )
        try:
            figures = self.store.cluster_figures()
        except Exception:  # the node's own figures are still worth a scrape
            log.exception("could not read the cluster's figures from the store")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        batches = GaugeMetricFamily(
            "batchserve_batches",
            "Batches by state, across the cluster (batches being deleted left out).",
            labels=["state"],
        )
        # Every state, at 0 when no batch is in it: a series that comes and goes breaks rules.
        for state in BatchState:
            batches.add_metric([state.value], figures.batches.get(state.value, 0))
        yield batches

        records = GaugeMetricFamily(
            "batchserve_records",
            "Records with a result in the store, by service and status (succeeded, failed, "
            "cancelled). A gauge: deleting a batch takes its records away.",
            labels=["service", "status"],
        )
        for (service, status), count in sorted(figures.records.items()):
            records.add_metric([service, status], count)
        yield records

        waiting = GaugeMetricFamily(
            "batchserve_queue_records",
            "Records of started batches waiting for a worker, by service.",
            labels=["service"],
        )
        for service, count in sorted(figures.waiting_records.items()):
            waiting.add_metric([service], count)
        yield waiting

        yield GaugeMetricFamily(
            "batchserve_queue_requeued_chunks",
            "Chunks put back in the queue (requeued, or their worker lost) waiting for a worker.",
            value=figures.waiting_chunks,
        )
        age = 0.0
        if figures.oldest_pending is not None:
            age = max(0.0, (utcnow() - figures.oldest_pending).total_seconds())
        yield GaugeMetricFamily(
            "batchserve_queue_oldest_pending_seconds",
            "Seconds the longest-pending batch has waited for its first worker (0: none waits).",
            value=age,
        )

        labels = ["node", "host", "role"]
        workers = GaugeMetricFamily(
            "batchserve_node_workers", "Workers of each node, by state (busy, idle).",
            labels=[*labels, "state"],
        )  # fmt: skip
        for node in figures.nodes:
            workers.add_metric([node.id, node.host, node.role, "busy"], node.busy)
            workers.add_metric([node.id, node.host, node.role, "idle"], node.idle)
        yield workers
        running = GaugeMetricFamily(
            "batchserve_node_running_chunks", "Chunks each node runs now.", labels=labels
        )
        for node in figures.nodes:
            running.add_metric([node.id, node.host, node.role], node.running)
        yield running
