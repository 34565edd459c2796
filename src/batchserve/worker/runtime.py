"""The service runtime, inside a worker process: run records, write results and artifacts.

This module is what worker processes import; it never touches the metadata store. A chunk's
inputs are a range of records read from the upload parts in the blob store; its results go to a
result stream file and its artifacts under the batch's folder; the scheduler only hears counts
and statistics.

Row mode has two paths with the same results: a service without artifacts runs a chunk in one
tight loop (:mod:`batchserve.worker.rows`); one with artifacts needs a working directory per
record, so its records run one by one (:meth:`Runtime.run_record`). Vectorized mode calls the
service with a DataFrame of the chunk, and handles inputs and outputs as columns
(:mod:`batchserve.worker.frames`). Failed tries are retried and long ones stopped as the batch's
limits say (:mod:`batchserve.worker.tries`).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import resource
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from batchserve.blobs import BlobNotFound, BlobStore, keys
from batchserve.blobs.segments import open_stream_writer
from batchserve.engine.inputs import read_range
from batchserve.engine.results import STATUS_SUCCEEDED, ResultWriter, failed_row, read_results
from batchserve.engine.tasks import ChunkTask, ConsumeTask, ReleaseTask, ServiceSpec
from batchserve.schema import ARROW_TYPES, SchemaError, coerce, coerce_record
from batchserve.worker import bundles
from batchserve.worker.frames import run_frames
from batchserve.worker.jobtasks import JobTasks, PreparationFailed
from batchserve.worker.rows import (
    MAX_CONSOLE_CHARS,
    Progress,
    console_text,
    input_columns,
    run_rows,
)
from batchserve.worker.tries import TaskTimeout, TryLimits, describe_failure

__all__ = ["FLUSH_INTERVAL", "MAX_CONSOLE_CHARS", "Runtime", "TaskTimeout", "artifact_key"]

FLUSH_INTERVAL = 0.02  # seconds of finished records a stopped chunk may lose at most


artifact_key = keys.artifact_key


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """Set a batch's environment variables for the service code, and put back the old ones."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def warm_up() -> None:
    """Pay the first-use costs of the chunk path (lazy imports, pyarrow's compute kernels, the
    IPC readers and writers) when a worker starts, rather than in its first chunk, where they
    would be taken for the cost of that chunk's records."""
    table = pa.table({"x": [1.0, 2.0], "s": ["a", None]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    part = pa.ipc.open_file(sink.getvalue())
    batch = pa.Table.from_batches([part.get_batch(0).slice(0, 2)])
    input_columns(batch, {"x": "float", "s": "str"})
    out = io.BytesIO()
    writer = ResultWriter(out, {"y": "float"})
    writer.add_columns(
        0,
        [[1.0, None]],
        np.array([0.5, 0.5]),
        1,
        failures={1: ("failed", "ValueError")},
        consoles={0: "printed"},
        retries={0: 1},
    )
    writer.flush()
    read_results(out.getvalue(), {"y": "float"})


class Runtime:
    """Loads services (once per process each) and runs records for one worker process."""

    def __init__(
        self,
        blobs: BlobStore,
        scratch: str | None = None,
        cache_size: int = 4,
        artifacts: Callable[[ChunkTask, int, str, bytes], None] | None = None,
    ) -> None:
        self.blobs = blobs
        # Where a record's artifact goes: by default into the blob store; a sandboxed worker
        # hands it to the server instead, which decides where it is kept.
        self.put_artifact = artifacts or self._store_artifact
        self._cache: OrderedDict[str, bundles.LoadedService | bundles.BundleError] = OrderedDict()
        self._cache_size = cache_size
        self.scratch = scratch or tempfile.mkdtemp(prefix="batchserve-worker-")
        os.makedirs(self.scratch, exist_ok=True)
        self.load_seconds = 0.0  # spent loading services, in all
        self.jobs = JobTasks(self.scratch)  # the batches' job preparations and releases

    def service(self, spec: ServiceSpec) -> bundles.LoadedService:
        """The loaded service; init runs on first use. A failed load is remembered and re-raised."""
        if spec.key not in self._cache:
            began = time.perf_counter()
            try:
                data = self.blobs.read_bytes(spec.bundle_key)
                self._cache[spec.key] = bundles.load(data, spec.outputs)
            except BlobNotFound:
                self._cache[spec.key] = bundles.BundleError(
                    f"the service bundle {spec.bundle_key} is missing from the blob store"
                )
            except bundles.BundleError as exc:
                self._cache[spec.key] = exc
            self.load_seconds += time.perf_counter() - began
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(spec.key)
        loaded = self._cache[spec.key]
        if isinstance(loaded, bundles.BundleError):
            raise loaded
        return loaded

    def load(self, spec: ServiceSpec) -> None:
        """Load a service ahead of its records; a failed load is remembered for them to report."""
        with contextlib.suppress(bundles.BundleError):
            self.service(spec)

    def run_record(
        self,
        spec: ServiceSpec,
        raw_inputs: dict[str, Any],
        *,
        index: int,
        artifact_sink: Callable[[int, str, bytes], None] | None,
        checked: frozenset[str] = frozenset(),
        limits: TryLimits | None = None,
        attempt: int = 1,
        heartbeat: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Run one record: check inputs, call the service, check outputs, collect artifacts.

        ``checked`` names inputs whose values are known to have the declared type already (a
        column of the declared Arrow type without nulls), which skips their per-value check.
        A failed call is tried again as ``limits`` allow, each try in a fresh working directory;
        the row holds the last try's outputs or error, console output and artifacts, and
        ``attempts``: ``attempt`` plus the tries after the first. ``heartbeat`` is called after
        each failed try.
        """
        limits = limits or TryLimits()
        started = time.perf_counter()
        try:
            if checked:
                inputs = {
                    n: raw_inputs[n] if n in checked else coerce(raw_inputs.get(n), t, n)
                    for n, t in spec.inputs.items()
                }
            else:
                inputs = coerce_record(raw_inputs, spec.inputs)
            service = self.service(spec)
        except (SchemaError, bundles.BundleError) as exc:
            row = failed_row(index, *describe_failure(exc), attempt, "")
            row["duration_ms"] = (time.perf_counter() - started) * 1000.0
            return row
        call = limits.limit(service.call_one_row if spec.mode == "vectorized" else service.call)
        tries = 0
        while True:
            tries += 1
            console = io.StringIO()
            workdir = tempfile.mkdtemp(dir=self.scratch) if spec.artifacts else None
            try:
                outputs = self._try_record(call, inputs, spec.outputs, console, workdir)
                error: BaseException | None = None
            except (Exception, TaskTimeout) as exc:
                error = exc
            if error is None or not limits.again(tries, error):
                break
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
            if heartbeat is not None:
                heartbeat()
        if error is None:
            row = {"index": index, "status": STATUS_SUCCEEDED, "outputs": outputs}
        else:
            row = failed_row(index, *describe_failure(error), attempt)
        row["attempts"] = attempt + tries - 1
        row["artifacts"] = []
        if workdir is not None:
            for name in spec.artifacts:
                path = os.path.join(workdir, name)
                if os.path.isfile(path):
                    with open(path, "rb") as f:
                        data = f.read()
                    if artifact_sink is not None:
                        artifact_sink(index, name, data)
                    row["artifacts"].append(name)
            shutil.rmtree(workdir, ignore_errors=True)
        row["console_output"] = console_text(console.getvalue())
        row["duration_ms"] = (time.perf_counter() - started) * 1000.0
        return row

    @staticmethod
    def _try_record(
        call: Callable[[dict[str, Any]], dict[str, Any]],
        inputs: dict[str, Any],
        outputs: dict[str, str],
        console: io.StringIO,
        workdir: str | None,
    ) -> dict[str, Any]:
        cwd = os.getcwd() if workdir is not None else ""
        try:
            if workdir is not None:
                os.chdir(workdir)  # a record's files are its own
            with contextlib.redirect_stdout(console):
                raw = call(inputs)
        finally:
            if workdir is not None:
                os.chdir(cwd)
        return {n: coerce(raw.get(n), t, n, kind="output") for n, t in outputs.items()}

    def run_chunk(
        self, task: ChunkTask, report: Callable[[int, int], None], progress_interval: float = 0.25
    ) -> dict[str, Any]:
        """Run every record of a chunk; returns its counts and statistics.

        The keys are those of :class:`~batchserve.engine.tasks.Finished`: ``succeeded``,
        ``failed``, ``retried``, ``timed_out``, ``cpu_user``, ``cpu_system``, ``bytes_in``,
        ``bytes_out``. Results are flushed to the result file often (every ``FLUSH_INTERVAL``
        seconds), so a chunk stopped by a cancel keeps nearly every record it finished; the
        counts of flushed records go to ``report`` every ``progress_interval`` seconds.
        """
        spec = task.service
        began = time.perf_counter()
        loaded = self.load_seconds
        usage = resource.getrusage(resource.RUSAGE_SELF)
        what = "call" if spec.mode == "vectorized" else "record"
        limits = TryLimits(task.max_task_retry_count, task.task_timeout, what)
        # The batch's preparation, once per worker: like a service's load, not the chunk's cost.
        prepared = self.jobs.seconds
        unprepared = self.jobs.prepare(task, self.blobs)
        self.load_seconds += self.jobs.seconds - prepared

        def ready() -> bundles.LoadedService:
            if unprepared is not None:
                raise unprepared
            return self.service(spec)

        table, bytes_in = read_range(self.blobs, task.parts, task.start_index, task.count)
        writer = ResultWriter(open_stream_writer(self.blobs, task.result_key), spec.outputs)
        try:
            with _environment(self.jobs.environment(task)), limits:
                progress = Progress(writer, report, progress_interval)
                # What the records take: their columns made ready, the calls, their results
                # written. The rest of the task (the range read, files opened and closed) is
                # what a chunk costs around them: a few milliseconds, which would drown the
                # records' own time in a small chunk.
                running = time.perf_counter()
                if spec.artifacts and spec.mode != "vectorized":
                    succeeded, failed, _ = self._run_records(
                        task, table, writer, limits, progress, unprepared
                    )
                else:
                    run = run_frames if spec.mode == "vectorized" else run_rows
                    succeeded, failed, _ = run(
                        task,
                        table,
                        ready,
                        writer,
                        limits,
                        progress,
                        FLUSH_INTERVAL,
                    )
                running = time.perf_counter() - running
        finally:
            writer.close()
        spent = resource.getrusage(resource.RUSAGE_SELF)
        load = self.load_seconds - loaded
        return {
            "succeeded": succeeded,
            "failed": failed,
            "retried": limits.retried,
            "timed_out": limits.timed_out,
            # getrusage rather than os.times(): the same figures, in microseconds, not ticks
            "cpu_user": spent.ru_utime - usage.ru_utime,
            "cpu_system": spent.ru_stime - usage.ru_stime,
            "bytes_in": bytes_in,
            "bytes_out": writer.bytes_written,
            "run_seconds": time.perf_counter() - began - load,
            "records_seconds": max(running - load, 0.0),
            "load_seconds": load,
        }

    def _run_records(
        self,
        task: ChunkTask,
        table: pa.Table,
        writer: ResultWriter,
        limits: TryLimits,
        progress: Progress,
        unprepared: PreparationFailed | None = None,
    ) -> tuple[int, int, float]:
        """Row mode with artifacts: records one by one, each in its own working directory.
        Returns (succeeded, failed, seconds running them). With ``unprepared`` (the batch's
        preparation failed here) every record fails with it, unrun."""
        spec = task.service
        if unprepared is not None:
            message, kind = describe_failure(unprepared)
            for offset in range(table.num_rows):
                writer.add(failed_row(task.start_index + offset, message, kind, task.attempt, ""))
            return 0, table.num_rows, 0.0
        columns = [c for c in spec.inputs if c in table.column_names]
        checked = frozenset(
            c
            for c in columns
            if table.schema.field(c).type == ARROW_TYPES[spec.inputs[c]]
            and table.column(c).null_count == 0
        )
        records = table.select(columns).to_pylist()

        def sink(index: int, name: str, data: bytes) -> None:
            self.put_artifact(task, index, name, data)

        succeeded = failed = 0
        began = last_flush = time.perf_counter()
        for offset, values in enumerate(records):
            row = self.run_record(
                spec,
                values,
                index=task.start_index + offset,
                artifact_sink=sink,
                checked=checked,
                limits=limits,
                attempt=task.attempt,
                heartbeat=progress.beat,
            )
            writer.add(row)
            if row["status"] == STATUS_SUCCEEDED:
                succeeded += 1
            else:
                failed += 1
            now = time.perf_counter()
            if now - last_flush >= FLUSH_INTERVAL:
                progress.flushed(succeeded, failed)
                last_flush = now
        return succeeded, failed, time.perf_counter() - began

    def _store_artifact(self, task: ChunkTask, index: int, name: str, data: bytes) -> None:
        self.blobs.write_bytes(artifact_key(task.batch_id, index, name, task.attempt), data)

    def run_release(self, task: ReleaseTask) -> dict[str, Any]:
        """Run a batch's job release in this worker (see :mod:`batchserve.worker.jobtasks`)."""
        return self.jobs.release(task, self.blobs)

    def run_consume(self, task: ConsumeTask) -> dict[str, Any]:
        files: dict[str, str] = {}

        def sink(index: int, name: str, data: bytes) -> None:
            files[name] = base64.b64encode(data).decode("ascii")

        row = self.run_record(task.service, task.inputs, index=0, artifact_sink=sink)
        row["artifact_data"] = files
        return row
