"""A node among many: what it does because other nodes share its store. It acts on what the
store says of the chunks it runs (cancelled, paused, deleted, or no longer its own), runs the
one-record requests that API nodes leave in the store, gives its chunks back when it stops,
and, while it leads, does the cluster's time-driven duties. Part of the
:class:`~batchserve.engine.scheduler.Scheduler`, and only ever run on its thread (but for
:meth:`ClusterDuties.release`, at shutdown)."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from batchserve.blobs import keys
from batchserve.engine.chunk_endings import ChunkEndings
from batchserve.engine.running import RunningChunk, remove_batch, scheduling_error
from batchserve.engine.tasks import ConsumeTask, ServiceSpec
from batchserve.executors.base import Executor
from batchserve.states import BatchState, ChunkState
from batchserve.store.models import Batch, utcnow

log = logging.getLogger("batchserve.engine.scheduler")

TAKE_BACK_SECONDS = 1.0  # how often the leader looks for dead nodes
_ACTIVE = (BatchState.PENDING.value, BatchState.RUNNING.value)
#: The scheduling error of a batch waiting while no live node has workers.
NO_WORKERS = "NoComputeNodes"


class ClusterDuties(ChunkEndings):
    node_id: str
    is_leader: Callable[[], bool]
    cluster: Callable[[], tuple[list[str], list[str]]]
    consume_workers: int | None
    _remote: dict[str, str]
    _remote_waiting: bool
    _led: bool
    _last_take_back: float
    _consumes: dict[str, Future[dict[str, Any]]]
    _consuming: set[str]

    def _spec(self, service_id: int) -> ServiceSpec:
        raise NotImplementedError

    def _reconcile(self) -> None:
        """Act on what the store says of the batches this node runs chunks of, whoever changed
        it (a request to any node, the leader): cancelled, failed, pausing, deleted. A chunk
        whose claim is no longer this node's (its lease ran out and the chunk was taken back)
        is stopped and forgotten: nothing of it is written any more."""
        assert self.executor is not None
        if self._remote:
            states = self.store.consume_states(self._remote.values())
            for task_id, consume_id in list(self._remote.items()):
                if states.get(consume_id, "abandoned") == "abandoned":
                    self.executor.stop_task(task_id)  # its Lost event ends it
        if not self._running:
            return
        claims = self.store.chunk_claims(r.chunk_id for r in self._running.values())
        for task_id, run in list(self._running.items()):
            if claims.get(run.chunk_id) != (ChunkState.RUNNING.value, run.result_key):
                log.warning(
                    "chunk %s of batch %s is no longer this node's; stopped",
                    run.chunk_id,
                    run.batch_id,
                )
                self.executor.stop_task(task_id)
                del self._running[task_id]
                self._per_batch[run.batch_id] -= 1
        batches = self.store.batches_by_ids({r.batch_id for r in self._running.values()})
        for run in self._running.values():
            # An update may have allowed (or forbidden) preemption since the chunk started.
            if (found := batches.get(run.batch_id)) is not None:
                run.preemptible = bool(found.options.get("allow_preemption"))
        for batch_id in {r.batch_id for r in self._running.values()}:
            batch = batches.get(batch_id)
            if batch is None or batch.deleting_since is not None:
                self._delete(batch_id)
            elif batch.state == BatchState.CANCELLING.value:
                self._cancel(batch_id, "cancelled before it ran")
            elif batch.state == BatchState.PAUSING.value:
                self._disable(batch_id, batch.options.get("disable_tasks") or "requeue")
            elif BatchState(batch.state).is_final:
                self._stop_running(batch_id, batch.error or f"the batch ended {batch.state}")

    def _lead(self) -> None:
        """The duties one node does for all: take back the work of dead nodes, end batches past
        their wall-clock limit, finish pauses, cancels and deletions that no running chunk holds
        up any more, and remove uploads whose node died."""
        if not self._led:
            self._led = True
            self._remove_orphan_files()
        self._take_back()
        wall = utcnow()
        active = [
            BatchState.PENDING,
            BatchState.RUNNING,
            BatchState.PAUSING,
            BatchState.PAUSED,
            BatchState.ENABLING,
            BatchState.CANCELLING,
        ]
        found = self.store.batches_in_states(active)
        self._say_when_nothing_can_run(found)
        for batch in found:
            if batch.state == BatchState.ENABLING.value:
                self._enable(batch.id)  # in case the node that received the enable could not
            if batch.options.get("closed_at") and batch.state in _ACTIVE:
                self._maybe_complete(batch.id, batch)  # closed when nothing of it ran any more
            if batch.state == BatchState.CANCELLING.value:
                if not self._per_batch[batch.id]:
                    self._finish_cancel(batch.id, "cancelled before it ran")
                continue
            if batch.state == BatchState.PAUSING.value and self._per_batch[batch.id] <= 0:
                self._maybe_paused(batch.id)  # in case no finished chunk said so
            limit = batch.options.get("max_wall_clock_time")
            if limit is None or batch.start_time is None:
                continue
            if (wall - batch.start_time).total_seconds() > float(limit):
                self._end(
                    batch.id,
                    f"the batch ran longer than its max_wall_clock_time of {limit:g} s",
                    "MaxWallClockTimeExpiry",
                )
        self._remove_deleted()

    def _say_when_nothing_can_run(self, batches: list[Batch]) -> None:
        """While no live node has workers (this one is an API node, and no compute node runs
        or all of them drain), a batch that waits to start says so in its ``scheduling_error``;
        it runs, and the error goes, once a compute node joins (also when its chunks were
        claimed before this look)."""
        assert self.executor is not None
        said = [b for b in batches if (b.scheduling_error or {}).get("code") == NO_WORKERS]
        waiting = [
            b
            for b in batches
            if b.state == BatchState.PENDING.value and not b.claimed and b.scheduling_error is None
        ]
        if not said and not waiting:
            return
        nobody = self.executor.capacity() == 0 and not any(
            node.workers > 0 for node in self.store.compute_nodes()
        )
        for batch in waiting if nobody else ():
            self.store.update_batch(
                batch.id,
                scheduling_error=scheduling_error(
                    "servererror",
                    NO_WORKERS,
                    "No live node has workers to run this batch: start a compute node "
                    "(batchserve worker) or a server with workers. The batch waits, and "
                    "runs once one joins.",
                ),
            )
        for batch in said:
            if not nobody or batch.state != BatchState.PENDING.value or batch.claimed:
                self.store.update_batch(batch.id, scheduling_error=None)

    def _take_back(self) -> None:
        """Take back what dead nodes held: their chunks run again under the worker-loss
        policy (or end as their batch's cancel would have ended them), their one-record
        requests get an error, their unfinished uploads are removed, and their rows go."""
        now = time.monotonic()
        if now - self._last_take_back < TAKE_BACK_SECONDS:
            return
        self._last_take_back = now
        live, dead = self.cluster()
        if self.node_id not in live:
            live.append(self.node_id)
        for node_id in dead:
            # A node paused in a transaction holds its row locks until its connections end.
            if self.store.end_sessions(node_id):
                log.warning("ended the database connections of node %s, found dead", node_id)
        for chunk in self.store.orphaned_chunks(live):
            batch = self.store.get_batch(chunk.batch_id)
            run = RunningChunk(
                chunk.batch_id,
                chunk.id,
                chunk.result_key or "",
                chunk.count,
                batch.service_id if batch else 0,
                started=time.monotonic(),
                last_seen=time.monotonic(),
            )
            if batch is None or batch.deleting_since is not None:
                self._queue_again(run)
            elif batch.state == BatchState.CANCELLING.value or BatchState(batch.state).is_final:
                self._settle_from_file(run, ChunkState.CANCELLED, "cancelled")
                self._maybe_complete(batch.id)
            else:
                self._retry_or_fail(run, f"the node running it (since {chunk.started_at}) died")
        for consume_id in self.store.fail_orphaned_consumes(live):
            log.warning("one-record request %s: its node died", consume_id)
        for batch in self.store.abandoned_uploads(live):
            log.warning("removing batch %s, whose upload never finished", batch.id)
            self.store.mark_deleting(batch.id)
            remove_batch(self.store, self.blobs, batch.id)
        for node_id in dead:
            self.store.remove_node(node_id)

    def _remove_orphan_files(self) -> None:
        """Remove the files of batches that no longer exist: deleting a service removes its
        batches' rows first and their files after, so a crash in between leaves files nothing
        refers to."""
        try:
            for batch_id in self.blobs.folders(keys.BATCHES):
                if self.store.get_batch(batch_id) is None:
                    log.warning("removing the files of batch %s, which no longer exists", batch_id)
                    self.blobs.delete_prefix(keys.batch_prefix(batch_id))
        except Exception:
            log.exception("could not look for the files of removed batches")

    def release(self) -> None:
        """At shutdown, once the workers are stopped: this node's chunks go back to the queue
        at once (not a lost worker: the node stopped in order), for another node to run."""
        for run in self._running.values():
            try:
                self._queue_again(run)
            except Exception:
                log.exception("could not give back chunk %s", run.chunk_id)
        self._running.clear()

    def _take_remote_consumes(self, executor: Executor) -> None:
        """Run one-record requests that nodes without workers left in the store."""
        if not self.store.shared or not self._remote_waiting or executor.capacity() == 0:
            return
        cap = self.consume_workers or max(1, executor.capacity() // 2)
        room = min(executor.free_slots(), cap - len(self._consuming))
        if room <= 0:
            return  # looked at again when a worker is free
        taken = self.store.claim_consumes(self.node_id, room)
        self._remote_waiting = len(taken) == room  # more may wait
        for request in taken:
            try:
                spec = self._spec(request.service_id)
            except LookupError:
                self.store.finish_consume(request.id, error="the service was deleted")
                continue
            task = ConsumeTask(uuid.uuid4().hex, dict(request.inputs), spec)
            future: Future[dict[str, Any]] = Future()
            future.add_done_callback(functools.partial(self._answer, request.id, task.task_id))
            self._consumes[task.task_id] = future
            self._remote[task.task_id] = request.id
            self._consuming.add(task.task_id)
            executor.submit(task)

    def _answer(self, consume_id: str, task_id: str, future: Future[dict[str, Any]]) -> None:
        """Write a one-record request's answer to the store, for the node waiting for it."""
        self._remote.pop(task_id, None)
        try:
            error = future.exception()
            if error is None:
                self.store.finish_consume(consume_id, result=future.result(), node_id=self.node_id)
            else:
                self.store.finish_consume(consume_id, error=str(error), node_id=self.node_id)
        except Exception:
            log.exception("could not answer one-record request %s", consume_id)
