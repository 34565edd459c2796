"""Row-mode batch throughput: batchserve against the best plain script one would write instead,
and against Ray and Celery, all in one run.

Every side does the same job on the same CSV of N records of two float columns (``hp``, ``wt``):
read it, call ``ratio(hp, wt) = hp / wt`` once per record on P processes, write a CSV of one
column ``r`` with the N results. Each side is timed from reading the input to the results file
being written.

- **batchserve**: a real ``batchserve serve --workers P`` on a new data directory;
  ``svc.batch(csv, parallel_count=P).start()``, ``wait()``,
  ``export_results("….csv", columns=["r"])``. Timed twice in each repetition: *cold* (a fresh
  server, the service just published) and *after a small batch* (a fresh server, the service
  published, a 100-record batch of it run first, not timed). Both again on fresh servers of
  their own exporting every result column (shown, not held to a target).
- **multiprocessing.Pool**: the plain script: ``pyarrow.csv.read_csv``, ``to_pylist()`` of each
  column, ``with Pool(P) as pool: pool.starmap(ratio, zip(hp, wt), chunksize=10_000)``,
  ``pyarrow.csv.write_csv`` of ``r``. The pool's start-up is part of the script, so it is timed.
- **Ray tasks**: ``ray.init(num_cpus=P)`` (not timed); pyarrow reads, one ``@ray.remote`` task
  per 10,000 records computing ``[ratio(h, w) for h, w in zip(hps, wts)]``, ``ray.get``, pyarrow
  writes ``r``.
- **Ray Data**: ``read_csv`` → ``map_batches`` (``ratio`` per record of each pandas batch) →
  ``write_csv``.
- **Celery**: a ``celery worker -c P --pool prefork`` on the local Redis (broker and result
  backend); pyarrow reads and writes; one task per 1,000 records over all N, and one task per
  record over a sample (``--celery-sample``, compared per record).

The sides alternate within each repetition (Pool, batchserve cold, after a small batch, and
both with every column, Ray tasks, Ray Data, Celery), so that load from elsewhere on a shared
machine meets all of them alike; the median of the repetitions counts, the best is shown beside
it. Ray runs in a process of its own (see ``PeerProcess``), started once before the repetitions.

    .venv/bin/python bench/row_mode_peers.py [--records 1000000] [--parallel 2] [--repeat 3]

A peer that is not installed, or whose service is unreachable, is skipped with a note. Prints
every run as it goes, then markdown tables: each side against batchserve cold and after a small
batch with the targets, and batchserve's stage times.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    SMALL_BATCH,
    PeerProcess,
    Runs,
    Side,
    Skipped,
    Target,
    Variant,
    comparison_table,
    exit_on_sigterm,
    head_csv,
    machine,
    run_peer,
    stage_table,
    stop_process_group,
    versions,
)

BENCH_DIR = Path(__file__).resolve().parent
SIDES = ["batchserve", "batchserve-all", "pool", "ray-tasks", "ray-data", "celery"]


def ratio(hp: float, wt: float) -> float:
    return hp / wt


def write_input(path: Path, records: int) -> None:
    """`records` records: ``hp`` uniform in 50..300 (1 decimal), ``wt`` in 1.5..5.5 (3)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(7)
    step = 1_000_000
    schema = pa.schema([("hp", pa.float64()), ("wt", pa.float64())])
    with pacsv.CSVWriter(path, schema) as writer:
        for start in range(0, records, step):
            size = min(step, records - start)
            hp = rng.uniform(50, 300, size).round(1)
            wt = rng.uniform(1.5, 5.5, size).round(3)
            writer.write_table(pa.table({"hp": hp, "wt": wt}, schema=schema))


def read_columns(path: Path) -> tuple[list[float], list[float]]:
    """The two input columns as lists of Python floats (pyarrow's reader, the fastest there is)."""
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(path)
    return table.column("hp").to_pylist(), table.column("wt").to_pylist()


def write_results(rs: list[float], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    pacsv.write_csv(pa.table({"r": rs}), path)


def expect(count: int, expected: int, side: str) -> None:
    if count != expected:
        raise RuntimeError(f"{side} wrote {count} results, not {expected}.")


# --- batchserve ----------------------------------------------------------------------------------


def publish(client: Any) -> Any:
    return client.publish_service(
        "bench_ratio",
        code=ratio,
        inputs={"hp": float, "wt": float},
        outputs={"r": float},
        version="v1",
    )


# --- multiprocessing -----------------------------------------------------------------------------


def run_pool(input_csv: Path, out: Path, parallel: int, expected: int) -> float:
    """The plain script, timed whole: pyarrow in, ``Pool(P).starmap``, pyarrow out."""
    start = time.perf_counter()
    hp, wt = read_columns(input_csv)
    with multiprocessing.Pool(parallel) as pool:
        rs = pool.starmap(ratio, zip(hp, wt, strict=True), chunksize=10_000)
    write_results(rs, out)
    elapsed = time.perf_counter() - start
    expect(len(rs), expected, "multiprocessing.Pool")
    return elapsed


# --- Ray, in a process of its own ----------------------------------------------------------------


def start_ray(parallel: int) -> None:
    import ray

    ray.init(num_cpus=parallel, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    # Ray Data logs its progress on every run; the figures are what this prints.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def pool_peer(parallel: int, input_csv: Path, out: Path, expected: int) -> dict[str, Any]:
    """The Pool script runs in a spawned process of its own, as a script would: forked from
    this process, whose threads hold locks (the SDK's, Celery's), a pool's children can start
    with a lock held and hang."""
    return {"run": lambda: run_pool(input_csv, out, parallel, expected)}


def ray_peer(
    parallel: int, input_csv: Path, work: Path, task_records: int, expected: int
) -> dict[str, Callable[[], float]]:
    """Set up in the Ray process (``ray.init``, not timed): its two timed runs by name."""
    import pandas as pd
    import pyarrow.csv as pacsv
    import ray

    start_ray(parallel)
    # Ray's workers cannot import this script (it runs here as the main module of a spawned
    # process), so its functions travel by value, as they would from a script run directly.
    ray.cloudpickle.register_pickle_by_value(sys.modules[ratio.__module__])

    @ray.remote
    def ratio_each(hps: list[float], wts: list[float]) -> list[float]:
        return [ratio(h, w) for h, w in zip(hps, wts, strict=True)]

    def tasks() -> float:
        start = time.perf_counter()
        hp, wt = read_columns(input_csv)
        step = task_records
        refs = [
            ratio_each.remote(hp[i : i + step], wt[i : i + step]) for i in range(0, len(hp), step)
        ]
        rs = [r for part in ray.get(refs) for r in part]
        write_results(rs, work / "ray-tasks-results.csv")
        elapsed = time.perf_counter() - start
        expect(len(rs), expected, "Ray tasks")
        return elapsed

    def ratio_batch(frame: pd.DataFrame) -> pd.DataFrame:
        pairs = zip(frame["hp"].tolist(), frame["wt"].tolist(), strict=True)
        return pd.DataFrame({"r": [ratio(h, w) for h, w in pairs]})

    out = work / "ray-data-results"

    def data() -> float:
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        ray.data.read_csv(str(input_csv)).map_batches(ratio_batch, batch_format="pandas").write_csv(
            str(out)
        )
        elapsed = time.perf_counter() - start
        written = sum(pacsv.read_csv(p).num_rows for p in out.glob("*.csv"))
        expect(written, expected, "Ray Data")
        return elapsed

    return {"tasks": tasks, "data": data}


# --- Celery --------------------------------------------------------------------------------------


class CeleryWorker:
    """``celery -A _celery_app worker -c P --pool prefork`` on a queue of this run's own."""

    def __init__(self, parallel: int, work: Path) -> None:
        self.parallel = parallel
        self.log_path = work / "celery.log"
        self.queue = f"batchserve-bench-{os.getpid()}"
        self.node = f"bench-{os.getpid()}@localhost"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> CeleryWorker:
        exit_on_sigterm()
        os.environ["BENCH_CELERY_QUEUE"] = self.queue  # read by _celery_app on import
        sys.path.insert(0, str(BENCH_DIR))
        import _celery_app

        self.app = _celery_app.app
        self.tasks = _celery_app
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
        except Exception as exc:
            raise Skipped(f"Redis at {_celery_app.REDIS_URL} not reachable ({exc})") from exc
        command = [
            sys.executable, "-m", "celery", "-A", "_celery_app", "worker",
            "-c", str(self.parallel), "--pool", "prefork", "-Q", self.queue,
            "-n", self.node, "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=BENCH_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(BENCH_DIR)},
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while not self.app.control.ping(destination=[self.node], timeout=1.0):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = self.log_path.read_text(errors="replace")[-2000:]
                self.__exit__()
                raise Skipped(f"the Celery worker did not start:\n{log_text}")
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process_group(self.process)

    def per_list(self, input_csv: Path, out: Path, step: int, expected: int) -> float:
        """Every record, `step` records per task."""
        from celery import group

        start = time.perf_counter()
        hp, wt = read_columns(input_csv)
        job = group(
            self.tasks.ratio_each.s(hp[i : i + step], wt[i : i + step])
            for i in range(0, len(hp), step)
        )
        rs = [r for part in job.apply_async().get(timeout=3600) for r in part]
        write_results(rs, out)
        elapsed = time.perf_counter() - start
        expect(len(rs), expected, "Celery")
        return elapsed

    def per_record(self, sample_csv: Path, out: Path, expected: int) -> float:
        """Every record of the sample, one task each."""
        from celery import group

        start = time.perf_counter()
        hp, wt = read_columns(sample_csv)
        job = group(self.tasks.ratio.s(h, w) for h, w in zip(hp, wt, strict=True))
        rs = job.apply_async().get(timeout=3600)
        write_results(rs, out)
        elapsed = time.perf_counter() - start
        expect(len(rs), expected, "Celery, one task per record")
        return elapsed


# --- the run -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Row-mode throughput against the plain script.")
    parser.add_argument("--records", type=int, default=1_000_000, help="records per run")
    parser.add_argument("--parallel", type=int, default=2, help="processes on every side")
    parser.add_argument(
        "--repeat", type=int, default=3, help="repetitions of every side; the median counts"
    )
    parser.add_argument("--ray-task-records", type=int, default=10_000, help="records per task")
    parser.add_argument(
        "--celery-task-records", type=int, default=1_000, help="records per Celery list task"
    )
    parser.add_argument(
        "--celery-sample", type=int, default=5_000, help="records of the one-per-task run"
    )
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="batchserve chunk size (server's choice)"
    )
    parser.add_argument(
        "--only", nargs="*", default=None, choices=SIDES, help="run only these sides"
    )
    args = parser.parse_args(argv)
    wanted = set(args.only or SIDES)
    n = args.records

    cold = Variant(Side("batchserve cold", n), "cold", False, ["r"])
    small = Variant(Side("batchserve after a small batch", n), "after a small batch", True, ["r"])
    cold_all = Variant(
        Side("batchserve cold, every column exported", n),
        "cold, every column", False, None,
    )  # fmt: skip
    small_all = Variant(
        Side("batchserve after a small batch, every column", n),
        "after a small batch, every column", True, None,
    )  # fmt: skip
    variants = [cold, small] if "batchserve" in wanted else []
    variants += [cold_all, small_all] if "batchserve-all" in wanted else []
    pool = Side("multiprocessing.Pool", n)
    ray_tasks = Side(f"Ray tasks, {args.ray_task_records:,} records per task", n)
    ray_data = Side("Ray Data map_batches", n)
    celery_list = Side(f"Celery, {args.celery_task_records:,} records per task", n)
    sample = min(args.celery_sample, n)
    celery_one = Side(f"Celery, one task per record ({sample:,} records)", sample)

    with (
        tempfile.TemporaryDirectory(prefix="batchserve-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        input_csv, small_csv, sample_csv = work / "records.csv", work / "small.csv", work / "s.csv"
        write_input(input_csv, n)
        small_count = head_csv(input_csv, small_csv, SMALL_BATCH)
        head_csv(input_csv, sample_csv, sample)
        print(
            f"row mode: {n:,} records, parallel {args.parallel}, {args.repeat} repetitions",
            flush=True,
        )

        ray = None  # Ray's process, once it answered; started before the repetitions
        if wanted & {"ray-tasks", "ray-data"}:
            peer = PeerProcess(
                "Ray", ray_peer, args.parallel, input_csv, work, args.ray_task_records, n
            )
            ray = run_peer("ray", lambda: stack.enter_context(peer))
        pool_process = None
        if "pool" in wanted:
            peer = PeerProcess(
                "Pool", pool_peer, args.parallel, input_csv, work / "pool.csv", n, daemon=False
            )
            pool_process = stack.enter_context(peer)
        celery = None
        if "celery" in wanted:
            worker = CeleryWorker(args.parallel, work)
            celery = run_peer("celery", lambda: stack.enter_context(worker))

        runs = Runs(args.repeat, "records", 44)
        note, say = runs.note, runs.say

        for rep in range(1, args.repeat + 1):
            if pool_process is not None:
                note(rep, pool, pool_process.call("run"))
            for i, variant in enumerate(variants):
                every = variant.columns is None
                run = variant.time(
                    work=work,
                    name=f"batchserve{i}-{rep}",
                    parallel=args.parallel,
                    publish=publish,
                    source=input_csv,
                    small_source=small_csv,
                    small_count=small_count,
                    out=work / f"batchserve{'-all' if every else ''}-results.csv",
                    chunk_size=args.chunk_size,
                )
                say(rep, variant.side, run.wall)
                print(f"      {run.describe()}", flush=True)
            if ray is not None and "ray-tasks" in wanted:
                note(rep, ray_tasks, ray.call("tasks"))
            if ray is not None and "ray-data" in wanted:
                note(rep, ray_data, ray.call("data"))
            if celery is not None:
                step = args.celery_task_records
                note(rep, celery_list, celery.per_list(input_csv, work / "c.csv", step, n))
                note(rep, celery_one, celery.per_record(sample_csv, work / "c1.csv", sample))

        if pool.runs and "batchserve" in wanted:
            same_results(work / "batchserve-results.csv", work / "pool.csv")

    others: list[tuple[Side, Target | None]] = [
        (cold_all.side, None),
        (small_all.side, None),
        (pool, Target("> 1 (faster than the script)", lambda r: r > 1)),
        (ray_tasks, Target(">= 0.67 (within 1.5x)", lambda r: r >= 1 / 1.5)),
        (ray_data, None),
        (celery_list, Target(">= 5", lambda r: r >= 5)),
        (celery_one, None),
    ]
    report(args, cold.side, small.side, variants, [(s, t) for s, t in others if s.runs])
    return 0


def same_results(ours: Path, theirs: Path) -> None:
    """Exit unless batchserve's results file holds the same ``r`` column as the Pool script's."""
    import pyarrow.csv as pacsv

    a, b = pacsv.read_csv(ours), pacsv.read_csv(theirs)
    if a.column_names != ["r"] or not a.column("r").equals(b.column("r")):
        sys.exit(f"batchserve's results ({a.column_names}) differ from the Pool script's.")
    print(f"  checked: batchserve's {ours.name} holds the Pool script's {a.num_rows:,} results")


def report(
    args: argparse.Namespace,
    cold: Side,
    small: Side,
    variants: list[Variant],
    others: list[tuple[Side, Target | None]],
) -> None:
    print()
    print(
        f"Row mode, `ratio(hp, wt) = hp / wt`, {args.records:,} records, CSV in, CSV of `r` out, "
        f"parallel {args.parallel}, median of {args.repeat} repetitions ({machine()}; "
        f"{versions(['batchserve', 'ray', 'celery', 'pandas', 'pyarrow'])})"
    )
    print()
    print(comparison_table(cold, small, others, "records").render())
    print()
    print(
        "side ÷ batchserve: the side's median seconds per record over batchserve's (best runs "
        "in parentheses); above 1, batchserve is faster. Targets are judged on the medians."
    )
    if variants:
        print()
        print(stage_table({v.label: v.runs for v in variants}).render())
    for variant in variants:
        if variant.peak is not None:
            print()
            print(
                f"batchserve peak RSS (VmHWM), {variant.label}, the run of the largest: "
                f"{variant.peak.describe()}"
            )


if __name__ == "__main__":
    sys.exit(main())
