"""The body of a worker process: confine itself, then run the tasks the server sends.

Each message from the server is a task (as JSON) with the descriptors of its files; the worker
answers with progress, artifacts and, at the end of the task, its result, all as data.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any

from batchserve.worker import sandbox
from batchserve.worker.channel import Channel
from batchserve.worker.grants import GrantedBlobs


def worker_main(sock: socket.socket, setup: dict[str, Any], progress_interval: float) -> None:
    sandbox.enter(setup)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    import pyarrow as pa

    from batchserve.engine.tasks import ChunkTask, LoadTask, ReleaseTask, task_from_wire
    from batchserve.worker.runtime import Runtime, warm_up

    pa.set_cpu_count(int(os.environ.get("OMP_NUM_THREADS") or 1))
    channel = Channel(sock)
    sending = threading.Lock()

    def send(document: dict[str, Any], payload: bytes = b"") -> None:
        try:
            with sending:
                channel.send(document, payload=payload)
        except OSError:  # the server is gone: nobody is waiting for this worker
            os._exit(0)

    def put_artifact(task: ChunkTask, index: int, name: str, data: bytes) -> None:
        send(
            {"type": "artifact", "task_id": task.task_id, "index": index, "name": name},
            payload=data,
        )

    warm_up()
    runtime = Runtime(GrantedBlobs({}, {}), scratch=setup["scratch"], artifacts=put_artifact)
    while True:
        try:
            message, fds, payload = channel.recv()
            channel.skip_payload(payload)
        except (EOFError, OSError):
            return
        if message.get("type") != "task":
            for fd in fds:
                os.close(fd)
            return
        granted = GrantedBlobs(
            {key: fds[i] for key, i in message["read"].items()},
            {key: fds[i] for key, i in message["append"].items()},
        )
        task = task_from_wire(message["task"])
        runtime.blobs = granted
        try:
            if isinstance(task, ChunkTask):

                def report(succeeded: int, failed: int, tid: str = task.task_id) -> None:
                    send(
                        {
                            "type": "progress",
                            "task_id": tid,
                            "succeeded": succeeded,
                            "failed": failed,
                        }
                    )

                result: dict[str, Any] = runtime.run_chunk(task, report, progress_interval)
            elif isinstance(task, LoadTask):
                runtime.load(task.service)
                result = {}
            elif isinstance(task, ReleaseTask):
                result = runtime.run_release(task)
            else:
                result = runtime.run_consume(task)
        except Exception as exc:  # an unreadable part file, a full disk: the task fails
            result = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            granted.close()
        send({"type": "finished", "task_id": task.task_id, "result": result})
