"""Server memory against batch size: does the server's peak resident memory grow with records?

For each count in ``--records`` (1M, 3M and 10M by default) it writes a CSV of that many
one-column records, starts a fresh ``batchserve serve --workers P`` (so that each peak belongs
to one batch size), uploads the CSV as a batch of a trivial row-mode service (``y = x + 1``),
waits for it and exports the results to a Parquet file — the whole path a large batch takes
through the server: streaming upload and chunking, scheduling, result chunks, result download.
The peak resident memory (``VmHWM``) of the server and of each worker is sampled from /proc
four times a second.

    .venv/bin/python bench/memory.py [--records 1000000 3000000 10000000] [--parallel 2]

Target: the server's peak below 500 MiB at every size, and flat: the peak at the largest size
within 20% of the peak at the smallest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import PeakMemory, Server, Table, check_batch, machine, verdict, versions, write_x_csv

LIMIT_MIB = 500.0
FLAT = 1.2  # largest size's peak over the smallest's


def add_one(x: float) -> float:
    return x + 1.0


def measure(records: int, parallel: int, work: Path) -> tuple[float, PeakMemory, float]:
    """Wall seconds of the batch, the peaks, and the CSV's size in MiB."""
    input_csv = work / f"records-{records}.csv"
    write_x_csv(input_csv, records)
    size_mib = input_csv.stat().st_size / 2**20
    with Server(work, parallel, name=f"server-{records}") as server:
        client = server.client()
        svc = client.publish_service(
            "bench_add_one", code=add_one, inputs={"x": float}, outputs={"y": float}, version="v1"
        )
        with PeakMemory(server.pid) as memory:
            start = time.perf_counter()
            batch = svc.batch(str(input_csv), parallel_count=parallel).start()
            response = batch.wait(poll_interval=0.5)
            check_batch(response, records)
            batch.export_results(work / "results.parquet")
            elapsed = time.perf_counter() - start
        client.close()
    input_csv.unlink()
    (work / "results.parquet").unlink()
    return elapsed, memory, size_mib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Server peak memory against batch size.")
    parser.add_argument(
        "--records", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000]
    )
    parser.add_argument("--parallel", type=int, default=2, help="server workers, parallel_count")
    args = parser.parse_args(argv)
    counts = sorted(args.records)

    rows = []
    with tempfile.TemporaryDirectory(prefix="batchserve-bench-") as tmp:
        for records in counts:
            elapsed, memory, size_mib = measure(records, args.parallel, Path(tmp))
            print(
                f"  {records:>12,} records ({size_mib:,.0f} MiB CSV): {elapsed:.1f} s, "
                f"{memory.describe()}",
                flush=True,
            )
            rows.append((records, size_mib, elapsed, memory))

    table = Table(
        ["records", "CSV MiB", "wall s", "records/s", "server peak MiB", "largest child MiB",
         "target", "met?"]
    )  # fmt: skip
    for records, size_mib, elapsed, memory in rows:
        server_mib = memory.root_mib
        workers = memory.children_mib
        table.add(
            f"{records:,}", f"{size_mib:,.0f}", f"{elapsed:.1f}", f"{records / elapsed:,.0f}",
            f"{server_mib:.0f}", f"{workers[0]:.0f}" if workers else "-",
            f"< {LIMIT_MIB:.0f} MiB", verdict(server_mib < LIMIT_MIB),
        )  # fmt: skip
    growth = rows[-1][3].root_mib / rows[0][3].root_mib
    print()
    print(
        f"Server peak memory against batch size, row mode, {args.parallel} workers "
        f"({machine()}; {versions(['batchserve', 'pyarrow', 'pandas'])})"
    )
    print()
    print(table.render())
    print()
    print(
        f"flat: server peak at {counts[-1]:,} records / at {counts[0]:,} = {growth:.2f} "
        f"(target <= {FLAT}): {verdict(growth <= FLAT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
