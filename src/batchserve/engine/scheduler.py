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

Between events it keeps time: a batch past its ``max_wall_clock_time`` fails, and a worker
whose record has run far past ``task_timeout`` without stopping is killed.

A batch marked for deletion is never dispatched again; the scheduler removes it once it has
stopped the batch's workers, so that none of them writes a file after the removal.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from batchserve.blobs import BlobNotFound, BlobStore, keys
from batchserve.blobs.segments import open_stream_reader
from batchserve.engine.costs import CostEstimate, Costs, range_size
from batchserve.engine.inputs import PartRef
from batchserve.engine.results import read_results
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
from batchserve.states import BatchState, ChunkState
from batchserve.store import Store
from batchserve.store.models import Batch, Chunk, Service, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wake:
    """Something changed in the store (a batch was started); look for work."""


@dataclass(frozen=True)
class WarmService:
    """A service was published (or its code replaced): idle workers load it now."""

    service: ServiceSpec


@dataclass(frozen=True)
class CancelBatch:
    batch_id: str
    reason: str


@dataclass(frozen=True)
class DeleteBatch:
    """Remove a batch marked for deletion (see :meth:`Store.mark_deleting`)."""

    batch_id: str


@dataclass(frozen=True)
class DisableBatch:
    """Pause a batch that is now ``pausing``; ``mode`` says what happens to its running chunks:
    ``requeue`` (stopped and queued again), ``terminate`` (stopped; their unfinished records
    fail) or ``wait`` (left to finish)."""

    batch_id: str
    mode: str


@dataclass(frozen=True)
class ConsumeRequest:
    task: ConsumeTask
    future: Future[dict[str, Any]]


@dataclass(frozen=True)
class ConsumeOver:
    """A consume ended (answered), or its caller gave up on it (``abandoned``: it timed out or
    the client went away), so its worker must stop."""

    task_id: str
    abandoned: bool = False


@dataclass
class _Running:
    batch_id: str
    chunk_id: int
    result_key: str
    count: int
    service_id: int
    started: float  # time.monotonic() at dispatch
    last_seen: float  # time.monotonic() of the last sign of progress
    # Seconds of silence after which the worker is presumed stuck past its task_timeout.
    stuck_after: float | None = None
    preemptible: bool = False  # its batch allows a higher priority to requeue it
    expected_end: float = 0.0  # time.monotonic() when it should finish, by the cost estimate
    costs_key: tuple[int, str] | None = None  # whose cost estimate it updates (service, bundle)
    claim_seconds: float = 0.0  # the scheduler's time claiming and sending it


def service_spec(service: Service) -> ServiceSpec:
    return ServiceSpec(
        key=service.bundle_key,
        bundle_key=service.bundle_key,
        mode=service.mode,
        inputs=dict(service.inputs),
        outputs=dict(service.outputs),
        artifacts=tuple(service.artifacts),
        publisher=str(service.owner_id),
        resources=dict(service.resources or {}),
    )


def result_key(chunk: Chunk, *, segmented: bool = False) -> str:
    return keys.result_key(chunk.batch_id, chunk.seq, chunk.attempts, segmented=segmented)


def remove_batch(store: Store, blobs: BlobStore, batch_id: str) -> None:
    """Remove a batch's files, then its rows: once its row is gone, nothing of it is left. (A
    crash in between leaves the row, and the removal is done again at start.)"""
    blobs.delete_prefix(keys.batch_prefix(batch_id))
    store.delete_batch(batch_id)


# A record that ignores the timeout signal (stuck in native code) is given this much more than
# its limit, twice over, before its worker is killed.
STUCK_GRACE_SECONDS = 5.0
TICK_SECONDS = 0.25  # how often limits are checked when no event comes


class Scheduler:
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
        self.executor: Executor | None = None
        self._events: queue.Queue[object] = queue.Queue()
        self._running: dict[str, _Running] = {}
        self._per_batch: Counter[str] = Counter()
        self._consumes: dict[str, Future[dict[str, Any]]] = {}
        self._consume_queue: list[ConsumeTask] = []
        self._consuming: set[str] = set()  # consumes on a worker now
        self._warm: list[ServiceSpec] = []  # services for the workers that stay idle to load
        self._preempted: set[str] = set()  # stopped for a higher priority; Lost not heard yet
        # Finished chunks whose results are written down after the next dispatch.
        self._finished_runs: list[tuple[_Running, dict[str, Any]]] = []
        self._last_tick = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # --- called from other threads ----------------------------------------------------------

    def post(self, event: object) -> None:
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
                    self._check_limits(now)
                    self._remove_deleted()
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
            self._record(run, result)

    def _record(self, run: _Running, result: dict[str, Any]) -> None:
        began = time.monotonic()
        if "error" in result:
            self._settle_from_file(run, ChunkState.FAILED, result["error"])
        else:
            self.store.set_chunk(
                run.chunk_id,
                expect_state=ChunkState.RUNNING,
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
        self._after_chunk(run.batch_id)

    def _after_chunk(self, batch_id: str) -> None:
        """A chunk of the batch ended: fail the batch by its policy, or complete it, or finish
        its pause; one read of the batch for all three."""
        batch = self.store.get_batch(batch_id)
        if batch is None:
            return
        if not self._apply_failure_policy(batch_id, batch):
            self._maybe_complete(batch_id, batch)
        self._maybe_paused(batch_id, batch)

    def _lost(self, event: Lost) -> None:
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
        self._retry_or_fail(run, event.reason)

    def _retry_or_fail(self, run: _Running, reason: str) -> None:
        """A chunk's worker died (or was killed as stuck): run the chunk again, or give up."""
        chunk = self.store.get_chunk(run.chunk_id)
        if chunk is None:
            return
        if chunk.lost_workers < self.max_worker_loss_retries:
            log.warning("chunk %s of batch %s: %s; retrying", chunk.seq, run.batch_id, reason)
            self._queue_again(run, lost_workers=chunk.lost_workers + 1)
            self._maybe_paused(run.batch_id)
        else:
            self._settle_from_file(
                run,
                ChunkState.FAILED,
                f"{reason}, {chunk.lost_workers + 1} times; the chunk was given up",
            )
            if not self._apply_failure_policy(run.batch_id):
                self._maybe_complete(run.batch_id)
            self._maybe_paused(run.batch_id)

    def _queue_again(self, run: _Running, **counters: Any) -> None:
        """Put a chunk that stopped running back in the queue, to run from its start on a new
        try; ``counters`` say why (a lost worker, a timeout, a requeue)."""
        self.store.set_chunk(
            run.chunk_id,
            expect_state=ChunkState.RUNNING,
            expect_key=run.result_key,
            state=ChunkState.PENDING.value,
            succeeded=0,
            failed=0,
            queued_at=utcnow(),
            **counters,
        )

    def _settle_from_file(self, run: _Running, state: ChunkState, error: str) -> None:
        """End a chunk early: records already in its result file keep their results."""
        succeeded = failed = 0
        try:
            with open_stream_reader(self.blobs, run.result_key) as f:
                statuses = read_results(f, None).column("status").to_pylist()
            succeeded = statuses.count("succeeded")
            failed = statuses.count("failed")
        except (BlobNotFound, KeyError):
            pass
        rest = run.count - succeeded - failed
        cancelled = rest if state == ChunkState.CANCELLED else 0
        if state == ChunkState.FAILED:
            failed += rest
        self.store.set_chunk(
            run.chunk_id,
            expect_state=ChunkState.RUNNING,
            state=state.value,
            finished_at=utcnow(),
            succeeded=succeeded,
            failed=failed,
            cancelled=cancelled,
            error=error,
        )

    def _cancel(self, batch_id: str, reason: str) -> None:
        self._stop_running(batch_id, reason)
        self._finish_cancel(batch_id, reason)

    def _stop_running(
        self, batch_id: str, reason: str, state: ChunkState = ChunkState.CANCELLED
    ) -> None:
        """Stop every running chunk of a batch; their finished records keep their results and
        the rest become ``state`` (cancelled, or failed)."""
        assert self.executor is not None
        for task_id, run in list(self._running.items()):
            if run.batch_id != batch_id:
                continue
            self.executor.stop_task(task_id)  # returns once the worker is gone
            del self._running[task_id]
            self._per_batch[batch_id] -= 1
            try:
                self._settle_from_file(run, state, reason)
            except Exception:  # an unreadable result file must not leave the batch cancelling
                log.exception("could not read the results of a stopped chunk")
                self.store.set_chunk(
                    run.chunk_id,
                    expect_state=ChunkState.RUNNING,
                    state=state.value,
                    finished_at=utcnow(),
                    error=reason,
                    succeeded=0,
                    failed=run.count if state == ChunkState.FAILED else 0,
                    cancelled=run.count if state == ChunkState.CANCELLED else 0,
                )

    def _requeue(self, task_id: str, why: str) -> None:
        """Stop a running chunk and queue it again from its start: not a failure, no retry used.

        Its records run again in full on the next try (the stopped try's result file is left
        unread), so no record ends with two results.
        """
        assert self.executor is not None
        run = self._running.pop(task_id)
        self._per_batch[run.batch_id] -= 1
        self._preempted.add(task_id)
        self.executor.stop_task(task_id)
        log.info("requeued chunk %s of batch %s: %s", run.chunk_id, run.batch_id, why)
        self._queue_again(run, requeued=Chunk.requeued + run.count)

    def _delete(self, batch_id: str) -> None:
        """Remove a batch marked for deletion: its running chunks are stopped first, so that no
        worker writes a file of it after its files are removed."""
        batch = self.store.get_batch(batch_id)
        if batch is None or batch.deleting_since is None:
            return
        assert self.executor is not None
        for task_id, run in list(self._running.items()):
            if run.batch_id == batch_id:
                self.executor.stop_task(task_id)  # returns once the worker is gone
                del self._running[task_id]  # its Lost event finds nothing to do
        del self._per_batch[batch_id]
        remove_batch(self.store, self.blobs, batch_id)
        log.info("removed deleted batch %s", batch_id)

    def _remove_deleted(self) -> None:
        """Remove the batches marked for deletion that are still there: a removal that failed
        (a blob store or database error) is tried again. One that fails again must not keep the
        others from being scheduled."""
        for batch in self.store.batches_being_deleted():
            try:
                self._delete(batch.id)
            except Exception:
                log.exception("could not remove batch %s, marked for deletion", batch.id)

    def _disable(self, batch_id: str, mode: str) -> None:
        batch = self.store.get_batch(batch_id)
        if batch is None or batch.state != BatchState.PAUSING.value:
            return
        if mode == "requeue":
            for task_id in [t for t, r in self._running.items() if r.batch_id == batch_id]:
                self._requeue(task_id, "the batch was disabled")
        elif mode == "terminate":
            self._stop_running(
                batch_id, "stopped when the batch was disabled (terminate)", ChunkState.FAILED
            )
        self._maybe_paused(batch_id)

    def _maybe_paused(self, batch_id: str, batch: Batch | None = None) -> None:
        """A pausing batch with nothing left running is paused (``batch``: as just read)."""
        if self._per_batch[batch_id] > 0:
            return
        if batch is not None and batch.state != BatchState.PAUSING.value:
            return
        self.store.transition(batch_id, BatchState.PAUSED, only_from=[BatchState.PAUSING])

    def _end(self, batch_id: str, reason: str, termination_reason: str) -> None:
        """Fail a batch now: stop its running chunks, and its records that did not run are
        reported cancelled with ``reason``."""
        self._stop_running(batch_id, reason)
        self.store.finish_pending_chunks(batch_id, ChunkState.CANCELLED, reason)
        self.store.transition(
            batch_id,
            BatchState.FAILED,
            end_time=utcnow(),
            termination_reason=termination_reason,
            error=reason,
        )

    def _finish_cancel(self, batch_id: str, reason: str) -> None:
        self.store.finish_pending_chunks(batch_id, ChunkState.CANCELLED, reason)
        self.store.transition(
            batch_id, BatchState.CANCELLED, only_from=[BatchState.CANCELLING], end_time=utcnow()
        )

    def _apply_failure_policy(self, batch_id: str, batch: Batch | None = None) -> bool:
        """Fail the batch when its failed records pass its limit; True when it was failed.

        ``task_failure_mode="terminatejob"`` allows no failed record; ``max_failed_records``
        allows that many. Records that did not run then are reported cancelled.
        """
        batch = batch or self.store.get_batch(batch_id)
        if batch is None or batch.state not in (BatchState.PENDING.value, BatchState.RUNNING.value):
            return False
        options = batch.options
        limit = options.get("max_failed_records")
        if options.get("task_failure_mode") == "terminatejob":
            limit = 0
        if limit is None:
            return False
        failed = self.store.batch_counts(batch_id).failed
        if failed <= limit:
            return False
        reason = f"the batch failed: {failed} record(s) failed, more than the {limit} allowed"
        self._end(batch_id, reason, "TaskFailed")
        return True

    # --- limits in time ---------------------------------------------------------------------

    def _kill_stuck(self, task_id: str, run: _Running) -> None:
        """A record ignored its task_timeout (stuck in native code): kill its worker. That is a
        failed try of the chunk, run again while ``max_task_retry_count`` allows."""
        assert self.executor is not None
        self._running.pop(task_id)
        self._per_batch[run.batch_id] -= 1
        self._preempted.add(task_id)  # its Lost event is handled here, not again
        self.executor.stop_task(task_id)
        batch = self.store.get_batch(run.batch_id)
        chunk = self.store.get_chunk(run.chunk_id)
        if batch is None or chunk is None:
            return
        limit = int(batch.options.get("max_task_retry_count") or 0)
        timeout = batch.options.get("task_timeout")
        reason = (
            f"a record ran past the task_timeout of {timeout:g} s and did not stop, so its "
            "worker was killed"
        )
        if limit == -1 or chunk.timed_out < limit:
            log.warning("chunk %s of batch %s: %s; retrying", chunk.seq, run.batch_id, reason)
            self._queue_again(run, timed_out=chunk.timed_out + 1)
            self._maybe_paused(run.batch_id)
            return
        self.store.set_chunk(run.chunk_id, timed_out=chunk.timed_out + 1)
        self._settle_from_file(run, ChunkState.FAILED, reason)
        if not self._apply_failure_policy(run.batch_id):
            self._maybe_complete(run.batch_id)
        self._maybe_paused(run.batch_id)

    def _check_limits(self, now: float) -> None:
        """Fail batches past their wall-clock limit; kill workers stuck past a task timeout."""
        for task_id, run in list(self._running.items()):
            if run.stuck_after is not None and now - run.last_seen > run.stuck_after:
                self._kill_stuck(task_id, run)
        active = [
            BatchState.PENDING,
            BatchState.RUNNING,
            BatchState.PAUSING,
            BatchState.PAUSED,
        ]
        wall = utcnow()
        for batch in self.store.batches_in_states(active):
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

    def _maybe_complete(self, batch_id: str, batch: Batch | None = None) -> None:
        batch = batch or self.store.get_batch(batch_id)
        if batch is None or not batch.sealed:
            return
        if not self.store.has_unfinished_records(batch_id):
            if batch.state == BatchState.CANCELLING.value:
                self.store.transition(batch_id, BatchState.CANCELLED, end_time=utcnow())
            elif batch.state in (BatchState.PENDING.value, BatchState.RUNNING.value):
                self.store.transition(
                    batch_id,
                    BatchState.COMPLETED,
                    end_time=utcnow(),
                    termination_reason="AllTasksComplete",
                )

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
            how = "was deleted" if other is None else f"ended {other.state}"
            self._end(
                batch.id,
                f"batch {other_id}, which this batch depends on, {how}",
                "DependencyFailed",
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
            wanted = batch.parallel_count - self._per_batch[batch.id]
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
            and self._per_batch[batch.id] < batch.parallel_count
            and (most is None or claimed < most)
        ):
            spec = spec or self._spec(batch.service_id)
            if executor.free_slots() < executor.slots_for(spec):
                break  # a service asking for more CPUs waits for that many free workers
            estimate = self._estimate(batch.service_id, spec)
            costs = estimate.costs()
            now = time.monotonic()
            size_for = functools.partial(
                self._range_size, batch, spec.mode, costs, estimate.probes, now
            )
            chunk = self.store.claim_chunk(batch.id, self._result_key, size_for)
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
            )
            self._running[task.task_id] = _Running(
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
        if claimed_any and batch.state == BatchState.PENDING.value:
            self.store.transition(
                batch.id,
                BatchState.RUNNING,
                only_from=[BatchState.PENDING],
                start_time=batch.start_time or utcnow(),
            )
        elif not claimed_any and self._per_batch[batch.id] == 0:
            self._maybe_complete(batch.id)
        return claimed_any

    def _range_size(
        self,
        batch: Batch,
        mode: str,
        costs: Costs | None,
        probes: int,
        now: float,
        remaining: int,
        sealed: bool,
    ) -> int:
        """How many of a batch's ``remaining`` unclaimed records its next chunk takes: the size
        asked for, else as :func:`~batchserve.engine.costs.range_size` says from the service's
        costs and the batch's running chunks. While the upload goes on (not ``sealed``), a chunk
        takes the records stored so far, up to the target time; 0 waits for more when they are
        fewer than the floor."""
        if batch.chunk_size:
            return int(batch.chunk_size) if sealed or remaining >= batch.chunk_size else 0
        assert self.executor is not None
        slots = min(batch.parallel_count, self.executor.capacity())
        if not sealed and costs is not None:
            if remaining < costs.floor():
                return 0
            at_most = max(1, math.ceil(self.target_chunk_seconds / costs.record))
            return min(remaining, at_most, self.max_chunk_size)
        busy = sum(
            max(0.0, r.expected_end - now) for r in self._running.values() if r.batch_id == batch.id
        )
        return range_size(
            remaining,
            slots,
            costs,
            busy,
            mode=mode,
            target_seconds=self.target_chunk_seconds,
            maximum=self.max_chunk_size,
            probes=probes,
        )

    def _parts_of(self, batch: Batch, start: int, count: int) -> tuple[PartRef, ...]:
        """The upload parts holding a chunk's records (kept once the batch is sealed: its parts
        never change then)."""
        parts = self._parts.get(batch.id)
        if parts is None:
            parts = tuple(
                PartRef(p.key, p.start_index, p.count) for p in self.store.parts(batch.id)
            )
            if batch.sealed:
                self._parts[batch.id] = parts
        stop = start + count
        return tuple(p for p in parts if p.start_index < stop and p.start_index + p.count > start)

    def _estimate(self, service_id: int, spec: ServiceSpec) -> CostEstimate:
        """The running cost estimate of a service, started from what the store kept."""
        key = (service_id, spec.bundle_key)
        estimate = self._costs.get(key)
        if estimate is None:
            service = self.store.get_service_by_id(service_id)
            prior = None
            if (
                service is not None
                and service.record_seconds is not None
                and service.chunk_seconds is not None
            ):
                prior = Costs(
                    service.chunk_seconds, service.call_seconds or 0.0, service.record_seconds
                )
            estimate = self._costs[key] = CostEstimate(prior)
        return estimate

    def _observe(self, run: _Running, running: float, around: float) -> None:
        """Fold a finished chunk's times into its service's cost estimate, and keep it."""
        if run.costs_key is None or not run.count:
            return
        estimate = self._costs.get(run.costs_key)
        if estimate is None:
            return
        try:
            estimate.observe(run.count, running, around)
            costs = estimate.costs()
            now = time.monotonic()
            # Kept for a restart (and for other nodes) at most once a second: this process
            # sizes the next chunks from its own estimate.
            if costs is not None and now - self._costs_kept.get(run.costs_key, -1e9) >= 1.0:
                self._costs_kept[run.costs_key] = now
                self.store.observe_costs(
                    run.service_id, chunk=costs.chunk, call=costs.call, record=costs.record
                )
        except Exception:  # an estimate is no reason to leave a finished chunk unrecorded
            log.exception("could not update the cost estimate of service %s", run.service_id)

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
