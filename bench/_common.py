"""What the benchmarks share: a real server to run against, peak memory, inputs, timing, tables.

Every benchmark starts its own ``batchserve serve`` on a free local port with a temporary data
directory (:class:`Server`), samples the peak resident memory of the server and its workers from
/proc (:class:`PeakMemory`), times the sides of a comparison in interleaved repetitions and keeps
every run (:class:`Side`: median and best), times batchserve's batches stage by stage on a fresh
server, cold or after a small batch (:func:`fresh_server`, :func:`timed_batch`), runs peers
that must not share this process in one of their own (:class:`PeerProcess`) and prints its
figures as a ready-to-paste markdown table (:class:`Table`). Linux only (reads /proc).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
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
        exit_on_sigterm()
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


def exit_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, ``kill``) end this process by ``SystemExit``, so that the way
    out stops its servers: they run in sessions of their own, and by default a terminated
    benchmark would leave them running (and taking CPU from whatever is timed next).

    Processes forked from this one (a ``multiprocessing.Pool``'s workers) still die at once.
    Only the main thread may set handlers; elsewhere, and where one is already set, nothing
    changes.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    owner = os.getpid()

    def stop(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a forked child: die as SIGTERM does by default
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


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


@dataclass
class Side:
    """One side of a comparison: its wall seconds in each repetition, over ``records`` records.

    Every run is kept, not only the best: on a shared machine the median of a few repetitions
    says more about a side than its luckiest run, and the best is still shown beside it.
    """

    name: str
    records: int
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    @property
    def best(self) -> float | None:
        return min(self.runs) if self.runs else None


@dataclass
class Runs:
    """Prints each timed run as it comes, as ``rep/repeat side seconds rate``."""

    repeat: int
    unit: str = "records"
    width: int = 44

    def note(self, rep: int, side: Side, elapsed: float) -> None:
        """Keep a run of ``side`` and print it."""
        side.runs.append(elapsed)
        self.say(rep, side, elapsed)

    def say(self, rep: int, side: Side, elapsed: float) -> None:
        print(
            f"  {rep}/{self.repeat} {side.name:<{self.width}} {elapsed:7.2f} s "
            f"{rate(side.records, elapsed):>12} {self.unit}/s",
            flush=True,
        )


def time_ratio(side: Side, base: Side, best: bool = False) -> float | None:
    """The side's seconds per record over the base's (above 1: the base is faster), on the
    medians, or on the best runs. Per record, so that sides over different counts compare."""
    a, b = (side.best, base.best) if best else (side.median, base.median)
    if a is None or b is None:
        return None
    return (a / side.records) / (b / base.records)


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


# --- batchserve, cold and after a small batch ----------------------------------------------------

SMALL_BATCH = 100  # records of the batch run first on a server in the "after a small batch" runs


def head_csv(source: Path, target: Path, records: int) -> int:
    """Copy the header and the first `records` records of a CSV (no field of ours spans lines);
    returns the records copied."""
    copied = 0
    with source.open("rb") as src, target.open("wb") as dst:
        dst.write(src.readline())
        for line in src:
            if copied == records:
                break
            dst.write(line)
            copied += 1
    return copied


@contextlib.contextmanager
def fresh_server(
    work: Path, workers: int, name: str, publish: Callable[[Any], Any]
) -> Iterator[tuple[Server, Any]]:
    """A server started on a new data directory, and the service ``publish(client)`` published
    on it. On the way out the server is stopped and its data directory removed, so that no run
    starts with what an earlier one left (its cost model, loaded workers, stored batches)."""
    with Server(work, workers, name=name) as server:
        client = server.client()
        try:
            yield server, publish(client)
        finally:
            client.close()
    shutil.rmtree(server.data_dir, ignore_errors=True)


def small_batch(service: Any, source: Any, parallel: int, expected: int) -> None:
    """Run one batch of ``source`` (a records file or in-memory records) to its end; its
    results are not read."""
    records = str(source) if isinstance(source, Path) else source
    response = service.batch(records, parallel_count=parallel).start().wait(poll_interval=0.1)
    check_batch(response, expected)


@dataclass
class BatchRun:
    """One timed batch: the client's phases, and where the server says the time went."""

    upload: float  # start(): the records' upload and the batch's start
    wait: float  # wait(): until the batch is finished
    export: float  # export_results(...)
    ingest: float | None  # server: receiving and storing the records
    queue: float | None  # server: from start until its first records ran
    run: float  # server: the workers' time on its chunks, summed over workers
    server_export: float | None  # server: its side of the export
    wall_clock: float | None  # server: the batch's start to its end

    @property
    def wall(self) -> float:
        return self.upload + self.wait + self.export

    def describe(self) -> str:
        return (
            f"{self.wall:.2f} s (client: upload {self.upload:.2f}, wait {self.wait:.2f}, "
            f"export {self.export:.2f}; server: ingest {seconds(self.ingest)}, queue "
            f"{seconds(self.queue)}, run {self.run:.2f} workers summed, export "
            f"{seconds(self.server_export)}, wall clock {seconds(self.wall_clock)})"
        )


def timed_batch(
    service: Any,
    source: Path,
    *,
    parallel: int,
    expected: int,
    out: Path,
    columns: list[str] | None,
    chunk_size: int | None = None,
) -> BatchRun:
    """Run the records file `source` as one batch and export `columns` of its results (None:
    every column) to `out`, timing ``start()``, ``wait()`` and ``export_results`` apart; then
    read the server's stage times (``info().job_statistics``, not timed)."""
    begin = time.perf_counter()
    batch = service.batch(str(source), parallel_count=parallel, chunk_size=chunk_size).start()
    started = time.perf_counter()
    response = batch.wait(poll_interval=0.1)
    waited = time.perf_counter()
    batch.export_results(out, columns=columns)
    done = time.perf_counter()
    check_batch(response, expected)
    stats = batch.info().job_statistics
    wall_clock = stats.wall_clock_time
    return BatchRun(
        upload=started - begin,
        wait=waited - started,
        export=done - waited,
        ingest=stats.ingest_seconds,
        queue=stats.queue_seconds,
        run=stats.run_seconds,
        server_export=stats.export_seconds,
        wall_clock=None if wall_clock is None else wall_clock.total_seconds(),
    )


@dataclass
class Variant:
    """One way batchserve is timed, each repetition on a fresh server: cold or after a small
    batch, exporting some result columns (None: every column). Keeps its runs and the peak
    memory of the run whose server peaked highest."""

    side: Side
    label: str  # its column in the stage table
    after_small: bool
    columns: list[str] | None
    runs: list[BatchRun] = field(default_factory=list)
    peak: PeakMemory | None = None

    def time(
        self,
        *,
        work: Path,
        name: str,
        parallel: int,
        publish: Callable[[Any], Any],
        source: Path,
        small_source: Path,
        small_count: int,
        out: Path,
        chunk_size: int | None,
    ) -> BatchRun:
        with fresh_server(work, parallel, name, publish) as (server, service):
            if self.after_small:
                small_batch(service, small_source, parallel, small_count)
            with PeakMemory(server.pid) as memory:
                run = timed_batch(
                    service,
                    source,
                    parallel=parallel,
                    expected=self.side.records,
                    out=out,
                    columns=self.columns,
                    chunk_size=chunk_size,
                )
        self.runs.append(run)
        self.side.runs.append(run.wall)
        if self.peak is None or memory.root_mib > self.peak.root_mib:
            self.peak = memory
        return run


def stage_table(runs: dict[str, Sequence[BatchRun]]) -> Table:
    """The median of each stage over the runs of each kind (a column per kind)."""

    def median(done: Sequence[BatchRun], stage: Callable[[BatchRun], float | None]) -> str:
        values = [v for v in map(stage, done) if v is not None]
        return seconds(statistics.median(values)) if values else "-"

    stages: list[tuple[str, Callable[[BatchRun], float | None]]] = [
        ("client: upload and start (`start()`)", lambda r: r.upload),
        ("client: `wait()`", lambda r: r.wait),
        ("client: `export_results(...)`", lambda r: r.export),
        ("client: **whole run**", lambda r: r.wall),
        ("server: ingest (receive and store the records)", lambda r: r.ingest),
        ("server: queue (start until the first records ran)", lambda r: r.queue),
        ("server: run (workers' time on chunks, summed over workers)", lambda r: r.run),
        ("server: export", lambda r: r.server_export),
        ("server: wall clock (start to end)", lambda r: r.wall_clock),
    ]
    kinds = {kind: done for kind, done in runs.items() if done}
    table = Table(["stage (median s)", *kinds])
    for name, stage in stages:
        table.add(name, *(median(done, stage) for done in kinds.values()))
    return table


# --- peers in a process of their own -------------------------------------------------------------


def _peer_main(
    conn: Any, setup: Callable[..., dict[str, Callable[..., Any]]], args: tuple[Any, ...]
) -> None:
    try:
        handlers = setup(*args)
    except Skipped as exc:
        conn.send(("skipped", str(exc)))
        return
    except ImportError as exc:
        conn.send(("skipped", f"{exc.name or exc} not installed"))
        return
    except Exception as exc:
        stop_ray()
        conn.send(("skipped", f"its set-up failed: {exc!r}"))
        return
    try:
        conn.send(("ready", None))
        while (message := conn.recv()) is not None:
            name, call_args = message
            try:
                conn.send(("ok", handlers[name](*call_args)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        stop_ray()


class PeerProcess:
    """A peer run in a spawned process of its own, driven from here call by call.

    Ray's driver must not live in the benchmark's process: its threads, signal handlers and
    sockets would be inherited by the processes the ``multiprocessing.Pool`` baseline forks
    (which then print Ray's crash handler's report when the pool stops them). Here
    ``setup(*args)`` runs once in the new process (its set-up, e.g. ``ray.init``, is not timed)
    and returns named functions; :meth:`call` runs one there and returns what it returns.
    ``setup`` and its arguments must pickle (a module-level function of the script).
    """

    def __init__(
        self,
        name: str,
        setup: Callable[..., dict[str, Callable[..., Any]]],
        *args: Any,
        daemon: bool = True,
    ) -> None:
        self.name = name
        self.setup = setup
        self.args = args
        self.daemon = daemon  # False for a peer that starts processes of its own (a Pool)

    def __enter__(self) -> PeerProcess:
        exit_on_sigterm()
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_peer_main, args=(child, self.setup, self.args), daemon=self.daemon
        )
        self.process.start()
        child.close()
        try:
            status, value = self._receive(timeout=300)
        except BaseException:
            self.__exit__()
            raise
        if status == "skipped":
            self.process.join()
            raise Skipped(value)
        return self

    def call(self, name: str, *args: Any) -> Any:
        self.conn.send((name, args))
        status, value = self._receive(timeout=None)
        if status == "error":
            raise RuntimeError(f"{self.name}, {name}:\n{value}")
        return value

    def _receive(self, timeout: float | None) -> tuple[str, Any]:
        if not self.conn.poll(timeout):
            raise Skipped(f"no answer from its process within {timeout} s")
        try:
            return self.conn.recv()  # type: ignore[no-any-return]
        except EOFError:
            raise RuntimeError(f"the {self.name} process ended unexpectedly") from None

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


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


@dataclass
class Target:
    """A target on a side's time per record over batchserve's (above 1: batchserve faster)."""

    words: str
    met: Callable[[float], bool]


def comparison_table(
    cold: Side, small: Side, others: Sequence[tuple[Side, Target | None]], unit: str
) -> Table:
    """Every side against batchserve cold and after a small batch, on medians (best in
    parentheses), with the target each is held to, judged on the medians."""
    table = Table(
        [
            "side", "median s", "best s", f"{unit}/s (median)",
            "side ÷ batchserve cold", "side ÷ batchserve after small", "target",
            "met? (cold / after small)",
        ]
    )  # fmt: skip

    def ratio(side: Side, base: Side) -> str:
        median, best = time_ratio(side, base), time_ratio(side, base, best=True)
        return "-" if median is None else f"{median:.2f} ({seconds(best)})"

    rows: list[tuple[Side, Target | None, bool]] = [
        (cold, None, True),
        (small, Target("after small ÷ cold <= 1.1", lambda r: r <= 1.1), True),
        *((side, target, False) for side, target in others),
    ]
    for side, target, ours in rows:
        met = ""
        if target is not None and side is small:  # held to the cold runs only
            value = time_ratio(small, cold)
            met = verdict(None if value is None else target.met(value))
        elif target is not None:
            verdicts = []
            for base in (cold, small):
                value = time_ratio(side, base)
                verdicts.append(verdict(None if value is None else target.met(value)))
            met = " / ".join(verdicts)
        table.add(
            f"**{side.name}**" if ours else side.name,
            seconds(side.median), seconds(side.best), rate(side.records, side.median),
            ratio(side, cold), ratio(side, small), target.words if target else "", met,
        )  # fmt: skip
    return table
