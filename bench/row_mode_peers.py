"""Row-mode batch throughput: batchserve against the tools one would pick instead, in one run.

Every side does the same job on the same CSV of N one-column records: read them, call a trivial
function (``y = x + 1.0``) once per record on P processes, write the N results to a file.

- **batchserve**: a real ``batchserve serve --workers P``; ``svc.batch(csv, parallel_count=P)``,
  ``start()``, ``wait()``, ``export_results("results.csv")``.
- **multiprocessing**: the plain script: ``csv`` module, ``multiprocessing.Pool(P).map``, ``csv``.
- **Ray tasks**: ``ray.init(num_cpus=P)`` (not timed); pandas reads the CSV, one task per 10,000
  records calls the function per record, pandas writes the results.
- **Ray Data**: ``read_csv`` → ``map_batches`` (the function per record of each batch) →
  ``write_csv``.
- **Celery**: a ``celery worker -c P --pool prefork`` on the local Redis (broker and result
  backend); pandas reads and writes; one task per 1,000 records over all N, and one task per
  record over a sample (``--celery-sample``, reported as records/s).

    .venv/bin/python bench/row_mode_peers.py [--records 1000000] [--parallel 2] [--repeat 2]

A peer that is not installed, or whose service is unreachable, is skipped with a note. Prints
the figures and a markdown table with each ratio and target.
"""

from __future__ import annotations

import argparse
import csv
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    PeakMemory,
    Server,
    Skipped,
    Table,
    best_of,
    check_batch,
    machine,
    rate,
    run_peer,
    seconds,
    stop_process_group,
    stop_ray,
    verdict,
    versions,
    write_x_csv,
)

BENCH_DIR = Path(__file__).resolve().parent


def add_one(x: float) -> float:
    return x + 1.0


# --- batchserve ----------------------------------------------------------------------------------


def run_batchserve(
    args: argparse.Namespace, input_csv: Path, work: Path
) -> tuple[float, PeakMemory]:
    with Server(work, args.parallel) as server:
        client = server.client()
        svc = client.publish_service(
            "bench_add_one", code=add_one, inputs={"x": float}, outputs={"y": float}, version="v1"
        )

        def once() -> int:
            batch = svc.batch(str(input_csv), parallel_count=args.parallel).start()
            response = batch.wait(poll_interval=0.1)
            check_batch(response, args.records)
            batch.export_results(work / "batchserve-results.csv")
            return int(response.total_item_count)

        with PeakMemory(server.pid) as memory:
            elapsed = best_of(args.repeat, once, args.records)
        client.close()
    return elapsed, memory


# --- multiprocessing -----------------------------------------------------------------------------


def run_pool(args: argparse.Namespace, input_csv: Path, work: Path) -> float:
    def once() -> int:
        with input_csv.open(newline="") as f:
            xs = [float(row["x"]) for row in csv.DictReader(f)]
        with multiprocessing.Pool(args.parallel) as pool:
            ys = pool.map(add_one, xs)
        with (work / "pool-results.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "y"])
            writer.writerows(enumerate(ys))
        return len(ys)

    return best_of(args.repeat, once, args.records)


# --- Ray -----------------------------------------------------------------------------------------


def start_ray(parallel: int) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=parallel, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
        )
        # Ray Data logs its progress on every run; the figures are what this prints.
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def run_ray_tasks(args: argparse.Namespace, input_csv: Path, work: Path) -> float:
    import pandas as pd
    import ray

    start_ray(args.parallel)

    @ray.remote
    def add_one_each(xs: list[float]) -> list[float]:
        return [add_one(x) for x in xs]

    step = args.ray_task_records

    def once() -> int:
        xs = pd.read_csv(input_csv)["x"].tolist()
        refs = [add_one_each.remote(xs[i : i + step]) for i in range(0, len(xs), step)]
        ys = [y for part in ray.get(refs) for y in part]
        pd.DataFrame({"y": ys}).to_csv(work / "ray-tasks-results.csv", index_label="index")
        return len(ys)

    return best_of(args.repeat, once, args.records)


def run_ray_data(args: argparse.Namespace, input_csv: Path, work: Path) -> float:
    import pandas as pd
    import ray

    start_ray(args.parallel)

    def add_one_batch(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"y": [add_one(x) for x in frame["x"]]})

    out = work / "ray-data-results"

    def once() -> int:
        shutil.rmtree(out, ignore_errors=True)
        ray.data.read_csv(str(input_csv)).map_batches(
            add_one_batch, batch_format="pandas"
        ).write_csv(str(out))
        return args.records

    elapsed = best_of(args.repeat, once, args.records)
    written = sum(len(pd.read_csv(p)) for p in out.glob("*.csv"))
    if written != args.records:
        sys.exit(f"Ray Data wrote {written} results, not {args.records}.")
    return elapsed


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


def run_celery(
    args: argparse.Namespace, input_csv: Path, work: Path
) -> tuple[float | None, float | None]:
    """Best seconds for all records at 1,000 per task, and for the sample at one per task."""
    import pandas as pd
    from celery import group

    with CeleryWorker(args.parallel, work) as worker:
        tasks = worker.tasks
        step = args.celery_task_records

        def per_list() -> int:
            xs = pd.read_csv(input_csv)["x"].tolist()
            job = group(tasks.add_one_each.s(xs[i : i + step]) for i in range(0, len(xs), step))
            ys = [y for part in job.apply_async().get(timeout=3600) for y in part]
            pd.DataFrame({"y": ys}).to_csv(work / "celery-results.csv", index_label="index")
            return len(ys)

        sample = min(args.celery_sample, args.records)

        def per_record() -> int:
            xs = pd.read_csv(input_csv, nrows=sample)["x"].tolist()
            ys = group(tasks.add_one.s(x) for x in xs).apply_async().get(timeout=3600)
            pd.DataFrame({"y": ys}).to_csv(work / "celery-one-results.csv", index_label="index")
            return len(ys)

        list_s = best_of(args.repeat, per_list, args.records)
        record_s = best_of(args.repeat, per_record, sample)
    return list_s, record_s


# --- the run -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Row-mode throughput against Ray and Celery.")
    parser.add_argument("--records", type=int, default=1_000_000, help="records per run")
    parser.add_argument("--parallel", type=int, default=2, help="processes on every side")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side; best counts")
    parser.add_argument("--ray-task-records", type=int, default=10_000, help="records per task")
    parser.add_argument(
        "--celery-task-records", type=int, default=1_000, help="records per Celery list task"
    )
    parser.add_argument(
        "--celery-sample", type=int, default=5_000, help="records of the one-per-task run"
    )
    parser.add_argument(
        "--only", nargs="*", default=None,
        choices=["batchserve", "pool", "ray-tasks", "ray-data", "celery"],
        help="run only these sides",
    )  # fmt: skip
    args = parser.parse_args(argv)
    wanted = set(args.only or ["batchserve", "pool", "ray-tasks", "ray-data", "celery"])
    n = args.records

    with tempfile.TemporaryDirectory(prefix="batchserve-bench-") as tmp:
        work = Path(tmp)
        input_csv = work / "records.csv"
        write_x_csv(input_csv, n)
        print(f"row mode: {n:,} records, parallel {args.parallel}, best of {args.repeat}")

        bs_s, memory = (None, None)
        if "batchserve" in wanted:
            bs_s, memory = run_batchserve(args, input_csv, work)
            print(f"  batchserve        {seconds(bs_s)} s  {rate(n, bs_s)} records/s", flush=True)
        peers: dict[str, float | None] = {}

        def note(name: str, value: float | None) -> None:
            peers[name] = value
            print(f"  {name:<32} {seconds(value)} s  {rate(n, value)} records/s", flush=True)

        if "pool" in wanted:
            note("multiprocessing.Pool", run_peer("pool", lambda: run_pool(args, input_csv, work)))
        if "ray-tasks" in wanted:
            note("Ray tasks", run_peer("ray", lambda: run_ray_tasks(args, input_csv, work)))
        if "ray-data" in wanted:
            note("Ray Data", run_peer("ray", lambda: run_ray_data(args, input_csv, work)))
        celery_one: float | None = None
        if "celery" in wanted:
            both = run_peer("celery", lambda: run_celery(args, input_csv, work))
            list_s, celery_one = both if both else (None, None)
            note(f"Celery, {args.celery_task_records:,} records per task", list_s)
        sample = min(args.celery_sample, n)
        if "celery" in wanted:
            print(
                f"  Celery, one task per record ({sample:,}): {rate(sample, celery_one)} records/s"
            )

    report(args, bs_s, memory, peers, celery_one)
    return 0


TARGETS = {  # peer -> (least batchserve/peer records/s ratio, how the target reads)
    "multiprocessing.Pool": (1.0, "faster"),
    "Ray tasks": (1 / 1.5, "within 1.5x"),
}


def report(
    args: argparse.Namespace,
    bs_s: float | None,
    memory: PeakMemory | None,
    peers: dict[str, float | None],
    celery_one: float | None,
) -> None:
    n = args.records
    sample = min(args.celery_sample, n)
    targets = dict(TARGETS)
    targets[f"Celery, {args.celery_task_records:,} records per task"] = (5.0, ">= 5x")
    bs_rate = None if bs_s is None else n / bs_s
    table = Table(["system", "wall s", "records/s", "batchserve ÷ system", "target", "met?"])
    table.add("**batchserve**", seconds(bs_s), rate(n, bs_s), "1" if bs_s else "-", "", "")
    for name, value in peers.items():
        ratio = None if value is None or bs_rate is None else bs_rate / (n / value)
        least, words = targets.get(name, (None, ""))
        met = None if ratio is None or least is None else ratio >= least
        table.add(
            name, seconds(value), rate(n, value),
            "-" if ratio is None else f"{ratio:.2f}", words, verdict(met) if least else "",
        )  # fmt: skip
    if celery_one is not None or "Celery" in " ".join(peers):
        ratio = None if celery_one is None or bs_rate is None else bs_rate / (sample / celery_one)
        table.add(
            f"Celery, one task per record ({sample:,} records)", seconds(celery_one),
            rate(sample, celery_one), "-" if ratio is None else f"{ratio:.1f}", "", "",
        )  # fmt: skip
    print()
    print(
        f"Row mode, {n:,} records, parallel {args.parallel}, best of {args.repeat} "
        f"({machine()}; {versions(['batchserve', 'ray', 'celery', 'pandas', 'pyarrow'])})"
    )
    print()
    print(table.render())
    if memory is not None:
        print()
        print(f"batchserve peak RSS (VmHWM): {memory.describe()}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_ray()
