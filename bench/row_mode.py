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
import csv
import multiprocessing
import os
import platform
import sys
import tempfile
from pathlib import Path

from _common import PeakMemory, Server, best_of, write_x_csv


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


# --- the run -------------------------------------------------------------------------------------


def count_csv_records(path: Path) -> int:
    """Records in a CSV file with a header line (no field of these results spans lines)."""
    with path.open("rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b"")) - 1


def first_error(response: object) -> str:
    frame = response.to_pandas()  # type: ignore[attr-defined]
    failed = frame[frame["status"] != "succeeded"]
    return str(failed["error"].iloc[0]) if len(failed) else "(no failed record listed)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Row-mode batch throughput against a baseline.")
    parser.add_argument("--records", type=int, default=100_000, help="records per run")
    parser.add_argument(
        "--parallel", type=int, default=2, help="server workers, parallel_count and Pool size"
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side; best counts")
    args = parser.parse_args(argv)

    # Imported here so that --help works without the package's dependencies.
    from batchserve import BatchState

    with tempfile.TemporaryDirectory(prefix="batchserve-bench-") as tmp:
        work = Path(tmp)
        input_csv = work / "records.csv"
        write_x_csv(input_csv, args.records)

        baseline_s = best_of(
            args.repeat,
            lambda: baseline(input_csv, work / "baseline-results.csv", args.parallel),
            args.records,
        )

        with Server(work, args.parallel) as server:
            client = server.client()
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
            client.close()

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
