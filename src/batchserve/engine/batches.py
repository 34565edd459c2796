"""Batch operations: create (upload), start, cancel, delete, inspect, and read results."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any, BinaryIO

from batchserve.blobs import BlobStore
from batchserve.engine.auth import Principal
from batchserve.engine.batch_listing import BatchListing
from batchserve.engine.environment import check_environment
from batchserve.engine.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    UnsupportedMediaType,
    check_text,
)
from batchserve.engine.ingest import (
    FORMATS,
    MAX_LINE_BYTES,
    encode_type,
    ingest,
    unsupported,
)
from batchserve.engine.open_batches import OpenBatches
from batchserve.engine.preconditions import check_etag, revision, stale
from batchserve.engine.scheduler import (
    CancelBatch,
    CloseBatch,
    DeleteBatch,
    DisableBatch,
    EnableBatch,
    Scheduler,
    Wake,
    remove_batch,
)
from batchserve.schema import SchemaError
from batchserve.states import BatchState, ChunkState, InvalidTransition, states_allowing
from batchserve.store import BatchCounts, RevisionMismatch, Store
from batchserve.store.models import Batch, Service, is_open, utcnow

DISABLE_MODES = ("requeue", "terminate", "wait")
MOVE_TRIES = 5  # a user's state change raced by the scheduler is tried again this many times
# How long a delete waits for the scheduler to stop the batch's workers and remove it, which
# usually takes a moment; past it the removal goes on after the answer.
DELETE_WAIT_SECONDS = 2.0


class BatchOps(BatchListing, OpenBatches):
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        scheduler: Scheduler,
        *,
        max_user_priority: int = 0,
        allowed_environment: Collection[str] = (),
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.scheduler = scheduler
        self.max_user_priority = max_user_priority
        self.allowed_environment = frozenset(allowed_environment)

    def _check_priority(self, who: Principal, priority: int) -> int:
        """``priority`` if ``who`` may set it: owners up to 1000, others up to the ceiling."""
        if not -1000 <= priority <= 1000:
            raise BadRequest("priority must be from -1000 to 1000.")
        if priority > self.max_user_priority and not who.is_owner:
            raise Forbidden(
                f"priority {priority} is above {self.max_user_priority}, the highest that a "
                f"{who.role} may set on this server; only owners set higher priorities. Use a "
                f"priority of at most {self.max_user_priority}, or ask an owner.",
                max_user_priority=self.max_user_priority,
            )
        return priority

    # --- create and control -----------------------------------------------------------------

    def create(
        self,
        who: Principal,
        service: Service,
        source: BinaryIO,
        content_type: str,
        *,
        parallel_count: int = 10,
        chunk_size: int | None = None,
        record_count: int | None = None,
        start: bool = True,
        options: dict[str, Any] | None = None,
        id_column: str | None = None,
        spool_dir: Path | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> Batch:
        """Stream records into upload parts and create the batch (started unless ``start``).

        ``chunk_size`` fixes the records per chunk; without it, chunks are cut as they are handed
        out, from what the service's chunks cost. ``record_count`` is the count the client
        announced (not needed: the upload tells it). ``id_column`` names a column of the records
        whose values are carried into the results as each record's ``id``; ``spool_dir`` holds
        the temporary copy of a Parquet or Arrow file upload while it is read. A line of CSV, TSV
        or JSON Lines longer than ``max_line_bytes`` is refused.
        """
        began = time.perf_counter()
        if content_type not in FORMATS:
            raise UnsupportedMediaType(str(unsupported(content_type)))
        if id_column is not None and not id_column.strip():
            raise BadRequest("id_column must name a column of the records; it is empty.")
        if id_column is not None:
            check_text(id_column, "id_column")
        if not service.inputs:
            raise BadRequest(
                f"Service {service.name} {service.version} declares no inputs, so "
                "it cannot be batched; consume it instead."
            )
        _check_parallel_count(parallel_count)
        if chunk_size is not None and chunk_size < 1:
            raise BadRequest("chunk_size must be at least 1.")
        batch_id = uuid.uuid4().hex
        opts = dict(options or {})
        priority = self._check_priority(who, int(opts.pop("priority", 0) or 0))
        display_name = opts.pop("display_name", None)
        if opts.get("environment"):
            opts["environment"] = check_environment(
                opts["environment"], trusted=who.is_owner, allowed=self.allowed_environment
            )
        if display_name is not None:
            check_text(display_name, "display_name", max_length=1024)
        _check_constraints(opts)
        if opts.get("depends_on"):
            opts["depends_on"] = self._dependencies(who, opts["depends_on"])
        opts.update(
            service={"name": service.name, "version": service.version},
            inputs=dict(service.inputs),
            outputs=dict(service.outputs),
        )
        if id_column is not None:
            opts["id_column"] = id_column
        self.store.add_batch(
            id=batch_id,
            service_id=service.id,
            owner_id=who.id,
            parallel_count=parallel_count,
            chunk_size=chunk_size or 0,
            options=opts,
            priority=priority,
            display_name=display_name,
            upload_node=self.scheduler.node_id,  # this node receives its upload
        )
        if start:
            # Started at once: its records run as their parts are stored, while the rest of
            # the upload streams in. (Users see the batch only once its upload is complete.)
            self.store.transition(
                batch_id, BatchState.PENDING, only_from=[BatchState.CREATED], start_time=utcnow()
            )

        def stored(seq: int, start_index: int, count: int, size: int, key: str) -> None:
            self.store.add_part(batch_id, seq, start_index, count, size, key)
            if start:
                self.scheduler.post(Wake())

        try:
            done = ingest(
                source,
                content_type,
                batch_id=batch_id,
                service=f"{service.name} {service.version}",
                inputs=service.inputs,
                blobs=self.blobs,
                on_part=stored,
                id_column=id_column,
                spool_dir=spool_dir,
                max_line_bytes=max_line_bytes,
            )
        except SchemaError as exc:
            self._abandon(batch_id)
            raise BadRequest(str(exc)) from None
        except BaseException:
            self._abandon(batch_id)
            raise
        if done.id_type is not None:
            opts["id_type"] = encode_type(done.id_type)
        batch = self.store.update_batch(
            batch_id,
            total_count=done.records,
            sealed=True,
            options=opts,
            ingest_seconds=time.perf_counter() - began,
        )
        assert batch is not None
        if start:
            self.scheduler.post(Wake())  # the last records, and the end of the batch
        return batch

    def _abandon(self, batch_id: str) -> None:
        """Remove a batch whose upload failed. Its stored records may have begun to run: then
        the scheduler stops their workers before it removes the batch, so that none of them
        writes a file after the removal."""
        self.store.mark_deleting(batch_id)  # no chunk of it is handed out from now on
        batch = self.store.get_batch(batch_id)
        if batch is not None and batch.claimed:
            self.scheduler.post(DeleteBatch(batch_id))
        else:
            remove_batch(self.store, self.blobs, batch_id)

    def get(self, who: Principal, batch_id: str) -> Batch:
        return _visible(who, batch_id, self.store.get_batch(batch_id))

    def status(self, who: Principal, batch_id: str) -> tuple[Batch, BatchCounts, str | None]:
        """A batch, its counts and its creator's username, in one read (status polling)."""
        found = self.store.batch_status(batch_id)
        _visible(who, batch_id, found[0] if found else None)
        assert found is not None
        return found

    def statuses(
        self, who: Principal, batch_ids: list[str]
    ) -> list[tuple[Batch, BatchCounts, str | None]]:
        """The batches of ``batch_ids`` that ``who`` may see, each with its counts and its
        creator's username, read in one statement (a page watching many batches at once);
        the others are left out, as if they did not exist."""
        visible = []
        for batch, counts, created_by in self.store.batch_statuses(batch_ids):
            try:
                _visible(who, batch.id, batch)
            except NotFound:
                continue
            visible.append((batch, counts, created_by))
        return visible

    def _dependencies(self, who: Principal, ids: Any) -> list[str]:
        if isinstance(ids, str) or not isinstance(ids, (list, tuple)):
            raise BadRequest("depends_on must be a list of batch ids.")
        found: list[str] = []
        for other_id in ids:
            try:
                other = _visible(who, str(other_id), self.store.get_batch(str(other_id)))
            except NotFound:
                raise BadRequest(
                    f"depends_on names batch {other_id!r}, which does not exist (or is not "
                    "yours to see); a batch can depend only on batches that exist."
                ) from None
            found.append(other.id)
        return list(dict.fromkeys(found))

    def start(self, who: Principal, batch_id: str) -> Batch:
        batch = self._move(
            who,
            batch_id,
            BatchState.PENDING,
            "start",
            allowed_from=[BatchState.CREATED],
            start_time=utcnow(),
        )
        self.store.mark_queued(batch_id)
        self.scheduler.post(Wake())
        return batch

    def disable(
        self,
        who: Principal,
        batch_id: str,
        disable_tasks: str = "requeue",
        *,
        if_match: str | None = None,
    ) -> Batch:
        """Pause a batch: no new chunk of it starts; ``disable_tasks`` says what happens to the
        running ones (``requeue``, ``terminate`` or ``wait``). It is ``pausing`` until none
        runs, then ``paused``. ``if_match`` (an etag) makes the change conditional."""
        if disable_tasks not in DISABLE_MODES:
            raise BadRequest(
                f"disable_tasks must be one of {', '.join(DISABLE_MODES)}, not {disable_tasks!r}."
            )
        # The mode is kept with the batch: whichever node runs its chunks acts on it.
        options = {**self.get(who, batch_id).options, "disable_tasks": disable_tasks}
        moved = self._move(
            who,
            batch_id,
            BatchState.PAUSING,
            "disable",
            allowed_from=[BatchState.PENDING, BatchState.RUNNING],
            if_match=if_match,
            options=options,
        )
        self.scheduler.post(DisableBatch(batch_id, disable_tasks))
        return moved

    def enable(self, who: Principal, batch_id: str, *, if_match: str | None = None) -> Batch:
        """Let a paused batch run again; ``if_match`` (an etag) makes it conditional. It is
        ``enabling`` until its chunks are queued again (by this node's scheduler, or the
        leader's), then ``pending``."""
        moved = self._move(
            who,
            batch_id,
            BatchState.ENABLING,
            "enable",
            allowed_from=[BatchState.PAUSED],
            if_match=if_match,
        )
        self.scheduler.post(EnableBatch(batch_id))
        return moved

    def cancel(
        self,
        who: Principal,
        batch_id: str,
        reason: str = "UserTerminate",
        *,
        if_match: str | None = None,
    ) -> Batch:
        """Stop a batch, recording ``reason``; ``if_match`` (an etag) makes it conditional."""
        check_text(reason, "The reason", max_length=200)
        batch = self.get(who, batch_id)
        check_etag(batch, if_match)
        if batch.state == BatchState.CREATED.value:
            self.store.finish_pending_chunks(batch_id, ChunkState.CANCELLED, "cancelled")
            return self._move(
                who,
                batch_id,
                BatchState.CANCELLED,
                "cancel",
                if_match=if_match,
                termination_reason=reason,
                end_time=utcnow(),
            )
        if BatchState(batch.state).is_final or batch.state == BatchState.CANCELLING.value:
            return batch  # cancelling a finished batch changes nothing (idempotent)
        moved = self._move(
            who,
            batch_id,
            BatchState.CANCELLING,
            "cancel",
            if_match=if_match,
            termination_reason=reason,
        )
        self.scheduler.post(CancelBatch(batch_id, "cancelled before it ran"))
        return moved

    def update(
        self,
        who: Principal,
        batch_id: str,
        *,
        if_match: str | None = None,
        priority: int | None = None,
        parallel_count: int | None = None,
        metadata: dict[str, str] | None = None,
        max_failed_records: int | None = None,
        max_wall_clock_time: float | None = None,
        max_task_retry_count: int | None = None,
        allow_preemption: bool | None = None,
        display_name: str | None = None,
        on_all_tasks_complete: str | None = None,
    ) -> Batch:
        """Change a batch's settings while it is not finished; ``if_match`` is an etag.
        ``on_all_tasks_complete="terminatejob"`` closes an open batch (see :meth:`close`).

        ``parallel_count`` -1 lifts the limit (the workers are the only one); ``display_name``
        ``""`` removes the display name."""
        batch = self.get(who, batch_id)
        if BatchState(batch.state).is_final:
            raise Conflict(
                f"Batch {batch_id} is {batch.state}; its settings can be changed only while it is "
                "created, pending, running, pausing, paused or enabling.",
                state=batch.state,
            )
        if on_all_tasks_complete not in (None, "noaction", "terminatejob"):
            raise BadRequest(
                "on_all_tasks_complete must be 'noaction' (open: records may be added) or "
                f"'terminatejob' (it completes once its records are done), not "
                f"{on_all_tasks_complete!r}."
            )
        if on_all_tasks_complete == "noaction" and not is_open(batch):
            raise Conflict(
                f"Batch {batch_id} is not open, and cannot be opened: a batch is open only from "
                "its creation (open=True, or on_all_tasks_complete=noaction)."
            )
        expect = revision(if_match)
        fields: dict[str, Any] = {}
        if priority is not None and priority != batch.priority:
            fields["priority"] = self._check_priority(who, priority)
        if parallel_count is not None:
            fields["parallel_count"] = _check_parallel_count(parallel_count)
        if display_name is not None:
            if display_name:
                check_text(display_name, "display_name", max_length=1024)
            fields["display_name"] = display_name or None
        options = dict(batch.options)
        if metadata is not None:
            options["metadata"] = dict(metadata)
        if max_failed_records is not None:
            options["max_failed_records"] = max_failed_records
        if max_wall_clock_time is not None:
            options["max_wall_clock_time"] = max_wall_clock_time
        if max_task_retry_count is not None:
            options["max_task_retry_count"] = max_task_retry_count
        if allow_preemption is not None:
            options["allow_preemption"] = bool(allow_preemption)
        _check_constraints(options)
        closing = on_all_tasks_complete == "terminatejob" and is_open(batch)
        if closing:
            options.update(on_all_tasks_complete="terminatejob", closed_at=True)
        if options != batch.options:
            fields["options"] = options
        try:
            updated = self.store.update_batch(batch_id, expect_revision=expect, **fields)
        except RevisionMismatch as exc:
            raise stale(batch_id, if_match, exc.current) from None
        if updated is None:
            raise NotFound(f"No batch {batch_id!r} exists.")
        if closing:
            self.scheduler.post(CloseBatch(batch_id))
        self.scheduler.post(Wake())  # a new priority or parallel count may free work now
        return updated

    def delete(self, who: Principal, batch_id: str, *, if_match: str | None = None) -> bool:
        """Delete a batch with its records, results and files, stopping it first if it runs.

        The batch is marked for deletion before anything else, and from then on it is gone for
        users: it is not found, not listed, and none of its chunks starts again. A finished
        batch is removed at once. One that is not finished is removed by the scheduler, once it
        has stopped the batch's workers, so that none writes a file after the removal; the call
        waits for that up to ``DELETE_WAIT_SECONDS``. True when the batch was removed, False when
        its removal goes on after the call (see :meth:`being_deleted`). A removal cut short by a
        crash is finished when the engine starts again. ``if_match`` (an etag) deletes it only if
        it has not changed since.
        """
        batch = self.get(who, batch_id)
        try:
            marked = self.store.mark_deleting(batch_id, expect_revision=revision(if_match))
        except RevisionMismatch as exc:
            raise stale(batch_id, if_match, exc.current) from None
        if not marked:
            raise _not_found(batch_id)  # a delete that came first marked it
        if BatchState(batch.state).is_final:  # none of its workers runs
            remove_batch(self.store, self.blobs, batch_id)
            return True
        self.scheduler.post(DeleteBatch(batch_id))
        deadline = time.monotonic() + DELETE_WAIT_SECONDS
        while self.store.get_batch(batch_id) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def being_deleted(self, who: Principal, batch_id: str) -> Batch | None:
        """A batch of ``who``'s whose deletion goes on (state ``deleting``); None once it is
        removed. Every other read says such a batch does not exist."""
        batch = self.store.get_batch(batch_id)
        if batch is None or batch.deleting_since is None:
            return None
        if not who.is_owner and batch.owner_id != who.id:
            return None
        return batch

    def _move(
        self,
        who: Principal,
        batch_id: str,
        wanted: BatchState,
        action: str,
        *,
        allowed_from: list[BatchState] | None = None,
        if_match: str | None = None,
        **fields: Any,
    ) -> Batch:
        """Move a batch for a user's ``action``; 409 naming the states that allow it when the
        batch is in another (``allowed_from``, by default every state the table allows), 412
        when ``if_match`` is given and the batch's etag is another.

        The scheduler may move the batch at the same moment (pending to running, say): the move
        is then tried again from the state it has now (with ``if_match``, that race is a 412:
        the batch changed since the etag was read).
        """
        expect = revision(if_match)
        for _ in range(MOVE_TRIES):
            batch = self.get(who, batch_id)
            check_etag(batch, if_match)  # a precondition is checked before all else
            try:
                if allowed_from is not None and batch.state not in allowed_from:
                    raise InvalidTransition("batch", batch.state, wanted.value, frozenset())
                moved = self.store.transition(
                    batch_id,
                    wanted,
                    only_from=[BatchState(batch.state)],
                    expect_revision=expect,
                    **fields,
                )
            except RevisionMismatch as exc:
                raise stale(batch_id, if_match, exc.current) from None
            except InvalidTransition:
                allowed = ", ".join(s.value for s in (allowed_from or states_allowing(wanted)))
                raise Conflict(
                    f"Cannot {action} batch {batch_id}: it is {batch.state}; {action} is "
                    f"allowed only when the batch is {allowed}.",
                    state=batch.state,
                ) from None
            if moved is not None:
                return moved
        raise Conflict(
            f"Batch {batch_id} kept changing state while {action!r} was being applied; read it "
            "again and retry."
        )

    def counts(self, batch_id: str) -> BatchCounts:
        return self.store.batch_counts(batch_id)


def _check_constraints(options: dict[str, Any]) -> None:
    """Check a batch's limits and texts; a clear 400 for a wrong one."""
    wall = options.get("max_wall_clock_time")
    if wall is not None and not (_seconds(wall) and wall > 0):
        raise BadRequest("max_wall_clock_time must be a number of seconds greater than 0.")
    retries = options.get("max_task_retry_count")
    if retries is not None and not (isinstance(retries, int) and retries >= -1):
        raise BadRequest(
            "max_task_retry_count must be a whole number: 0 for no retry, N for up to N "
            "retries of a failed record, -1 for no limit."
        )
    timeout = options.get("task_timeout")
    if timeout is not None and not (_seconds(timeout) and timeout > 0):
        raise BadRequest("task_timeout must be a number of seconds greater than 0.")
    if options.get("on_all_tasks_complete") not in (None, "noaction", "terminatejob"):
        raise BadRequest(
            "on_all_tasks_complete must be 'noaction' (an open batch: records may be added until "
            "it is closed) or 'terminatejob' (it completes once its records are done)."
        )
    for what in ("metadata", "environment"):
        for key, value in (options.get(what) or {}).items():
            check_text(key, f"The {what} key {key!r}")
            check_text(value, f"The {what} value of {key!r}")


def _check_parallel_count(value: int) -> int:
    """``value`` if it is a parallel count: at least 1, or -1 for no limit but the workers."""
    if isinstance(value, bool) or not isinstance(value, int) or not (value >= 1 or value == -1):
        raise BadRequest(
            f"parallel_count must be at least 1, or -1 for no limit but the workers; not {value!r}."
        )
    return value


def _seconds(value: Any) -> bool:
    """A finite number: an infinite limit is no limit (leave it out), and JSON cannot hold it."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch {batch_id!r} exists (or it is not yours to see).")


def _visible(who: Principal, batch_id: str, batch: Batch | None) -> Batch:
    """``batch`` if ``who`` may see it: its upload has finished, it is not being deleted, and it
    is theirs (an owner sees every batch)."""
    if (
        batch is None
        or not batch.sealed
        or batch.deleting_since is not None
        or (not who.is_owner and batch.owner_id != who.id)
    ):
        raise _not_found(batch_id)
    return batch
