"""A supervised pool of local worker processes: the embedded default executor.

Each worker is a long-lived child process holding loaded services, fed one task at a time over
a Unix socket (:mod:`batchserve.worker.channel`: JSON messages, the task's files as open
descriptors). One reader thread per worker turns its messages into events, checking them as
the untrusted input they are; when a worker dies (a crash, an out-of-memory kill, or a stop on
cancel) the reader reports its task as lost and a fresh worker takes the slot. Workers start
from a fork server, so a new one does not inherit the API process's threads and starts fast;
on Linux the fork server runs in the workers' sandbox (:mod:`batchserve.worker.sandbox`).

A worker process only ever runs the code of one publisher: a slot whose worker ran another
publisher's services is given a fresh worker first, so no service can find, in its process,
what another publisher's code was handed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchserve.blobs import keys
from batchserve.engine.tasks import (
    ChunkTask,
    ConsumeTask,
    Finished,
    LoadTask,
    Lost,
    Progress,
    ReleaseTask,
    ServiceSpec,
    Task,
    chunk_result,
    consume_result,
    release_task_of,
    task_to_wire,
)
from batchserve.executors.base import EventSink
from batchserve.worker.channel import Channel, ChannelError
from batchserve.worker.sandbox import WorkerSandbox

log = logging.getLogger(__name__)

#: The variables that size the thread pools of native numeric libraries (OpenMP, OpenBLAS, MKL,
#: and the like), which otherwise each start as many threads as the machine has cores, in every
#: worker: N workers then run N times that many threads on the cores, and spin against each
#: other. Workers get the machine's cores shared out among them, unless the variable is set.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


#: Memory that a worker frees is kept for its next chunk, rather than given back to the system
#: and faulted in again page by page: chunks of a batch need the same amounts over and over, and
#: where page faults are costly (virtual machines, sandboxes) that costs more than the work.
#: glibc's malloc (Python, numpy) and mimalloc (pyarrow's allocator) read these at start.
MEMORY_VARIABLES = {
    "MALLOC_MMAP_THRESHOLD_": str(256 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MIMALLOC_PURGE_DELAY": "-1",
}

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def slots_for(spec: ServiceSpec, capacity: int) -> int:
    """The local slots one worker of a service takes: its num_cpus, rounded up."""
    cpus = float(spec.resources.get("num_cpus") or 1) if spec.resources else 1.0
    return max(1, min(capacity, math.ceil(cpus)))


def artifact_problem(task: Task, index: object, name: object) -> str | None:
    """Why a worker may not write this artifact, or None: a task writes only under its own
    batch, for a record of its chunk, files its service declared, with plain names."""
    ok = (
        isinstance(task, ChunkTask)
        and isinstance(index, int)
        and task.start_index <= index < task.start_index + task.count
        and isinstance(name, str)
        and name in task.service.artifacts
        and _SAFE_NAME.match(name) is not None
    )
    return None if ok else f"an artifact {name!r} of record {index!r} it may not write"


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def worker_environment(workers: int) -> dict[str, str]:
    """The variables every worker starts with (besides PATH, HOME and the like): the thread
    caps and the allocator settings, as the server's own environment sets them or by default."""
    threads = str(threads_per_worker(workers))
    env = {name: os.environ.get(name, threads) for name in THREAD_VARIABLES}
    env.update({name: os.environ.get(name, value) for name, value in MEMORY_VARIABLES.items()})
    return env


class GrantingBlobStore(Protocol):
    """What the pool needs of the blob store: descriptors of its files for the workers."""

    def grant_read(self, key: str) -> int: ...

    def grant_append(self, key: str) -> int: ...

    def open_write(self, key: str) -> Any: ...


@dataclass
class _Slot:
    number: int
    process: Any = None
    channel: Channel | None = None
    setup: dict[str, Any] = field(default_factory=dict)
    task: Task | None = None
    task_info: dict[str, Any] = field(default_factory=dict)
    publisher: str | None = None  # whose code the worker has run, once it ran any
    stopping: bool = False
    generation: int = 0
    # The task this idle worker is kept free for: a service asking for num_cpus = N takes N
    # slots, one running it and the others held, so no more workers run than there are cores.
    held_for: str | None = None
    # The job releases this worker owes, by batch, for batches it ran chunks of; and those due
    # (their batch ended) that wait for it to finish its task.
    releases: dict[str, ReleaseTask] = field(default_factory=dict)
    due: list[ReleaseTask] = field(default_factory=list)


class ProcessExecutor:
    def __init__(
        self,
        workers: int,
        blobs: GrantingBlobStore,
        sink: EventSink,
        sandbox: WorkerSandbox,
        progress_interval: float = 0.25,
    ) -> None:
        self._n = workers
        self._blobs = blobs
        self._sink = sink
        self._sandbox = sandbox
        self._progress_interval = progress_interval
        self._ctx = mp.get_context("forkserver")
        # pandas too: pyarrow imports it on first use (about 0.25 s), which would otherwise be
        # paid by every new worker's first task, after each cancel and crash as well.
        self._ctx.set_forkserver_preload(
            ["batchserve.worker.main", "batchserve.worker.runtime", "pandas"]
        )
        self._slots = [_Slot(i) for i in range(workers)]
        self._lock = threading.RLock()
        self._closing = False

    def start(self) -> None:
        env = worker_environment(self._n)
        self._sandbox = self._sandbox.with_env(env)
        executable = self._sandbox.executable()
        if executable is not None:
            self._ctx.set_executable(executable)
        else:
            # Read by the native libraries when they load, in the fork server (which preloads
            # numpy) and so in every worker forked from it: set before the first one starts.
            for name, value in env.items():
                os.environ.setdefault(name, value)
        for slot in self._slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        slot.generation += 1
        setup = self._sandbox.prepare_slot(slot.number, slot.generation)
        ours, theirs = socket.socketpair()
        from batchserve.worker.main import worker_main

        proc = self._ctx.Process(
            target=worker_main,
            name=f"batchserve-worker-{slot.number}",
            args=(theirs, setup, self._progress_interval),
            daemon=True,
        )
        try:
            proc.start()
        finally:
            theirs.close()
        channel = Channel(ours)
        slot.process, slot.channel, slot.setup = proc, channel, setup
        slot.task, slot.task_info, slot.publisher, slot.stopping = None, {}, None, False
        # A new worker owes nothing: what a preparation set up died with the worker before it.
        slot.releases, slot.due = {}, []
        threading.Thread(
            target=self._read,
            args=(slot, proc, channel, setup),
            daemon=True,
            name=f"batchserve-worker-reader-{slot.number}",
        ).start()

    # --- what workers say -------------------------------------------------------------------

    def _read(self, slot: _Slot, proc: Any, channel: Channel, setup: dict[str, Any]) -> None:
        while True:
            try:
                message, fds, payload = channel.recv()
                for fd in fds:  # a worker has no business sending files
                    os.close(fd)
                self._heard(slot, proc, channel, message, payload)
            except (EOFError, OSError):
                break
            except (ChannelError, ValueError, TypeError, KeyError) as exc:
                log.warning("worker %s broke the protocol (%s); stopping it", proc.pid, exc)
                with contextlib.suppress(Exception):
                    proc.kill()
                break
        proc.join(timeout=5)
        channel.close()
        self._sandbox.release_slot(setup)
        with self._lock:
            if slot.process is not proc:
                return
            task, stopped = slot.task, slot.stopping
            slot.task, slot.task_info = None, {}
            if task is not None:
                self._release(task.task_id)
            if not self._closing:
                try:
                    self._spawn(slot)
                except Exception:  # the fork server is gone: the process is shutting down
                    log.exception("could not start a new worker")
        if isinstance(task, ReleaseTask):
            log.warning("the worker running the job release of batch %s died", task.batch_id)
        elif task is not None:
            reason = (
                "stopped" if stopped else f"the worker process died (exit code {proc.exitcode})"
            )
            self._sink(Lost(task.task_id, reason, stopped))

    def _heard(
        self, slot: _Slot, proc: Any, channel: Channel, message: dict[str, Any], payload: int
    ) -> None:
        with self._lock:
            task = slot.task if slot.process is proc else None
        kind = message.get("type")
        if task is None or message.get("task_id") != task.task_id:
            channel.skip_payload(payload)  # about a task that is over: nothing to do
            return
        if kind == "artifact":
            self._keep_artifact(task, message, channel, payload)
            return
        channel.skip_payload(payload)
        if kind == "progress" and isinstance(task, ChunkTask):
            succeeded, failed = message["succeeded"], message["failed"]
            if not all(isinstance(v, int) and 0 <= v <= task.count for v in (succeeded, failed)):
                raise ValueError(f"progress counts out of range: {succeeded}, {failed}")
            self._sink(Progress(task.task_id, succeeded, failed))
        elif kind == "finished" and isinstance(task, ReleaseTask):
            raw = message.get("result")
            if isinstance(raw, dict) and raw.get("error"):
                log.warning(
                    "the job release of batch %s failed in worker %s: %s",
                    task.batch_id,
                    proc.pid,
                    str(raw["error"])[:2000],
                )
            else:
                log.info("ran the job release of batch %s in worker %s", task.batch_id, proc.pid)
            with self._lock:
                if slot.process is proc:
                    slot.task, slot.task_info = None, {}
                    self._send_due(slot)
        elif kind == "finished":
            raw = message.get("result")
            if isinstance(task, ChunkTask):
                result = chunk_result(raw, task.count)
            elif isinstance(task, ConsumeTask):
                spec = task.service
                result = consume_result(raw, spec.outputs, spec.artifacts)
            else:
                result = {}
            with self._lock:
                if slot.process is proc:
                    slot.task, slot.task_info = None, {}
                    self._send_due(slot)
                self._release(task.task_id)
            self._sink(Finished(task.task_id, result))
        else:
            raise ValueError(f"unknown message {kind!r}")

    def _keep_artifact(
        self, task: Task, message: dict[str, Any], channel: Channel, payload: int
    ) -> None:
        """Write an artifact a worker produced, where the server decides: under the task's own
        batch, for a record of the task, by a name the service declared."""
        index, name = message.get("index"), message.get("name")
        problem = artifact_problem(task, index, name)
        if problem:
            raise ValueError(problem)
        assert isinstance(task, ChunkTask) and isinstance(index, int) and isinstance(name, str)
        key = keys.artifact_key(task.batch_id, index, name, task.attempt)
        with self._blobs.open_write(key) as f:
            channel.read_payload(payload, f)

    # --- the pool ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        with self._lock:
            self._closing = True
            slots = list(self._slots)
        for slot in slots:
            with contextlib.suppress(Exception):
                slot.channel.send({"type": "stop"})  # type: ignore[union-attr]
        for slot in slots:
            if slot.process is not None:
                slot.process.join(timeout=1)
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join(timeout=2)
        self._sandbox.close()

    def describe(self) -> str:
        return self._sandbox.describe()

    def capacity(self) -> int:
        return self._n

    def free_slots(self) -> int:
        with self._lock:
            return sum(1 for s in self._free())

    def _free(self) -> list[_Slot]:
        return [s for s in self._slots if s.task is None and not s.stopping and not s.held_for]

    def slots_for(self, spec: ServiceSpec) -> int:
        return slots_for(spec, self._n)

    def check_resources(self, resources: dict[str, Any]) -> str | None:
        cpus = float(resources.get("num_cpus") or 1)
        if cpus > self._n:
            return (
                f"this server runs {self._n} worker(s); a service cannot ask for more CPUs "
                f"(num_cpus {cpus:g}). Ask for at most {self._n}, or start the server with "
                "more --workers."
            )
        return None

    def unavailable(self, resources: dict[str, Any]) -> str | None:
        return None  # a chunk takes at most every worker of the pool: it can always run

    def _release(self, task_id: str) -> None:
        for s in self._slots:
            if s.held_for == task_id:
                s.held_for = None

    def submit(self, task: ChunkTask | ConsumeTask | LoadTask) -> None:
        publisher = task.service.publisher
        with self._lock:
            free = self._free()
            # A chunk takes the slots of its service's CPUs; one record (a consume, a load) one.
            needed = self.slots_for(task.service) if isinstance(task, ChunkTask) else 1
            if len(free) < needed:
                raise RuntimeError("no free worker")
            # A worker that ran this publisher's code, then one that ran nobody's; else a fresh
            # worker in place of one that ran someone else's.
            slot = next((s for s in free if s.publisher == publisher), None) or next(
                (s for s in free if s.publisher is None), None
            )
            if slot is None:
                slot = free[0]
                self._recycle(slot)
            slot.task, slot.publisher = task, publisher
            for other in [s for s in free if s is not slot][: needed - 1]:
                other.held_for = task.task_id
            if isinstance(task, ChunkTask):
                slot.task_info = {"batch_id": task.batch_id, "chunk_id": task.chunk_id}
                if task.release_key:
                    slot.releases[task.batch_id] = release_task_of(task)
            elif isinstance(task, LoadTask):
                slot.task_info = {"loading": task.service.key}
            else:
                slot.task_info = {"consume": True}
            channel = slot.channel
        assert channel is not None
        self._send(channel, task)

    # --- job releases ------------------------------------------------------------------------

    def owed_releases(self) -> set[str]:
        """The batches whose job release some worker here owes, once they end."""
        with self._lock:
            return {batch_id for s in self._slots for batch_id in s.releases}

    def release(self, batch_id: str) -> None:
        """The batch ended: each worker that owes its release runs it, now if it is idle, else
        once its task is over."""
        with self._lock:
            for slot in self._slots:
                task = slot.releases.pop(batch_id, None)
                if task is not None:
                    slot.due.append(task)
                    if slot.task is None and not slot.stopping and not slot.held_for:
                        self._send_due(slot)

    def _send_due(self, slot: _Slot) -> None:
        """Give an idle worker its next due release (called with the lock held)."""
        if not slot.due or slot.channel is None:
            return
        task = slot.due.pop(0)
        slot.task, slot.task_info = task, {"batch_id": task.batch_id, "releasing": True}
        self._send(slot.channel, task)

    def _recycle(self, slot: _Slot) -> None:
        """Replace the slot's idle worker by a fresh one (called with the lock held)."""
        old, old_channel = slot.process, slot.channel
        self._spawn(slot)
        with contextlib.suppress(Exception):
            old.kill()
        with contextlib.suppress(Exception):
            old_channel.close()  # type: ignore[union-attr]

    def _send(self, channel: Channel, task: Task) -> None:
        """Send a task with the descriptors of its files: read-only ones for its bundle and
        parts, and its new result file to append to."""
        fds: list[int] = []
        read: dict[str, int] = {}
        append: dict[str, int] = {}
        try:
            if isinstance(task, ReleaseTask):
                wanted = [task.release_key]
            else:
                wanted = [task.service.bundle_key]
            if isinstance(task, ChunkTask):
                wanted += [p.key for p in task.parts]
                if task.preparation_key:
                    wanted.append(task.preparation_key)
            for key in wanted:
                if key in read:
                    continue
                try:
                    fds.append(self._blobs.grant_read(key))
                except KeyError:
                    continue  # missing: the worker reports it as the task's error
                read[key] = len(fds) - 1
            if isinstance(task, ChunkTask):
                fds.append(self._blobs.grant_append(task.result_key))
                append[task.result_key] = len(fds) - 1
            message = {"type": "task", "task": task_to_wire(task), "read": read, "append": append}
            channel.send(message, fds)
        except OSError:
            # The worker is gone; its reader reports the task as lost.
            log.debug("could not send a task to a worker that is gone", exc_info=True)
        finally:
            for fd in fds:
                os.close(fd)

    def stop_task(self, task_id: str) -> bool:
        with self._lock:
            slot = next((s for s in self._slots if s.task and s.task.task_id == task_id), None)
            if slot is None:
                return False
            slot.stopping = True
            proc = slot.process
        proc.kill()
        proc.join(timeout=5)
        return True

    def workers(self) -> list[dict[str, object]]:
        with self._lock:
            return [
                {
                    "slot": s.number,
                    "pid": s.process.pid if s.process else None,
                    "busy": s.task is not None,
                    "task": s.task.task_id if s.task else None,
                    **s.task_info,
                }
                for s in self._slots
            ]
