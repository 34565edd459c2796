"""Parallel efficiency of a CPU-bound row-mode service on P workers, cold and after a small batch.

The function is a pure-Python loop whose length is calibrated at start so that one call takes
about ``--ms`` milliseconds (10 by default) on this machine. The same ``--records`` calls (400
by default) are timed these ways, one after the other in each of ``--repeat`` rounds (so that all
meet the same load on a shared machine):

- **serial**: one after another in this process: the work itself, with nothing around it.
- **multiprocessing.Pool(P)**: what P plain processes get on this machine at this moment.
- **P processes, one share each**: P forked processes each run 1/P of the calls with nothing
  passed between them: the most P processes can do here. On a virtual machine whose cores are
  shared, P processes at once each run slower than one alone, and this shows by how much.
- **batchserve cold**: a fresh ``batchserve serve --workers P`` (new data directory), the service
  published and loaded by one ``consume``, then ``svc.batch(records, parallel_count=P)``,
  ``start()``, ``wait()``, ``to_pandas()`` — the wall time of the whole batch as a user sees it.
- **batchserve after a small batch**: the same on another fresh server, where one ``consume``
  and a 100-record batch of the service ran first (not timed).

Parallel efficiency = (serial time / P) / batchserve wall time, on the medians of the rounds (and
on the best runs): 100% is perfect use of P cores, and what is missing is batchserve's overhead
(upload, scheduling, worker start, state polling, result download) plus whatever else runs on the
machine. The pool's figure and the CPU seconds used by the server and its workers against the
serial CPU seconds tell the two apart.

    .venv/bin/python bench/cpu_bound.py [--records 400] [--ms 10] [--parallel 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    SMALL_BATCH,
    PeakMemory,
    Side,
    Table,
    check_batch,
    cpu_seconds,
    fresh_server,
    machine,
    seconds,
    small_batch,
    verdict,
    versions,
)

TARGET = 0.93  # parallel efficiency, cold and after a small batch


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


@dataclass
class BurnRun:
    """One timed batch: its wall time, the CPU the server and workers used, what the workers
    measured per record, and the server's stage times."""

    wall: float
    cpu: float
    median_ms: float
    ingest: float | None
    queue: float | None
    run: float

    def describe(self) -> str:
        return (
            f"{self.wall:.2f} s, CPU {self.cpu:.2f} s, median duration_ms {self.median_ms:.1f} "
            f"(server: ingest {seconds(self.ingest)}, queue {seconds(self.queue)}, run "
            f"{self.run:.2f} workers summed)"
        )


def run_batchserve(
    work: Path, name: str, burn: Any, n: int, parallel: int, after_small: bool
) -> tuple[BurnRun, PeakMemory]:
    """One timed batch on a fresh server where the service was loaded by one ``consume``, and,
    `after_small`, a 100-record batch of it ran."""

    def publish(client: Any) -> Any:
        svc = client.publish_service(
            "bench_burn", code=burn, inputs={"x": int}, outputs={"y": int}, version="v1"
        )
        svc.consume(x=1)  # the service is loaded before anything is timed
        return svc

    records = {"x": list(range(n))}
    with fresh_server(work, parallel, name, publish) as (server, svc):
        if after_small:
            small_batch(svc, {"x": list(range(SMALL_BATCH))}, parallel, SMALL_BATCH)
        with PeakMemory(server.pid) as memory:
            start, cpu = time.perf_counter(), cpu_seconds(server.pid)
            batch = svc.batch(records, parallel_count=parallel).start()
            response = batch.wait(poll_interval=0.05)
            results = response.to_pandas()
            elapsed = time.perf_counter() - start
            used = cpu_seconds(server.pid) - cpu
        check_batch(response, n)
        stats = batch.info().job_statistics
    run = BurnRun(
        elapsed, used, float(results["duration_ms"].median()),
        stats.ingest_seconds, stats.queue_seconds, stats.run_seconds,
    )  # fmt: skip
    return run, memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Parallel efficiency of a CPU-bound service.")
    parser.add_argument("--records", type=int, default=400, help="records per run")
    parser.add_argument("--ms", type=float, default=10.0, help="target milliseconds per record")
    parser.add_argument("--parallel", type=int, default=2, help="server workers, parallel_count")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of every side; the median counts"
    )
    args = parser.parse_args(argv)
    n, parallel = args.records, args.parallel
    # What the client's first batch imports, imported now: the cold figure is the server's.
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401

    rounds = calibrate(args.ms)
    burn = make_service(rounds)
    serial = Side("serial", n)
    pool = Side(f"multiprocessing.Pool({parallel})", n)
    share = Side(f"{parallel} processes, one share of the calls each", n)
    cold = Side("batchserve cold", n)
    small = Side("batchserve after a small batch", n)
    serial_cpu: list[float] = []
    runs: dict[bool, list[BurnRun]] = {False: [], True: []}
    memory: PeakMemory | None = None
    with tempfile.TemporaryDirectory(prefix="batchserve-bench-") as tmp:
        for rep in range(1, args.repeat + 1):
            # All sides alternate, so that all meet the same load on a shared machine.
            start, cpu = time.perf_counter(), time.process_time()
            for x in range(n):
                burn(x)
            serial.runs.append(time.perf_counter() - start)
            serial_cpu.append(time.process_time() - cpu)

            # The same calls on a plain process pool: what P processes get on this machine
            # now, so that the load others put on it can be told from batchserve's overhead.
            # (From a fork server: forked from this process, whose threads hold locks, a
            # pool's children could start with one held, and hang.)
            start = time.perf_counter()
            with multiprocessing.get_context("forkserver").Pool(parallel) as workers:
                workers.map(functools.partial(spin, rounds=rounds), range(n), chunksize=1)
            pool.runs.append(time.perf_counter() - start)
            share.runs.append(shares(rounds, n, parallel))
            line = (
                f"  {rep}/{args.repeat} serial {serial.runs[-1]:.2f} s; pool {pool.runs[-1]:.2f} "
                f"s; shares {share.runs[-1]:.2f} s"
            )
            for after_small in (False, True):
                name = f"{'small' if after_small else 'cold'}-{rep}"
                run, peak = run_batchserve(Path(tmp), name, burn, n, parallel, after_small)
                runs[after_small].append(run)
                (small if after_small else cold).runs.append(run.wall)
                if memory is None or peak.root_mib > memory.root_mib:
                    memory = peak
                label = "after a small batch" if after_small else "cold"
                line += f"\n      batchserve {label}: {run.describe()}"
            print(f"{line}\n      (load average {os.getloadavg()[0]:.1f})", flush=True)

    report(args, rounds, serial, pool, share, cold, small, serial_cpu, runs)
    if memory is not None:
        print()
        print(f"batchserve peak RSS (VmHWM), the run of the largest: {memory.describe()}")
    return 0


def report(
    args: argparse.Namespace,
    rounds: int,
    serial: Side,
    pool: Side,
    share: Side,
    cold: Side,
    small: Side,
    serial_cpu: list[float],
    runs: dict[bool, list[BurnRun]],
) -> None:
    """The medians of the rounds (the best runs beside them) and each efficiency from them."""
    p = args.parallel
    med, best = statistics.median, min

    def efficiency(base: Side, side: Side, pick: Any) -> float:
        return (pick(base.runs) / p) / pick(side.runs)

    def percent(value: float) -> str:
        return f"{value:.0%}"

    table = Table(["measure", "median", "best", "target", "met?"])
    table.add("calibrated work per record", f"{args.ms:g} ms ({rounds:,} rounds)", "", "", "")
    table.add("serial time (one process)", seconds(serial.median), seconds(serial.best), "", "")
    table.add(
        f"ideal on {p} workers (serial / {p})",
        seconds(med(serial.runs) / p), seconds(best(serial.runs) / p), "", "",
    )  # fmt: skip
    for after_small, side in ((False, cold), (True, small)):
        label = "after a 100-record batch" if after_small else "cold"
        done = runs[after_small]
        table.add(
            f"batchserve wall time, {label}", seconds(side.median), seconds(side.best), "", ""
        )
        table.add(
            f"median duration_ms per record in the workers, {label}",
            f"{med([r.median_ms for r in done]):.1f}", f"{min(r.median_ms for r in done):.1f}",
            "", "",
        )  # fmt: skip
    for side, label in ((cold, "cold"), (small, "after a 100-record batch")):
        value = efficiency(serial, side, med)
        table.add(
            f"**parallel efficiency, {label}**", f"**{percent(value)}**",
            percent(efficiency(serial, side, best)), f">= {TARGET:.0%}", verdict(value >= TARGET),
        )  # fmt: skip
    table.add(
        "batchserve wall time, after a 100-record batch ÷ cold",
        f"{med(small.runs) / med(cold.runs):.2f}", f"{best(small.runs) / best(cold.runs):.2f}",
        "", "",
    )  # fmt: skip
    table.add(
        f"{pool.name} wall time, same calls",
        f"{seconds(pool.median)} s (efficiency {percent(efficiency(serial, pool, med))})",
        f"{seconds(pool.best)} s ({percent(efficiency(serial, pool, best))})", "", "",
    )  # fmt: skip
    table.add(
        "batchserve wall time ÷ Pool wall time, cold / after small",
        f"{med(cold.runs) / med(pool.runs):.2f} / {med(small.runs) / med(pool.runs):.2f}",
        f"{best(cold.runs) / best(pool.runs):.2f} / {best(small.runs) / best(pool.runs):.2f}",
        "", "",
    )  # fmt: skip
    table.add(
        f"{share.name}, wall time",
        f"{seconds(share.median)} s (efficiency {percent(efficiency(serial, share, med))})",
        f"{seconds(share.best)} s ({percent(efficiency(serial, share, best))})", "", "",
    )  # fmt: skip
    table.add(
        f"batchserve efficiency against what {p} processes get here, cold / after small",
        f"{percent(med(share.runs) / med(cold.runs))} / "
        f"{percent(med(share.runs) / med(small.runs))}",
        f"{percent(best(share.runs) / best(cold.runs))} / "
        f"{percent(best(share.runs) / best(small.runs))}",
        "", "",
    )  # fmt: skip
    cpu = med(serial_cpu)
    cold_cpu, small_cpu = (med([r.cpu for r in runs[k]]) for k in (False, True))
    table.add(
        "CPU seconds: serial / batchserve server and workers, cold / after small",
        f"{cpu:.2f} / {cold_cpu:.2f} ({cpu / cold_cpu:.0%}) / {small_cpu:.2f} "
        f"({cpu / small_cpu:.0%})",
        "", "", "",
    )  # fmt: skip
    print()
    print(
        f"CPU-bound row mode, {args.records} records of ~{args.ms:g} ms, {p} workers, "
        f"median of {args.repeat} rounds ({machine()}; {versions(['batchserve'])})"
    )
    print()
    print(table.render())


if __name__ == "__main__":
    sys.exit(main())
