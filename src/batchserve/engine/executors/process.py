"""A supervised pool of local worker processes: the embedded default executor.

Each worker is a long-lived child process holding loaded services, fed one task at a time over
a pipe. One reader thread per worker turns its messages into events; when a worker dies (a
crash, an out-of-memory kill, or a stop on cancel) the reader reports its task as lost and a
fresh worker takes the slot. Workers start from a fork server, so a new one does not inherit
the API process's threads and starts fast.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from batchserve.engine.executors.base import EventSink
from batchserve.engine.tasks import ChunkTask, ConsumeTask, Finished, LoadTask, Lost, Progress

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1

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


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the process that started it goes away."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def worker_main(conn: Connection, blob_url: str, progress_interval: float) -> None:
    """The body of a worker process."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    import pyarrow as pa

    from batchserve.blobs import blob_store_from_url
    from batchserve.engine.runtime import Runtime, warm_up

    pa.set_cpu_count(int(os.environ.get("OMP_NUM_THREADS") or 1))
    warm_up()
    runtime = Runtime(blob_store_from_url(blob_url))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            if isinstance(task, ChunkTask):
                tid = task.task_id

                def report(succeeded: int, failed: int, tid: str = tid) -> None:
                    try:
                        conn.send(Progress(tid, succeeded, failed))
                    except OSError:  # the server is gone
                        os._exit(0)

                result: dict[str, Any] = runtime.run_chunk(task, report, progress_interval)
            elif isinstance(task, LoadTask):
                runtime.load(task.service)
                result = {}
            else:
                result = runtime.run_consume(task)
        except Exception as exc:  # an unreadable part file, a full disk: the task fails
            result = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            conn.send(Finished(task.task_id, result))
        except OSError:  # the server is gone: nobody is waiting for the result
            return


@dataclass
class _Slot:
    number: int
    process: Any = None
    conn: Connection | None = None
    task_id: str | None = None
    task_info: dict[str, Any] = field(default_factory=dict)
    stopping: bool = False


class ProcessExecutor:
    def __init__(
        self, workers: int, blob_url: str, sink: EventSink, progress_interval: float = 0.25
    ) -> None:
        self._n = workers
        self._blob_url = blob_url
        self._sink = sink
        self._progress_interval = progress_interval
        self._ctx = mp.get_context("forkserver")
        # pandas too: pyarrow imports it on first use (about 0.25 s), which would otherwise be
        # paid by every new worker's first task, after each cancel and crash as well.
        self._ctx.set_forkserver_preload(["batchserve.engine.runtime", "pandas"])
        self._slots = [_Slot(i) for i in range(workers)]
        self._lock = threading.RLock()
        self._closing = False

    def start(self) -> None:
        # Read by the native libraries when they load, in the fork server (which preloads
        # numpy) and so in every worker forked from it: set before the first worker starts.
        threads = str(threads_per_worker(self._n))
        for name in THREAD_VARIABLES:
            os.environ.setdefault(name, threads)
        for name, value in MEMORY_VARIABLES.items():
            os.environ.setdefault(name, value)
        for slot in self._slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main,
            name=f"batchserve-worker-{slot.number}",
            args=(child, self._blob_url, self._progress_interval),
            daemon=True,
        )
        proc.start()
        child.close()
        slot.process, slot.conn, slot.task_id, slot.stopping = proc, parent, None, False
        threading.Thread(
            target=self._read,
            args=(slot, proc, parent),
            daemon=True,
            name=f"batchserve-worker-reader-{slot.number}",
        ).start()

    def _read(self, slot: _Slot, proc: Any, conn: Connection) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(msg, Finished):
                with self._lock:
                    if slot.process is proc:
                        slot.task_id = None
                        slot.task_info = {}
            self._sink(msg)
        proc.join(timeout=5)
        with self._lock:
            if slot.process is not proc:
                return
            task_id, stopped = slot.task_id, slot.stopping
            slot.task_id, slot.task_info = None, {}
            if not self._closing:
                try:
                    self._spawn(slot)
                except Exception:  # the fork server is gone: the process is shutting down
                    log.exception("could not start a new worker")
        if task_id is not None:
            reason = (
                "stopped" if stopped else f"the worker process died (exit code {proc.exitcode})"
            )
            self._sink(Lost(task_id, reason, stopped))

    def shutdown(self) -> None:
        with self._lock:
            self._closing = True
            slots = list(self._slots)
        for slot in slots:
            with contextlib.suppress(Exception):
                slot.conn.send(None)  # type: ignore[union-attr]
        for slot in slots:
            if slot.process is not None:
                slot.process.join(timeout=1)
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join(timeout=2)

    def capacity(self) -> int:
        return self._n

    def free_slots(self) -> int:
        with self._lock:
            return sum(1 for s in self._slots if s.task_id is None and not s.stopping)

    def submit(self, task: ChunkTask | ConsumeTask | LoadTask) -> None:
        with self._lock:
            slot = next((s for s in self._slots if s.task_id is None and not s.stopping), None)
            if slot is None:
                raise RuntimeError("no free worker")
            slot.task_id = task.task_id
            if isinstance(task, ChunkTask):
                slot.task_info = {"batch_id": task.batch_id, "chunk_id": task.chunk_id}
            elif isinstance(task, LoadTask):
                slot.task_info = {"loading": task.service.key}
            else:
                slot.task_info = {"consume": True}
            conn = slot.conn
        assert conn is not None
        conn.send(task)

    def stop_task(self, task_id: str) -> bool:
        with self._lock:
            slot = next((s for s in self._slots if s.task_id == task_id), None)
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
                    "busy": s.task_id is not None,
                    "task": s.task_id,
                    **s.task_info,
                }
                for s in self._slots
            ]
