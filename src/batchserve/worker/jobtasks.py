"""A batch's job preparation and release, inside a worker process: Azure Batch's job
preparation and release tasks, as Python functions.

The preparation runs once in each worker before that worker's first chunk of the batch (to
fetch a reference file, warm a cache, open a connection); the release runs once in each worker
that ran chunks of the batch, after the batch has ended (to clean up). Both run in the batch's
job folder, a folder of the worker's scratch space kept from the preparation to the release,
whose path the preparation, the batch's records and the release all find in the environment
variable ``BATCHSERVE_JOB_DIR``; it is removed after the release.

A preparation that fails is not remembered as done: the worker's next chunk of the batch tries
it again. Every record of a chunk whose preparation failed fails with its error, so the batch's
failure mode (``task_failure_mode``, ``max_failed_records``) decides what happens next.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import time
from collections.abc import Callable
from typing import Any

import cloudpickle

from batchserve.blobs import BlobNotFound, BlobStore
from batchserve.engine.tasks import ChunkTask, ReleaseTask
from batchserve.worker.bundles import BundleError

#: The variable that holds the batch's job folder, for its preparation, records and release.
JOB_DIR_VARIABLE = "BATCHSERVE_JOB_DIR"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class PreparationFailed(BundleError):
    """The batch's job preparation failed in this worker: every record of the chunk fails."""


def load_job_task(data: bytes) -> Callable[[], Any]:
    """The function of a job task's bundle (a cloudpickled ``{"code": ...}`` made by the SDK):
    a function called without arguments, or Python source run as a script."""
    bundle = cloudpickle.loads(data)
    if not isinstance(bundle, dict) or "code" not in bundle:
        raise ValueError("not a batchserve job task bundle")
    code = bundle["code"]
    if isinstance(code, str):
        compiled = compile(code, "<job task>", "exec")
        return lambda: exec(compiled, {"__name__": "__batchserve_job_task__"})
    if not callable(code):
        raise ValueError("the job task's code is neither a function nor source text")
    return code


class JobTasks:
    """The job preparations and releases of one worker process."""

    def __init__(self, scratch: str) -> None:
        self._scratch = scratch
        self._prepared: set[str] = set()
        self.seconds = 0.0  # spent preparing, in all: a once-per-worker cost, like a load

    def job_dir(self, batch_id: str) -> str:
        path = os.path.join(self._scratch, "jobs", _UNSAFE.sub("_", batch_id)[:200])
        os.makedirs(path, exist_ok=True)
        return path

    def environment(self, task: ChunkTask) -> dict[str, str]:
        """The variables the chunk's records run with: the batch's, and its job folder when the
        batch has a preparation or a release."""
        if not (task.preparation_key or task.release_key):
            return task.environment
        return {**task.environment, JOB_DIR_VARIABLE: self.job_dir(task.batch_id)}

    def prepare(self, task: ChunkTask, blobs: BlobStore) -> PreparationFailed | None:
        """Run the batch's preparation if this worker has not yet done so; its failure, if any."""
        key = task.preparation_key
        if not key or task.batch_id in self._prepared:
            return None
        began = time.perf_counter()
        try:
            error = self._run(key, task.batch_id, self.environment(task), blobs)
        finally:
            self.seconds += time.perf_counter() - began
        if error is not None:
            return PreparationFailed(
                f"The batch's job preparation failed on this worker, so its records did not "
                f"run: {error}"
            )
        self._prepared.add(task.batch_id)
        return None

    def release(self, task: ReleaseTask, blobs: BlobStore) -> dict[str, Any]:
        """Run the batch's release, then remove its job folder; ``{"error": ...}`` if it failed."""
        variables = {**task.environment, JOB_DIR_VARIABLE: self.job_dir(task.batch_id)}
        try:
            error = self._run(task.release_key, task.batch_id, variables, blobs)
        finally:
            self._prepared.discard(task.batch_id)
            shutil.rmtree(variables[JOB_DIR_VARIABLE], ignore_errors=True)
        return {} if error is None else {"error": error}

    def _run(
        self, key: str, batch_id: str, variables: dict[str, str], blobs: BlobStore
    ) -> str | None:
        """Run a job task's code in the batch's job folder, with ``variables`` set; what went
        wrong (with the end of what it printed), or None."""
        from batchserve.worker.runtime import _environment

        console = io.StringIO()
        cwd = os.getcwd()
        try:
            function = load_job_task(blobs.read_bytes(key))
            os.chdir(variables[JOB_DIR_VARIABLE])
            with _environment(variables), contextlib.redirect_stdout(console):
                function()
        except BlobNotFound:
            return "its code is missing from the blob store (was the batch deleted?)"
        except Exception as exc:
            printed = console.getvalue().strip()
            tail = f" (it printed: {printed[-2000:]})" if printed else ""
            return f"{type(exc).__name__}: {exc}{tail}"
        finally:
            os.chdir(cwd)
        return None
