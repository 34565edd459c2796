"""Row-mode batch throughput: batchserve end to end against a plain multiprocessing baseline.

Both sides do the same work on the same CSV: read N records, call a trivial function once per
record on P processes, write the N results to a CSV file. batchserve runs it as a real server
(`batchserve serve --workers P`, its own temporary data directory) driven through the SDK:
``svc.batch(csv_path, parallel_count=P).start().wait()`` then ``export("results.csv")``. The
baseline is ``multiprocessing.Pool(P).map`` in this process. The function does almost nothing,
so the figures measure batchserve's per-record overhead (upload, chunking, scheduling, worker
I/O, result download), not the function.

    .venv/bin/python bench/row_mode.py [--records 100000] [--parallel 2] [--repeat 2]

Prints records/s for both, their ratio and the peak resident memory (VmHWM) of the server and of
its worker processes. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

PASSWORD = "bench-admin-password"


def add_one(x: float) -> float:
    return x + 1.0


# --- the baseline --------------------------------------------------------------------------------


def baseline(input_csv: Path, output_csv: Path, parallel: int) -> int:
    """Read, compute on `parallel` processes, write: the plain-Python way. Returns the count."""
    with input_csv.open(newline="") as f:
        xs = [float(row["x"]) for row in csv.DictReader(f)]
    with multiprocessing.Pool(parallel) as pool:
        ys = pool.map(add_one, xs)
    with output_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "y"])
        writer.writerows(enumerate(ys))
    return len(ys)


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


def start_server(
    data_dir: Path, port: int, workers: int, log_path: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BATCHSERVE_HOME": str(data_dir),
        "BATCHSERVE_ADMIN_PASSWORD": PASSWORD,
    }
    command = [
        batchserve_command(), "serve",
        "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(data_dir), "--workers", str(workers),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        # A session of its own, so that the cleanup can reach worker processes too.
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def wait_for_health(url: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"The server exited with status {server.returncode}:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    sys.exit(f"The server did not answer GET /health within 120 s:\n{tail(log_path)}")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=20)
    # Whatever is left of the server's session (workers that outlived it) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


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


class PeakMemory:
    """Samples VmHWM of the server and its descendants in the background; keeps each pid's max.

    VmHWM is already a high-water mark, so sampling only has to catch each process before it
    exits; twice a second costs next to nothing next to the benchmark.
    """

    def __init__(self, server_pid: int, interval: float = 0.5) -> None:
        self.server_pid = server_pid
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
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
        for pid in [self.server_pid, *descendants(self.server_pid)]:
            kib = vm_hwm_kib(pid)
            if kib is not None:
                self.peaks[pid] = max(kib, self.peaks.get(pid, 0))


# --- the run -------------------------------------------------------------------------------------


def write_input(path: Path, records: int) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x"])
        writer.writerows([float(i)] for i in range(records))


def count_csv_records(path: Path) -> int:
    """Records in a CSV file with a header line (no field of these results spans lines)."""
    with path.open("rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b"")) - 1


def first_error(response: object) -> str:
    frame = response.to_pandas()  # type: ignore[attr-defined]
    failed = frame[frame["status"] != "succeeded"]
    return str(failed["error"].iloc[0]) if len(failed) else "(no failed record listed)"


def best_of(repeat: int, run: Callable[[], int], expected: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        count = run()
        elapsed = time.perf_counter() - start
        if count != expected:
            sys.exit(f"Expected {expected} results, got {count}.")
        best = min(best, elapsed)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Row-mode batch throughput against a baseline.")
    parser.add_argument("--records", type=int, default=100_000, help="records per run")
    parser.add_argument(
        "--parallel", type=int, default=2, help="server workers, parallel_count and Pool size"
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side; best counts")
    args = parser.parse_args(argv)

    # Imported here so that --help works without the package's dependencies.
    from batchserve import BatchState, Client

    with tempfile.TemporaryDirectory(prefix="batchserve-bench-") as tmp:
        work = Path(tmp)
        input_csv = work / "records.csv"
        write_input(input_csv, args.records)

        baseline_s = best_of(
            args.repeat,
            lambda: baseline(input_csv, work / "baseline-results.csv", args.parallel),
            args.records,
        )

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = work / "server.log"
        server = start_server(work / "data", port, args.parallel, log_path)
        try:
            wait_for_health(url, server, log_path)
            client = Client(url, username="admin", password=PASSWORD)
            svc = client.publish_service(
                "bench_add_one",
                code=add_one,
                inputs={"x": float},
                outputs={"y": float},
                version="v1",
            )

            def batchserve_run() -> int:
                batch = svc.batch(str(input_csv), parallel_count=args.parallel).start()
                response = batch.wait(poll_interval=0.1)
                if response.state != BatchState.COMPLETED:
                    sys.exit(f"The batch ended {response.state}, not completed.")
                if response.failed_item_count:
                    sys.exit(
                        f"{response.failed_item_count} records failed, the first with: "
                        f"{first_error(response)}"
                    )
                # export() writes the Arrow table it downloads with pyarrow's CSV writer; going
                # through to_pandas().to_csv() would cost more than the whole batch.
                response.export(work / "batchserve-results.csv")
                return response.succeeded_item_count

            with PeakMemory(server.pid) as memory:
                batchserve_s = best_of(args.repeat, batchserve_run, args.records)
            written = count_csv_records(work / "batchserve-results.csv")
            if written != args.records:
                sys.exit(f"The results file has {written} records, not {args.records}.")
        except BaseException:
            print(f"server log (last lines):\n{tail(log_path)}", file=sys.stderr)
            raise
        finally:
            stop_server(server)

    report(args, baseline_s, batchserve_s, memory, server.pid)
    return 0


def report(
    args: argparse.Namespace,
    baseline_s: float,
    batchserve_s: float,
    memory: PeakMemory,
    server_pid: int,
) -> None:
    n = args.records
    mib = 1024.0
    print(
        f"row mode: {n:,} records, parallel {args.parallel}, best of {args.repeat} | "
        f"{os.cpu_count()} cpus, Python {platform.python_version()}, {platform.system()}"
    )
    print(f"  batchserve  {batchserve_s:8.2f} s  {n / batchserve_s:12,.0f} records/s")
    print(f"  baseline    {baseline_s:8.2f} s  {n / baseline_s:12,.0f} records/s")
    print(f"  ratio batchserve/baseline (records/s): {baseline_s / batchserve_s:.3f}")

    server_kib = memory.peaks.get(server_pid, 0)
    others = {pid: kib for pid, kib in memory.peaks.items() if pid != server_pid}
    each = ", ".join(f"{kib / mib:.1f}" for kib in sorted(others.values(), reverse=True))
    total = server_kib + sum(others.values())
    print(f"  peak RSS (VmHWM): server {server_kib / mib:.1f} MiB")
    print(f"  peak RSS (VmHWM): {len(others)} child processes: {each or '-'} MiB")
    print(f"  peak RSS (VmHWM): sum {total / mib:.1f} MiB (peaks need not coincide)")


if __name__ == "__main__":
    sys.exit(main())
