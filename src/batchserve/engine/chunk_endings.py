"""How chunks and batches end on a node: finished, failed by policy, retried after a lost
worker, cancelled, paused, deleted, or stopped past their time. Part of the
:class:`~batchserve.engine.scheduler.Scheduler`, and only ever run on its thread."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from batchserve.blobs import BlobNotFound, BlobStore
from batchserve.blobs.segments import open_stream_reader
from batchserve.engine.metrics import NodeMetrics
from batchserve.engine.results import read_results
from batchserve.engine.running import RunningChunk, remove_batch
from batchserve.executors.base import Executor
from batchserve.logs import log_context
from batchserve.states import BatchState, ChunkState
from batchserve.store import Store
from batchserve.store.models import Batch, Chunk, is_open, utcnow

log = logging.getLogger("batchserve.engine.scheduler")


class ChunkEndings:
    store: Store
    blobs: BlobStore
    executor: Executor | None
    max_worker_loss_retries: int
    metrics: NodeMetrics
    _running: dict[str, RunningChunk]
    _per_batch: Counter[str]
    _preempted: set[str]

    def _after_chunk(self, batch_id: str) -> None:
        """A chunk of the batch ended: fail the batch by its policy, or complete it, or finish
        its pause; one read of the batch for all three."""
        batch = self.store.get_batch(batch_id)
        if batch is None:
            return
        if not self._apply_failure_policy(batch_id, batch):
            self._maybe_complete(batch_id, batch)
        self._maybe_paused(batch_id, batch)

    def _retry_or_fail(self, run: RunningChunk, reason: str) -> None:
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

    def _queue_again(self, run: RunningChunk, **counters: Any) -> None:
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
        self.metrics.chunk_queued_again(counters)

    def _settle_from_file(self, run: RunningChunk, state: ChunkState, error: str) -> None:
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
            expect_key=run.result_key,
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
                    expect_key=run.result_key,
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
        about = {"batch_id": run.batch_id, "chunk_id": run.chunk_id}
        log.info("requeued chunk %s of batch %s: %s", run.chunk_id, run.batch_id, why, extra=about)
        self._queue_again(run, requeued=Chunk.requeued + run.count)

    def _delete(self, batch_id: str) -> None:
        """Remove a batch marked for deletion: its running chunks on this node are stopped
        first, so that no worker writes a file of it after its files are removed. While chunks
        of it still run on other nodes, the removal waits for them to stop theirs."""
        batch = self.store.get_batch(batch_id)
        if batch is None or batch.deleting_since is None:
            return
        assert self.executor is not None
        for task_id, run in list(self._running.items()):
            if run.batch_id == batch_id:
                self.executor.stop_task(task_id)  # returns once the worker is gone
                del self._running[task_id]  # its Lost event finds nothing to do
                self._queue_again(run)  # not running any more, wherever it is looked at
        del self._per_batch[batch_id]
        if self.store.running_chunks(batch_id):
            return  # other nodes stop theirs; the leader removes it then
        remove_batch(self.store, self.blobs, batch_id)
        log.info("removed deleted batch %s", batch_id, extra={"batch_id": batch_id})

    def _remove_deleted(self) -> None:
        """Remove the batches marked for deletion that are still there: a removal that failed
        (a blob store or database error) is tried again. One that fails again must not keep the
        others from being scheduled."""
        for batch in self.store.batches_being_deleted():
            try:
                self._delete(batch.id)
            except Exception:
                log.exception(
                    "could not remove batch %s, marked for deletion",
                    batch.id,
                    extra={"batch_id": batch.id},
                )

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

    def _enable(self, batch_id: str) -> None:
        """An enabling batch's chunks wait for workers again from now on, and it is pending.
        The node that received the enable does it at once; the leader does it for a node that
        could not (it died in between)."""
        self.store.mark_queued(batch_id)
        self.store.transition(batch_id, BatchState.PENDING, only_from=[BatchState.ENABLING])

    def _maybe_paused(self, batch_id: str, batch: Batch | None = None) -> None:
        """A pausing batch with nothing left running is paused (``batch``: as just read)."""
        if self._per_batch[batch_id] > 0:
            return
        if batch is not None and batch.state != BatchState.PAUSING.value:
            return
        if self.store.running_chunks(batch_id):
            return  # still running on another node, which says so when it stops
        self.store.transition(batch_id, BatchState.PAUSED, only_from=[BatchState.PAUSING])

    def _end(
        self,
        batch_id: str,
        reason: str,
        termination_reason: str,
        scheduling_error: dict[str, Any] | None = None,
    ) -> None:
        """Fail a batch now: stop its running chunks, and its records that did not run are
        reported cancelled with ``reason``. ``scheduling_error`` (Azure Batch's
        ``JobSchedulingError``) says why it could not run, when that is why it fails."""
        self._stop_running(batch_id, reason)
        self.store.finish_pending_chunks(batch_id, ChunkState.CANCELLED, reason)
        more: dict[str, Any] = {"scheduling_error": scheduling_error} if scheduling_error else {}
        self.store.transition(
            batch_id,
            BatchState.FAILED,
            only_from=[
                BatchState.PENDING,
                BatchState.RUNNING,
                BatchState.PAUSING,
                BatchState.PAUSED,
                BatchState.ENABLING,
            ],
            end_time=utcnow(),
            termination_reason=termination_reason,
            error=reason,
            **more,
        )

    def _finish_cancel(self, batch_id: str, reason: str) -> None:
        """A cancelling batch is cancelled once none of its chunks runs, on any node: the node
        whose chunks stop last ends it, or the leader does."""
        self.store.finish_pending_chunks(batch_id, ChunkState.CANCELLED, reason)
        if self.store.running_chunks(batch_id):
            return
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

    def _kill_stuck(self, task_id: str, run: RunningChunk) -> None:
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
        self.store.set_chunk(
            run.chunk_id,
            expect_state=ChunkState.RUNNING,
            expect_key=run.result_key,
            timed_out=chunk.timed_out + 1,
        )
        self._settle_from_file(run, ChunkState.FAILED, reason)
        if not self._apply_failure_policy(run.batch_id):
            self._maybe_complete(run.batch_id)
        self._maybe_paused(run.batch_id)

    def _release_ended(self) -> None:
        """Workers here that ran chunks of a batch with a job release run it once the batch has
        ended, on whichever node it ended."""
        if self.executor is None:
            return
        owed = self.executor.owed_releases()
        for batch_id in self.store.ended_batches(sorted(owed)) if owed else ():
            self.executor.release(batch_id)

    def _kill_stuck_workers(self, now: float) -> None:
        """Kill this node's workers stuck past a task timeout."""
        for task_id, run in list(self._running.items()):
            if run.stuck_after is not None and now - run.last_seen > run.stuck_after:
                with log_context(run.batch_id, run.chunk_id):
                    self._kill_stuck(task_id, run)

    def _maybe_complete(self, batch_id: str, batch: Batch | None = None) -> None:
        batch = batch or self.store.get_batch(batch_id)
        if batch is None or not batch.sealed:
            return
        if is_open(batch) and batch.state != BatchState.CANCELLING.value:
            return  # an open batch ends only once it is closed (more records may come)
        if not self.store.has_unfinished_records(batch_id):
            if batch.state == BatchState.CANCELLING.value:
                self.store.transition(
                    batch_id,
                    BatchState.CANCELLED,
                    only_from=[BatchState.CANCELLING],
                    end_time=utcnow(),
                )
            elif batch.state in (BatchState.PENDING.value, BatchState.RUNNING.value):
                self.store.transition(
                    batch_id,
                    BatchState.COMPLETED,
                    only_from=[BatchState.PENDING, BatchState.RUNNING],
                    end_time=utcnow(),
                    termination_reason="AllTasksComplete",
                )
