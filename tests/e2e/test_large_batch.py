"""A batch of millions of records runs with bounded memory in the server process: its peak
resident size stays under a fixed bound and does not grow with the number of records.

The records stream in and are written into upload parts, workers read and write the records, and
results stream out chunk by chunk: the server holds metadata and at most a chunk or two. The test
runs the same batch at two sizes, ten times apart, each on a server of its own (a process's peak
only ever grows), and compares the peaks. It asserts memory, never time.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from batchserve import BatchState, Client

from .conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

BIG = 3_000_000
SMALL = BIG // 10
MB = 1 << 20
PEAK_BOUND = 500 * MB  # the server process's peak resident size, whatever the batch's size
GROWTH_BOUND = 100 * MB  # how much more the ten times bigger batch may use at its peak


def plus_one(frame):  # type: ignore[no-untyped-def]
    return {"y": frame["x"] + 1}


def peak_rss(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no VmHWM")


class PeakSampler:
    """Samples VmHWM while a batch runs, so a process that dies still leaves its last peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.read()

    def read(self) -> int:
        with contextlib.suppress(OSError):
            self.peak = max(self.peak, peak_rss(self.pid))
        return self.peak

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.read()


@dataclass
class Run:
    records: int
    peak: int  # bytes


def run_batch(home: Path, records: int, tmp: Path) -> Run:
    """Publish a trivial service on a server of its own, run ``records`` records through it,
    check that every record has exactly one result, and return the server's peak."""
    source = tmp / f"records-{records}.csv"
    pacsv.write_csv(pa.table({"x": np.arange(records, dtype=np.int64)}), source)
    server = ServerProcess(home, workers=2).start()
    try:
        assert server.process is not None
        with (
            PeakSampler(server.process.pid) as sampler,
            Client(server.url, username="admin", password=ADMIN_PASSWORD, timeout=600) as client,
        ):
            svc = client.publish_service(
                "plus_one",
                code=plus_one,
                inputs={"x": int},
                outputs={"y": int},
                version="v1",
                vectorized=True,
            )
            batch = svc.batch(str(source), parallel_count=2).start()
            final = batch.wait(timeout=800)
            assert final.state is BatchState.COMPLETED
            assert final.total_item_count == final.completed_item_count == records
            check_every_record_once(server, client.token, str(batch.execution_id), records, tmp)
        return Run(records, sampler.peak)
    finally:
        server.stop()


def check_every_record_once(
    server: ServerProcess, token: str | None, batch_id: str, records: int, tmp: Path
) -> None:
    """Read the results as the Arrow stream the server sends chunk by chunk (to a file, so this
    process does not hold them either) and check one succeeded result per record."""
    target = tmp / f"results-{records}.arrows"
    with (
        httpx.stream(
            "GET",
            f"{server.url}/v1/batches/{batch_id}/results",
            params={"format": "arrow"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=600,
        ) as resp,
        target.open("wb") as out,
    ):
        resp.raise_for_status()
        for piece in resp.iter_bytes():
            out.write(piece)
    indexes: list[np.ndarray] = []
    with pa.OSFile(str(target)) as f:
        for part in pa.ipc.open_stream(f):
            index = part.column("index").to_numpy()
            assert set(part.column("status").to_pylist()) == {"succeeded"}
            assert np.array_equal(part.column("y").to_numpy(), index + 1)
            indexes.append(index)
    target.unlink()
    assert np.array_equal(np.concatenate(indexes), np.arange(records))


def test_a_batch_of_millions_of_records_runs_in_bounded_server_memory(tmp_path):  # type: ignore[no-untyped-def]
    small = run_batch(tmp_path / "small", SMALL, tmp_path)
    big = run_batch(tmp_path / "big", BIG, tmp_path)
    print(
        f"server peak RSS: {small.peak / MB:.0f} MB for {small.records:,} records, "
        f"{big.peak / MB:.0f} MB for {big.records:,} records"
    )
    assert small.peak > 0
    assert big.peak < PEAK_BOUND
    assert big.peak <= small.peak + GROWTH_BOUND
