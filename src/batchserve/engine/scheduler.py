"""The scheduler: one thread that hands chunks to workers and records what comes back.

It is the only writer of chunk states while a batch runs. Its loop takes events (task progress,
finished and lost tasks from the executor; start, cancel, disable, delete and consume requests
from the API), applies them to the store, then dispatches: consume requests first, then chunks
of the runnable batches, highest priority first and, within a priority, users in turn (the
oldest batch first between equals), each batch capped by its ``parallel_count`` and the machine
by its workers. A batch waits until the batches
it depends on have completed. When the machine is full, a batch that still wants workers takes
them from running chunks of lower-priority batches that allow preemption; those chunks go back
to the queue (requeued, not failed).

Between events it keeps time: a worker whose record has run far past ``task_timeout`` without
stopping is killed, and (on the leader) a batch past its ``max_wall_clock_time`` fails.

A batch marked for deletion is never dispatched again; the scheduler removes it once it has
stopped the batch's workers, so that none of them writes a file after the removal.

Many nodes may run a scheduler each on one store. Each claims chunks for itself (the store
keeps ``parallel_count`` across them), acts on what the store says of the chunks it runs, and
one of them, the leader, keeps time for all (:mod:`batchserve.engine.cluster`). How chunks and
batches end is in :mod:`batchserve.engine.chunk_endings`.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from batchserve.blobs import BlobStore
from batchserve.blobs.keys import job_task_key
from batchserve.engine.cluster import ClusterDuties
from batchserve.engine.costs import CostEstimate
from batchserve.engine.events import (
    CancelBatch,
    CloseBatch,
    ConsumeOver,
    ConsumeRequest,
    ConsumeWaiting,
    DeleteBatch,
    DisableBatch,
    EnableBatch,
    Wake,
    WarmService,
)
from batchserve.engine.inputs import PartRef
from batchserve.engine.metrics import NodeMetrics
from batchserve.engine.placement import Placement
from batchserve.engine.running import (
    RunningChunk,
    remove_batch,
    result_key,
    scheduling_error,
    service_spec,
)
from batchserve.engine.sizing import ChunkSizing
from batchserve.engine.tasks import (
    ChunkTask,
    ConsumeTask,
    Finished,
    LoadTask,
    Lost,
    Progress,
    ServiceSpec,
)
from batchserve.executors.base import Executor
from batchserve.logs import log_context
from batchserve.states import BatchState, ChunkState
from batchserve.store import Store
from batchserve.store.models import Batch, Chunk, utcnow

log = logging.getLogger(__name__)


# A record that ignores the timeout signal (stuck in native code) is given this much more than
# its limit, twice over, before its worker is killed.
STUCK_GRACE_SECONDS = 5.0
TICK_SECONDS = 0.25  # how often limits are checked when no event comes
LOOK_SECONDS = 1.0  # how often a node looks for one-record requests without being told


class Scheduler(ClusterDuties, ChunkSizing):
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        max_worker_loss_retries: int = 3,
        *,
        target_chunk_seconds: float = 0.5,
        max_chunk_size: int = 1_000_000,
        consume_workers: int | None = None,
    ) -> None:
        self.store = store
        # Workers that may run consumes at once (None: half of them, at least one): the rest
        # stay for batches, whatever the request load. A waiting consume takes the next free
        # worker before any chunk, so batches hold it off for one chunk's time at most.
        self.consume_workers = consume_workers
        self.blobs = blobs
        # A store that cannot append (S3) gets each chunk's results as segments.
        self._result_key = functools.partial(
            result_key, segmented=not getattr(blobs, "appends", True)
        )
        self.max_worker_loss_retries = max_worker_loss_retries
        self.target_chunk_seconds = target_chunk_seconds
        self.max_chunk_size = max_chunk_size
        # What chunks cost each service (by id and bundle), as measured here and kept in the
        # store for the next start; the upload parts of the batches being run (never changed
        # once a batch is sealed).
        self._costs: dict[tuple[int, str], CostEstimate] = {}
        self._costs_kept: dict[tuple[int, str], float] = {}  # when each was last stored
        self._parts: dict[str, tuple[PartRef, ...]] = {}
        self._placement = Placement(store)
        self.executor: Executor | None = None
        self._events: queue.Queue[object] = queue.Queue()
        self._running: dict[str, RunningChunk] = {}
        self._per_batch: Counter[str] = Counter()
        self._consumes: dict[str, Future[dict[str, Any]]] = {}
        self._consume_queue: list[ConsumeTask] = []
        self._consuming: set[str] = set()  # consumes on a worker now
        self._warm: list[ServiceSpec] = []  # services for the workers that stay idle to load
        self._preempted: set[str] = set()  # stopped for a higher priority; Lost not heard yet
        # Finished chunks whose results are written down after the next dispatch.
        self._finished_runs: list[tuple[RunningChunk, dict[str, Any]]] = []
        self._last_tick = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # This node among the nodes sharing the store (see batchserve.engine.nodes): its id
        # names its claims; the leader runs the cluster's time-driven duties.
        self.node_id = uuid.uuid4().hex  # the engine gives it its node's
        self.metrics = NodeMetrics()  # the engine gives it its node's
        self.is_leader: Callable[[], bool] = lambda: True
        # The live and the dead nodes (ids), as the leader sees them; alone, only this one.
        self.cluster: Callable[[], tuple[list[str], list[str]]] = lambda: (
            [self.node_id],
            [],
        )
        self._last_take_back = 0.0
        self._last_look = 0.0
        self.draining = False  # claims nothing new (a compute node asked to stop)
        self._remote: dict[str, str] = {}  # consume task id -> its request row (another node's)
        self._remote_waiting = True  # requests may wait in the store
        self._led = False  # this node did a leader's first round

    # --- called from other threads ----------------------------------------------------------

    def post(self, event: object) -> None:
        if isinstance(event, ConsumeWaiting):
            self._remote_waiting = True
            event = Wake()
        if isinstance(event, Finished):
            # A request-response answer goes to its caller from the posting thread, not after
            # whatever store work the loop is busy with; the loop still wakes to use the slot.
            # (The future was registered by the loop before the task was submitted.)
            future = self._consumes.pop(event.task_id, None)
            if future is not None:
                future.set_result(event.result)
                event = ConsumeOver(event.task_id)
        self._events.put(event)

    def start(self, executor: Executor) -> None:
        self.executor = executor
        self._thread = threading.Thread(target=self._loop, name="batchserve-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._events.put(Wake())
        if self._thread is not None:
            self._thread.join(timeout=10)

    def consume(self, spec: ServiceSpec, inputs: dict[str, Any]) -> Future[dict[str, Any]]:
        """Run one record on a worker; the future has its result. Call :meth:`abandon` with
        the future when nobody waits for it any more."""
        future: Future[dict[str, Any]] = Future()
        task = ConsumeTask(uuid.uuid4().hex, inputs, spec)
        future.task_id = task.task_id  # type: ignore[attr-defined]
        self.post(ConsumeRequest(task, future))
        return future

    def abandon(self, future: Future[dict[str, Any]]) -> None:
        """Stop a consume nobody waits for: dropped if it has not started, its worker stopped
        if it runs."""
        if not future.done():
            self.post(ConsumeOver(future.task_id, abandoned=True))  # type: ignore[attr-defined]

    # --- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._events.get(timeout=TICK_SECONDS)
            except queue.Empty:
                event = Wake()
            try:
                self._handle(event)
                while True:  # apply everything queued before dispatching once
                    try:
                        self._handle(self._events.get_nowait())
                    except queue.Empty:
                        break
                now = time.monotonic()
                if now - self._last_tick >= TICK_SECONDS:
                    self._last_tick = now
                    self._record_finished()
                    self._reconcile()
                    self._kill_stuck_workers(now)
                    self._release_ended()
                    if now - self._last_look >= LOOK_SECONDS:
                        # Notifications can be missed (a listener reconnecting): look anyway.
                        self._last_look = now
                        self._remote_waiting = True
                    if self.is_leader():
                        self._lead()
                    else:
                        self._led = False
                self._dispatch()
                if self._finished_runs:
                    # Workers that finished got new chunks first; now write down what they did.
                    self._record_finished()
                    self._dispatch()
            except Exception:  # keep scheduling whatever one bad event did
                log.exception("scheduler step failed")
        try:
            self._record_finished()
        except Exception:
            log.exception("could not record finished chunks at shutdown")

    def _handle(self, event: object) -> None:
        if self._finished_runs and not isinstance(event, (Progress, Finished, Wake)):
            self._record_finished()  # the other events act on what the store says
        if isinstance(event, Progress):
            run = self._running.get(event.task_id)
            if run is not None:
                run.last_seen = time.monotonic()
                self.store.set_chunk(
                    run.chunk_id,
                    expect_state=ChunkState.RUNNING,
                    expect_key=run.result_key,
                    succeeded=event.succeeded,
                    failed=event.failed,
                )
                if event.failed:
                    self._apply_failure_policy(run.batch_id)
        elif isinstance(event, Finished):
            self._finished(event)
        elif isinstance(event, Lost):
            self._lost(event)
        elif isinstance(event, CancelBatch):
            self._cancel(event.batch_id, event.reason)
        elif isinstance(event, DisableBatch):
            self._disable(event.batch_id, event.mode)
        elif isinstance(event, EnableBatch):
            self._enable(event.batch_id)
        elif isinstance(event, CloseBatch):
            self._maybe_complete(event.batch_id)
        elif isinstance(event, DeleteBatch):
            self._delete(event.batch_id)
        elif isinstance(event, WarmService):
            self._warm.append(event.service)
        elif isinstance(event, ConsumeRequest):
            self._consumes[event.task.task_id] = event.future
            self._consume_queue.append(event.task)
        elif isinstance(event, ConsumeOver):
            self._consume_over(event)

    def _consume_over(self, event: ConsumeOver) -> None:
        if not event.abandoned:
            self._consuming.discard(event.task_id)
            return
        future = self._consumes.pop(event.task_id, None)
        if future is not None and not future.done():
            future.set_exception(RuntimeError("abandoned"))
        self._consume_queue = [t for t in self._consume_queue if t.task_id != event.task_id]
        if event.task_id in self._consuming:
            assert self.executor is not None
            self.executor.stop_task(event.task_id)  # its Lost event ends it

    def _finished(self, event: Finished) -> None:
        self._consuming.discard(event.task_id)
        consumer = self._consumes.pop(event.task_id, None)
        if consumer is not None:
            consumer.set_result(event.result)
            return
        self._preempted.discard(event.task_id)  # it finished before it could be stopped
        run = self._running.pop(event.task_id, None)
        if run is None:
            return  # stopped by a cancel that already settled the chunk
        self._per_batch[run.batch_id] -= 1
        run.last_seen = time.monotonic()  # when it finished
        self._finished_runs.append((run, event.result))

    def _record_finished(self) -> None:
        """Write down the chunks that finished since the last dispatch."""
        runs, self._finished_runs = self._finished_runs, []
        for run, result in runs:
            with log_context(run.batch_id, run.chunk_id):
                self._record(run, result)

    def _record(self, run: RunningChunk, result: dict[str, Any]) -> None:
        began = time.monotonic()
        if "error" in result:
            self._settle_from_file(run, ChunkState.FAILED, result["error"])
        else:
            self.store.set_chunk(
                run.chunk_id,
                expect_state=ChunkState.RUNNING,
                expect_key=run.result_key,
                state=ChunkState.SUCCEEDED.value,
                finished_at=utcnow(),
                succeeded=result["succeeded"],
                failed=result["failed"],
                **_statistics(result),
            )
            # The chunk's fixed cost: the scheduler's claim and bookkeeping, and what its worker
            # spent on it besides its records (and a first load of the service).
            running = float(result.get("records_seconds") or 0.0)
            worker = float(result.get("run_seconds") or 0.0)
            fixed = run.claim_seconds + max(worker - running, 0.0)
            self._observe(run, running, fixed + (time.monotonic() - began))
        done = (int(result.get(k) or 0) for k in ("succeeded", "failed"))
        self.metrics.chunk_finished(self.store, run.service_id, run.last_seen - run.started, *done)
        self._after_chunk(run.batch_id)

    def _lost(self, event: Lost) -> None:
        self.metrics.worker_lost(event.stopped)
        self._consuming.discard(event.task_id)
        future = self._consumes.pop(event.task_id, None)
        if future is not None:
            future.set_exception(RuntimeError(event.reason))
            return
        if event.task_id in self._preempted:  # already requeued when it was stopped
            self._preempted.discard(event.task_id)
            return
        run = self._running.pop(event.task_id, None)
        if run is None:
            return
        self._per_batch[run.batch_id] -= 1
        with log_context(run.batch_id, run.chunk_id):
            self._retry_or_fail(run, event.reason)

    # --- dispatch ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        executor = self.executor
        assert executor is not None
        while (
            self._consume_queue
            and executor.free_slots() > 0
            and len(self._consuming) < (self.consume_workers or max(1, executor.capacity() // 2))
        ):
            task = self._consume_queue.pop(0)
            self._consuming.add(task.task_id)
            executor.submit(task)
        if self.draining:
            return
        self._take_remote_consumes(executor)
        if executor.free_slots() == 0 and not any(r.preemptible for r in self._running.values()):
            return  # nothing could start now, nor be preempted: no need to read the batches
        # Started batches whose upload goes on too: their stored records may run already.
        batches = self.store.batches_in_states(
            [BatchState.PENDING, BatchState.RUNNING], sealed=None
        )
        live = {b.id for b in batches} | {r.batch_id for r in self._running.values()}
        for gone in self._parts.keys() - live:
            del self._parts[gone]
        runnable = [b for b in batches if self._dependencies_met(b)]
        self._share(runnable, batches, executor)
        if executor.free_slots() == 0 and not self._preempted:
            self._preempt(runnable, {b.id: b for b in batches})
        self._load_ahead(executor)

    def _load_ahead(self, executor: Executor) -> None:
        """Have the workers left idle load the services published since the last dispatch."""
        warm, self._warm = self._warm, []
        for spec in warm:
            for _ in range(executor.free_slots()):
                executor.submit(LoadTask(uuid.uuid4().hex, spec))

    def _dependencies_met(self, batch: Batch) -> bool:
        """True when every batch it depends on has completed; fails it when one cannot."""
        depends_on = batch.options.get("depends_on") or []
        if not depends_on or batch.state != BatchState.PENDING.value:
            return True
        for other_id in depends_on:
            other = self.store.get_batch(other_id)
            if other is not None and other.deleting_since is not None:
                other = None  # its deletion is under way
            if other is not None and other.state == BatchState.COMPLETED.value:
                continue
            if other is not None and not BatchState(other.state).is_final:
                return False
            if not self.is_leader():
                return False  # the leader fails it
            how = "was deleted" if other is None else f"ended {other.state}"
            message = f"batch {other_id}, which this batch depends on, {how}"
            self._end(
                batch.id,
                message,
                "DependencyFailed",
                scheduling_error=scheduling_error(
                    "usererror",
                    "DependencyFailed",
                    f"{message[0].upper()}{message[1:]}: this batch runs only once every batch "
                    "it depends on has completed.",
                    batch_id=other_id,
                    state="deleted" if other is None else other.state,
                ),
            )
            return False
        return True

    def _preempt(self, runnable: list[Batch], by_id: dict[str, Batch]) -> None:
        """Free workers for the highest-priority batch that wants more, from running chunks of
        lower-priority batches that allow preemption (lowest priority, newest chunk first)."""
        victims = [
            (by_id[run.batch_id].priority, -run.started, task_id)
            for task_id, run in self._running.items()
            if run.batch_id in by_id and by_id[run.batch_id].options.get("allow_preemption")
        ]
        if not victims:
            return
        victims.sort()
        for batch in runnable:
            if self._per_batch[batch.id] >= batch.parallel_cap or victims[0][0] >= batch.priority:
                continue  # at its cap here already, or nothing of lower priority to take
            # Counted in the store: other nodes may run chunks of it, and preempt for it too.
            wanted = batch.parallel_cap - self.store.running_chunks(batch.id)
            if wanted <= 0 or not self.store.has_waiting_records(batch.id):
                continue
            while wanted > 0 and victims and victims[0][0] < batch.priority:
                _, _, task_id = victims.pop(0)
                self._requeue(task_id, f"preempted by batch {batch.id} (priority {batch.priority})")
                wanted -= 1
            return  # one batch at a time: the freed workers go to it on the next dispatch

    def _share(self, runnable: list[Batch], batches: list[Batch], executor: Executor) -> None:
        """Hand the free workers to the runnable batches (highest priority, then oldest, first).
        Within one priority, users take turns: a chunk at a time goes to the user with the
        fewest running chunks (the older batch first between equals), so that the oldest batch
        does not take every worker while another user's batch waits at the same priority. One
        user's batches at a priority take as many workers as they can, oldest first."""
        running: Counter[int] = Counter()
        for b in batches:
            running[b.owner_id] += self._per_batch[b.id]
        for priority in sorted({b.priority for b in runnable}, reverse=True):
            waiting = [b for b in runnable if b.priority == priority]
            if len({b.owner_id for b in waiting}) == 1:
                for batch in waiting:
                    if executor.free_slots() == 0:
                        return
                    self._dispatch_batch(batch, executor)
                continue
            while waiting and executor.free_slots() > 0:
                i = min(range(len(waiting)), key=lambda j: running[waiting[j].owner_id])
                batch = waiting[i]
                if not self._dispatch_batch(batch, executor, most=1):
                    del waiting[i]  # nothing of it to run now (or at its parallel_count)
                    continue
                running[batch.owner_id] += 1
                if batch.state == BatchState.PENDING.value:  # it was moved to running
                    moved = self.store.get_batch(batch.id)
                    if moved is None:
                        del waiting[i]
                    else:
                        waiting[i] = moved
            if executor.free_slots() == 0:
                return

    def _dispatch_batch(self, batch: Batch, executor: Executor, most: int | None = None) -> bool:
        """Hand out chunks of the batch (at ``most`` this many) while workers are free and its
        parallel_count allows; True when it handed out any."""
        claimed_any = False
        spec: ServiceSpec | None = None
        options = batch.options
        timeout = options.get("task_timeout")
        claimed = 0
        while (
            executor.free_slots() > 0
            and self._per_batch[batch.id] < batch.parallel_cap
            and (most is None or claimed < most)
        ):
            spec = spec or self._spec(batch.service_id)
            problem = self._placement.problem(executor, spec)
            if problem is not None:
                self._placement.say(batch, problem)
                break
            if executor.free_slots() < executor.slots_for(spec):
                break  # a service asking for more CPUs waits for that many free workers
            estimate = self._estimate(batch.service_id, spec)
            costs = estimate.costs()
            now = time.monotonic()
            size_for = self._sizer(batch, spec.mode, estimate, costs, now)
            chunk = self.store.claim_chunk(
                batch.id, self._result_key, size_for, node_id=self.node_id
            )
            if chunk is None:
                break
            claimed_any = True
            if costs is None and not batch.chunk_size:
                estimate.probes += 1
            task = ChunkTask(
                task_id=uuid.uuid4().hex,
                batch_id=batch.id,
                chunk_id=chunk.id,
                start_index=chunk.start_index,
                count=chunk.count,
                attempt=chunk.attempts,
                parts=self._parts_of(batch, chunk.start_index, chunk.count),
                result_key=chunk.result_key or "",
                service=spec,
                environment=dict(options.get("environment") or {}),
                max_task_retry_count=int(options.get("max_task_retry_count") or 0),
                task_timeout=timeout,
                preparation_key=job_task_key(batch.id, "preparation")
                if options.get("job_preparation_task")
                else None,
                release_key=job_task_key(batch.id, "release")
                if options.get("job_release_task")
                else None,
            )
            self._running[task.task_id] = RunningChunk(
                batch.id,
                chunk.id,
                task.result_key,
                chunk.count,
                batch.service_id,
                started=now,
                last_seen=now,
                # Row mode reports progress record by record; a vectorized chunk is one call
                # whose pieces each have the limit, so only row mode can be judged stuck.
                stuck_after=2 * float(timeout) + STUCK_GRACE_SECONDS
                if timeout and spec.mode != "vectorized"
                else None,
                preemptible=bool(options.get("allow_preemption")),
                expected_end=now + (costs.seconds(chunk.count) if costs else 0.0),
                costs_key=(batch.service_id, spec.bundle_key),
            )
            self._per_batch[batch.id] += 1
            claimed += 1
            executor.submit(task)
            self._running[task.task_id].claim_seconds = time.monotonic() - now
        if claimed_any:
            self._placement.placed(batch)
        if claimed_any and batch.state == BatchState.PENDING.value:
            moved = self.store.transition(
                batch.id,
                BatchState.RUNNING,
                only_from=[BatchState.PENDING],
                start_time=batch.start_time or utcnow(),
            )
            self.metrics.batch_started(moved)
        elif not claimed_any and self._per_batch[batch.id] == 0:
            self._maybe_complete(batch.id)
        return claimed_any

    def _spec(self, service_id: int) -> ServiceSpec:
        # Looked up per dispatch round, not cached by id: a deleted service's id may be reused.
        service = self.store.get_service_by_id(service_id)
        if service is None:
            raise LookupError(f"service {service_id} is gone")
        return service_spec(service)


def _statistics(result: dict[str, Any]) -> dict[str, Any]:
    """A finished chunk's statistics as additions to its columns (they sum over its tries)."""
    fields: dict[str, Any] = {}
    for name in ("retried", "timed_out", "bytes_in", "bytes_out"):
        if result.get(name):
            fields[name] = getattr(Chunk, name) + int(result[name])
    for name in ("cpu_user", "cpu_system", "run_seconds"):
        if result.get(name):
            fields[name] = getattr(Chunk, name) + float(result[name])
    return fields


__all__ = [
    "CancelBatch",
    "CloseBatch",
    "ConsumeWaiting",
    "DeleteBatch",
    "DisableBatch",
    "EnableBatch",
    "Scheduler",
    "Wake",
    "WarmService",
    "remove_batch",
    "result_key",
    "service_spec",
]
