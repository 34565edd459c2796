"""What the benchmarks share: a real server to run against, peak memory, inputs, timing, tables.

Every benchmark starts its own ``batchserve serve`` on a free local port with a temporary data
directory (:class:`Server`), samples the peak resident memory of the server and its workers from
/proc (:class:`PeakMemory`), times the best of a few runs (:func:`best_of`) and prints its figures
as a ready-to-paste markdown table (:class:`Table`). Linux only (reads /proc).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PASSWORD = "bench-admin-password"
MIB = 1024.0  # KiB per MiB: /proc reports KiB


# --- the server ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def batchserve_command() -> str:
    """The `batchserve` console script of the environment running this file."""
    beside = Path(sys.executable).with_name("batchserve")
    found = str(beside) if beside.exists() else shutil.which("batchserve")
    if not found:
        sys.exit("No `batchserve` command: run this with the project's .venv/bin/python.")
    return found


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class Server:
    """A ``batchserve serve --workers N`` process with its own data directory under ``work``.

    Used as a context manager: it starts the server, waits for ``GET /health`` and, on the way
    out, stops it and every process of its session (workers that outlived it). On an error the
    last lines of the server's log go to stderr.
    """

    def __init__(self, work: Path, workers: int, name: str = "server") -> None:
        self.data_dir = work / f"{name}-data"
        self.log_path = work / f"{name}.log"
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Server:
        env = {
            **os.environ,
            "BATCHSERVE_HOME": str(self.data_dir),
            "BATCHSERVE_ADMIN_PASSWORD": PASSWORD,
        }
        command = [
            batchserve_command(), "serve",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.data_dir), "--workers", str(self.workers),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            # A session of its own, so that stopping it reaches the worker processes too.
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_for_health()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None and exc_type is not SystemExit:
            print(f"server log (last lines):\n{tail(self.log_path)}", file=sys.stderr)
        self._stop()

    def client(self) -> Any:
        from batchserve import Client

        return Client(self.url, username="admin", password=PASSWORD)

    def _wait_for_health(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(
                    f"The server exited with status {self.process.returncode}:\n"
                    f"{tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        sys.exit(f"The server did not answer GET /health within 120 s:\n{tail(self.log_path)}")

    def _stop(self) -> None:
        stop_process_group(self.process)


def stop_process_group(process: subprocess.Popen[Any] | None, timeout: float = 20) -> None:
    """Terminate a process started with ``start_new_session=True``, then kill its session."""
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def check_batch(response: Any, expected: int) -> None:
    """Exit unless the batch completed with ``expected`` records, none of them failed."""
    from batchserve import BatchState

    if response.state != BatchState.COMPLETED:
        sys.exit(f"The batch ended {response.state}, not completed.")
    if response.total_item_count != expected:
        sys.exit(f"Expected {expected} records in the batch, got {response.total_item_count}.")
    if response.failed_item_count:
        first = response.to_pandas().query("status != 'succeeded'")["error"].iloc[0]
        sys.exit(f"{response.failed_item_count} records failed, the first with: {first}")


# --- peak memory from /proc ----------------------------------------------------------------------


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size of a live process, in KiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def descendants(root: int) -> list[int]:
    """Every live process below `root`, found through the parent pid in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its last ")".
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds used so far by `root` and its live descendants (/proc stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in [root, *descendants(root)]:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


class PeakMemory:
    """Samples VmHWM of a process and its descendants in the background; keeps each pid's max.

    VmHWM is already a high-water mark, so sampling only has to catch each process before it
    exits; a few times a second costs next to nothing next to the benchmark.
    """

    def __init__(self, root_pid: int, interval: float = 0.25) -> None:
        self.root_pid = root_pid
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for pid in [self.root_pid, *descendants(self.root_pid)]:
            kib = vm_hwm_kib(pid)
            if kib is not None:
                self.peaks[pid] = max(kib, self.peaks.get(pid, 0))

    @property
    def root_mib(self) -> float:
        return self.peaks.get(self.root_pid, 0) / MIB

    @property
    def children_mib(self) -> list[float]:
        """Each descendant's peak, largest first."""
        others = [kib for pid, kib in self.peaks.items() if pid != self.root_pid]
        return [kib / MIB for kib in sorted(others, reverse=True)]

    def describe(self) -> str:
        each = ", ".join(f"{m:.0f}" for m in self.children_mib) or "-"
        return f"server {self.root_mib:.0f} MiB; child processes {each} MiB"


# --- inputs --------------------------------------------------------------------------------------


def write_x_csv(path: Path, records: int) -> None:
    """A CSV of `records` one-column records (`x` = 0.0, 1.0, ...), written in slices."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    step = 1_000_000
    with pacsv.CSVWriter(path, pa.schema([("x", pa.float64())])) as writer:
        for start in range(0, records, step):
            xs = np.arange(start, min(records, start + step), dtype=np.float64)
            writer.write_table(pa.table({"x": xs}))


# --- timing --------------------------------------------------------------------------------------


def best_of(repeat: int, run: Callable[[], int], expected: int) -> float:
    """The shortest wall time of `repeat` runs; each run returns its result count."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        count = run()
        elapsed = time.perf_counter() - start
        if count != expected:
            sys.exit(f"Expected {expected} results, got {count}.")
        best = min(best, elapsed)
    return best


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, nearest rank."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Skipped(Exception):
    """A peer that cannot run here (not installed, its service not reachable)."""


def run_peer(name: str, run: Callable[[], T]) -> T | None:
    """Run one peer's timing; print why it was skipped and return None when it cannot run."""
    try:
        return run()
    except Skipped as exc:
        print(f"  skipped: {name}: {exc}", flush=True)
        return None
    except ImportError as exc:
        print(f"  skipped: {name}: {exc.name or exc} not installed", flush=True)
        return None


# --- reporting -----------------------------------------------------------------------------------


def versions(names: Iterable[str]) -> str:
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def machine() -> str:
    memory = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        kib = int(f.readline().split()[1])
        memory = f", {kib / MIB / MIB:.0f} GiB"
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} cpus{memory}, load average {load:.1f} at the end, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


@dataclass
class Table:
    """A markdown table, printed as it is (ready to paste into docs/benchmarks.md)."""

    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        lines = [
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" for _ in self.columns) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def rate(records: int, seconds: float | None) -> str:
    return "-" if seconds is None else f"{records / seconds:,.0f}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def verdict(met: bool | None) -> str:
    return "not run" if met is None else ("met" if met else "**missed**")


def stop_ray() -> None:
    """Shut down the local Ray instance this process started, if any (its daemons outlive it)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
