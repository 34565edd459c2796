"""The service runtime, inside a worker process: run records, write results and artifacts.

This module is what worker processes import; it never touches the metadata store. A chunk's
inputs come from its Arrow file in the blob store; its results go to a result stream file and
its artifacts under the batch's folder; the scheduler only hears counts.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from batchserve.blobs import BlobNotFound, BlobStore
from batchserve.engine import bundles
from batchserve.engine.results import STATUS_FAILED, STATUS_SUCCEEDED, ResultWriter, failed_row
from batchserve.engine.tasks import ChunkTask, ConsumeTask, ServiceSpec
from batchserve.schema import ARROW_TYPES, SchemaError, coerce, coerce_record

MAX_CONSOLE_CHARS = 64 * 1024
FLUSH_INTERVAL = 0.02  # seconds of finished records a stopped chunk may lose at most


def artifact_key(batch_id: str, index: int, name: str) -> str:
    return f"batches/{batch_id}/artifacts/{index}/{name}"


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


class Runtime:
    """Loads services (once per process each) and runs records for one worker process."""

    def __init__(self, blobs: BlobStore, scratch: str | None = None, cache_size: int = 4) -> None:
        self.blobs = blobs
        self._cache: OrderedDict[str, bundles.LoadedService | bundles.BundleError] = OrderedDict()
        self._cache_size = cache_size
        self.scratch = scratch or tempfile.mkdtemp(prefix="batchserve-worker-")
        os.makedirs(self.scratch, exist_ok=True)

    def service(self, spec: ServiceSpec) -> bundles.LoadedService:
        """The loaded service; init runs on first use. A failed load is remembered and re-raised."""
        if spec.key not in self._cache:
            try:
                data = self.blobs.read_bytes(spec.bundle_key)
                self._cache[spec.key] = bundles.load(data, spec.outputs)
            except BlobNotFound:
                self._cache[spec.key] = bundles.BundleError(
                    f"the service bundle {spec.bundle_key} is missing from the blob store"
                )
            except bundles.BundleError as exc:
                self._cache[spec.key] = exc
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(spec.key)
        loaded = self._cache[spec.key]
        if isinstance(loaded, bundles.BundleError):
            raise loaded
        return loaded

    def run_record(
        self,
        spec: ServiceSpec,
        raw_inputs: dict[str, Any],
        *,
        index: int,
        artifact_sink: Callable[[int, str, bytes], None] | None,
        checked: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """Run one record: check inputs, call the service, check outputs, collect artifacts.

        ``checked`` names inputs whose values are known to have the declared type already (a
        column of the declared Arrow type without nulls), which skips their per-value check.
        """
        started = time.perf_counter()
        row: dict[str, Any] = {"index": index, "artifacts": []}
        console = io.StringIO()
        workdir = tempfile.mkdtemp(dir=self.scratch) if spec.artifacts else None
        cwd = os.getcwd() if workdir is not None else ""
        try:
            if checked:
                inputs = {
                    n: raw_inputs[n] if n in checked else coerce(raw_inputs.get(n), t, n)
                    for n, t in spec.inputs.items()
                }
            else:
                inputs = coerce_record(raw_inputs, spec.inputs)
            service = self.service(spec)
            if workdir is not None:
                os.chdir(workdir)  # a record's files are its own
            with contextlib.redirect_stdout(console):
                raw = (
                    service.call_one_row(inputs)
                    if spec.mode == "vectorized"
                    else service.call(inputs)
                )
            outputs = {n: coerce(raw.get(n), t, n, kind="output") for n, t in spec.outputs.items()}
            row.update(status=STATUS_SUCCEEDED, outputs=outputs)
        except SchemaError as exc:
            row.update(status=STATUS_FAILED, error=str(exc), error_type="SchemaError")
        except bundles.BundleError as exc:
            row.update(status=STATUS_FAILED, error=str(exc), error_type="BundleError")
        except Exception as exc:
            row.update(
                status=STATUS_FAILED, error=str(exc) or repr(exc), error_type=type(exc).__name__
            )
        finally:
            if workdir is not None:
                os.chdir(cwd)
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
        text = console.getvalue()
        if len(text) > MAX_CONSOLE_CHARS:
            text = text[:MAX_CONSOLE_CHARS] + "\n[console output truncated]\n"
        row["console_output"] = text
        row["duration_ms"] = (time.perf_counter() - started) * 1000.0
        return row

    def run_chunk(
        self, task: ChunkTask, report: Callable[[int, int], None], progress_interval: float = 0.25
    ) -> dict[str, Any]:
        """Run every record of a chunk; returns ``{"succeeded", "failed"}``.

        Results are flushed to the result file often (every ``FLUSH_INTERVAL`` seconds), so a
        chunk stopped by a cancel keeps nearly every record it finished; progress counts go to
        ``report`` every ``progress_interval`` seconds.
        """
        with _environment(task.environment):
            return self._run_chunk(task, report, progress_interval)

    def _run_chunk(
        self, task: ChunkTask, report: Callable[[int, int], None], progress_interval: float
    ) -> dict[str, Any]:
        spec = task.service
        with self.blobs.open_read(task.input_key) as f:
            table = pa.ipc.open_file(f).read_all()
        if spec.mode == "vectorized":
            return self._run_vectorized(task, table, report)
        columns = [c for c in spec.inputs if c in table.column_names]
        checked = frozenset(
            c
            for c in columns
            if table.schema.field(c).type == ARROW_TYPES[spec.inputs[c]]
            and table.column(c).null_count == 0
        )
        records = table.select(columns).to_pylist()

        def sink(index: int, name: str, data: bytes) -> None:
            self.blobs.write_bytes(artifact_key(task.batch_id, index, name), data)

        writer = ResultWriter(self.blobs.open_append_stream(task.result_key), spec.outputs)
        succeeded = failed = 0
        last_flush = last_report = time.monotonic()
        try:
            for offset, values in enumerate(records):
                row = self.run_record(
                    spec,
                    values,
                    index=task.start_index + offset,
                    artifact_sink=sink,
                    checked=checked,
                )
                row["attempts"] = task.attempt
                writer.add(row)
                if row["status"] == STATUS_SUCCEEDED:
                    succeeded += 1
                else:
                    failed += 1
                now = time.monotonic()
                if now - last_flush >= FLUSH_INTERVAL:
                    writer.flush()
                    last_flush = now
                    if now - last_report >= progress_interval:
                        report(succeeded, failed)
                        last_report = now
        finally:
            writer.close()
        return {"succeeded": succeeded, "failed": failed}

    def _run_vectorized(
        self, task: ChunkTask, table: pa.Table, report: Callable[[int, int], None]
    ) -> dict[str, Any]:
        """Call the service once per chunk with a DataFrame; isolate failing records by splitting.

        Records whose inputs fail the schema check fail alone and are left out of the frame.
        When a call raises, the slice is halved and each half called again, down to single
        records, so only the records that make the service fail get an error. What a call
        prints is the console output of the first record of that call.
        """
        import pandas as pd

        spec = task.service
        rows: dict[int, dict[str, Any]] = {}
        good: list[int] = []
        values: dict[str, list[Any]] = {n: [] for n in spec.inputs}
        raw = table.select([c for c in spec.inputs if c in table.column_names]).to_pydict()
        for offset in range(table.num_rows):
            index = task.start_index + offset
            try:
                record = {
                    n: coerce(raw.get(n, [None] * table.num_rows)[offset], t, n)
                    for n, t in spec.inputs.items()
                }
            except SchemaError as exc:
                rows[index] = failed_row(index, str(exc), "SchemaError", task.attempt, "")
                continue
            good.append(index)
            for n in spec.inputs:
                values[n].append(record[n])
        frame = pd.DataFrame(values, columns=list(spec.inputs))
        try:
            service = self.service(spec)
        except bundles.BundleError as exc:
            service = None
            for index in good:
                rows[index] = failed_row(index, str(exc), "BundleError", task.attempt, "")

        def attempt(lo: int, hi: int) -> None:
            assert service is not None
            console = io.StringIO()
            started = time.perf_counter()
            try:
                with contextlib.redirect_stdout(console):
                    out = service.call_frame(frame.iloc[lo:hi].reset_index(drop=True))
                checked = [
                    {n: coerce(out[n][i], t, n, kind="output") for n, t in spec.outputs.items()}
                    for i in range(hi - lo)
                ]
            except Exception as exc:
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    attempt(lo, mid)
                    attempt(mid, hi)
                    return
                error_type = "SchemaError" if isinstance(exc, SchemaError) else type(exc).__name__
                rows[good[lo]] = failed_row(
                    good[lo],
                    str(exc) or repr(exc),
                    error_type,
                    task.attempt,
                    console.getvalue()[:MAX_CONSOLE_CHARS],
                )
                return
            per_row = (time.perf_counter() - started) * 1000.0 / (hi - lo)
            text = console.getvalue()[:MAX_CONSOLE_CHARS]
            for i, outputs in enumerate(checked):
                index = good[lo + i]
                rows[index] = {
                    "index": index,
                    "status": STATUS_SUCCEEDED,
                    "outputs": outputs,
                    "artifacts": [],
                    "console_output": text if i == 0 else "",
                    "duration_ms": per_row,
                    "attempts": task.attempt,
                }

        if service is not None and good:
            attempt(0, len(good))
        writer = ResultWriter(self.blobs.open_append_stream(task.result_key), spec.outputs)
        try:
            for index in sorted(rows):
                writer.add(rows[index])
        finally:
            writer.close()
        failed = sum(1 for r in rows.values() if r["status"] != STATUS_SUCCEEDED)
        return {"succeeded": len(rows) - failed, "failed": failed}

    def run_consume(self, task: ConsumeTask) -> dict[str, Any]:
        files: dict[str, str] = {}

        def sink(index: int, name: str, data: bytes) -> None:
            files[name] = base64.b64encode(data).decode("ascii")

        row = self.run_record(task.service, task.inputs, index=0, artifact_sink=sink)
        row["attempts"] = 1
        row["artifact_data"] = files
        return row
