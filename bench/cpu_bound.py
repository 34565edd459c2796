"""Parallel efficiency of a CPU-bound row-mode service on P workers.

The function is a pure-Python loop whose length is calibrated at start so that one call takes
about ``--ms`` milliseconds (10 by default) on this machine. The same ``--records`` calls (400
by default) are timed three ways, one after the other in each of ``--repeat`` rounds (so that all
three meet the same load on a shared machine):

- **serial**: one after another in this process: the work itself, with nothing around it.
- **multiprocessing.Pool(P)**: what P plain processes get on this machine at this moment.
- **P processes, one share each**: P forked processes each run 1/P of the calls with nothing
  passed between them: the most P processes can do here. On a virtual machine whose cores are
  shared, P processes at once each run slower than one alone, and this shows by how much.
- **batchserve**: a real ``batchserve serve --workers P``, ``svc.batch(records, parallel_count=P)``,
  ``start()``, ``wait()``, ``to_pandas()`` — the wall time of the whole batch as a user sees it.

Parallel efficiency = (serial time / P) / batchserve wall time: 100% is perfect use of P cores,
and what is missing is batchserve's overhead (upload, scheduling, worker start, state polling,
result download) plus whatever else runs on the machine. The pool's figure and the CPU seconds
used by the server and its workers against the serial CPU seconds tell the two apart.

    .venv/bin/python bench/cpu_bound.py [--records 400] [--ms 10] [--parallel 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    PeakMemory,
    Server,
    Table,
    check_batch,
    cpu_seconds,
    machine,
    seconds,
    verdict,
    versions,
)


def spin(x: int, rounds: int) -> int:
    total = x
    for i in range(rounds):
        total = (total * 31 + i) % 1_000_003
    return total


def calibrate(ms: float) -> int:
    """Loop rounds that take about `ms` milliseconds here (best of a few trials)."""
    rounds = 10_000
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        spin(0, rounds)
        best = min(best, time.perf_counter() - start)
    return max(1, round(rounds * (ms / 1000) / best))


def make_service(rounds: int):  # type: ignore[no-untyped-def]
    def burn(x: int) -> int:
        return spin(x, rounds)

    return burn


def run_share(rounds: int, share: range) -> None:
    for x in share:
        spin(x, rounds)


def shares(rounds: int, n: int, parallel: int) -> float:
    """Wall time of `parallel` processes each running every `parallel`-th of the n calls."""
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=run_share, args=(rounds, range(i, n, parallel)))
        for i in range(parallel)
    ]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Parallel efficiency of a CPU-bound service.")
    parser.add_argument("--records", type=int, default=400, help="records per run")
    parser.add_argument("--ms", type=float, default=10.0, help="target milliseconds per record")
    parser.add_argument("--parallel", type=int, default=2, help="server workers, parallel_count")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side; best counts")
    args = parser.parse_args(argv)
    n = args.records

    rounds = calibrate(args.ms)
    burn = make_service(rounds)
    records = {"x": list(range(n))}
    serial_s = serial_cpu = batch_s = batch_cpu = pool_s = shares_s = float("inf")
    median_ms = 0.0
    with (
        tempfile.TemporaryDirectory(prefix="batchserve-bench-") as tmp,
        Server(Path(tmp), args.parallel) as server,
    ):
        client = server.client()
        svc = client.publish_service(
            "bench_burn", code=burn, inputs={"x": int}, outputs={"y": int}, version="v1"
        )
        svc.consume(x=1)  # the service is loaded before anything is timed
        # and so is the client's batch path (its first batch imports pandas and pyarrow)
        svc.batch({"x": [1, 2]}).start().wait().to_pandas()
        with PeakMemory(server.pid) as memory:
            # Serial and batch runs alternate, so that both meet the same load on a shared machine.
            for _ in range(args.repeat):
                start, cpu = time.perf_counter(), time.process_time()
                for x in range(n):
                    burn(x)
                serial_s = min(serial_s, time.perf_counter() - start)
                serial_cpu = min(serial_cpu, time.process_time() - cpu)

                # The same calls on a plain process pool: what P processes get on this machine
                # now, so that the load others put on it can be told from batchserve's overhead.
                start = time.perf_counter()
                with multiprocessing.Pool(args.parallel) as pool:
                    pool.map(functools.partial(spin, rounds=rounds), range(n), chunksize=1)
                pool_s = min(pool_s, time.perf_counter() - start)
                shares_s = min(shares_s, shares(rounds, n, args.parallel))

                start, cpu = time.perf_counter(), cpu_seconds(server.pid)
                batch = svc.batch(records, parallel_count=args.parallel).start()
                response = batch.wait(poll_interval=0.05)
                results = response.to_pandas()
                elapsed = time.perf_counter() - start
                batch_cpu = min(batch_cpu, cpu_seconds(server.pid) - cpu)
                check_batch(response, n)
                if elapsed < batch_s:
                    batch_s = elapsed
                    median_ms = float(results["duration_ms"].median())
                print(
                    f"  serial {serial_s:.2f} s; pool {pool_s:.2f} s; shares {shares_s:.2f} s; "
                    f"batchserve run {elapsed:.2f} s (load average {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        client.close()

    ideal_s = serial_s / args.parallel
    efficiency = ideal_s / batch_s
    table = Table(["measure", "value", "target", "met?"])
    table.add("calibrated work per record", f"{args.ms:g} ms ({rounds:,} rounds)", "", "")
    table.add("serial time (one process)", f"{serial_s:.2f} s", "", "")
    table.add(
        f"ideal on {args.parallel} workers (serial / {args.parallel})", seconds(ideal_s), "", ""
    )
    table.add("batchserve wall time", f"{batch_s:.2f} s", "", "")
    table.add("median duration_ms per record in the workers", f"{median_ms:.1f}", "", "")
    table.add(
        "**parallel efficiency**", f"**{efficiency:.0%}**", ">= 90%", verdict(efficiency >= 0.9)
    )
    table.add(
        f"multiprocessing.Pool({args.parallel}) wall time, same calls",
        f"{pool_s:.2f} s (efficiency {ideal_s / pool_s:.0%})", "", "",
    )  # fmt: skip
    table.add("batchserve wall time / Pool wall time", f"{batch_s / pool_s:.2f}", "", "")
    table.add(
        f"{args.parallel} processes, one share of the calls each, wall time",
        f"{shares_s:.2f} s (efficiency {ideal_s / shares_s:.0%})", "", "",
    )  # fmt: skip
    table.add(
        f"batchserve efficiency against what {args.parallel} processes get here",
        f"{shares_s / batch_s:.0%}", "", "",
    )  # fmt: skip
    table.add(
        "CPU seconds: serial / batchserve server and workers",
        f"{serial_cpu:.2f} / {batch_cpu:.2f} ({serial_cpu / batch_cpu:.0%})", "", "",
    )  # fmt: skip
    print()
    print(
        f"CPU-bound row mode, {n} records of ~{args.ms:g} ms, {args.parallel} workers, "
        f"best of {args.repeat} ({machine()}; {versions(['batchserve'])})"
    )
    print()
    print(table.render())
    print()
    print(f"batchserve peak RSS (VmHWM): {memory.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
