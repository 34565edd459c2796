"""Vectorized batch throughput: a scikit-learn model over millions of rows, against one process
and against Ray Data, in one run.

Every side does the same job: read a CSV of ``--rows`` rows of four features, compute
``LogisticRegression.predict_proba`` (the probability of class 1), write one result per row to a
file (``--output csv`` or ``parquet``, the same format on every side). The model is fitted on
10,000 rows of the same distribution before anything is timed.

- **batchserve**: a real ``batchserve serve --workers P``; a service published with
  ``vectorized=True`` whose function gets each chunk as a DataFrame (the model travels with it in
  its closure); ``svc.batch(csv, parallel_count=P)``, ``start()``, ``wait()``,
  ``export_results("results.<output>")``.
- **one process**: pyarrow reads the whole CSV, one ``predict_proba`` over the whole frame,
  pyarrow writes the file. No parallelism, no overhead: the floor of what the job costs.
- **Ray Data**: ``read_csv`` → ``map_batches`` (``predict_proba`` per pandas batch) →
  ``write_csv`` / ``write_parquet``; ``ray.init(num_cpus=P)`` not timed.

    .venv/bin/python bench/vectorized.py [--rows 5000000] [--parallel 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    PeakMemory,
    Server,
    Table,
    best_of,
    check_batch,
    machine,
    rate,
    run_peer,
    seconds,
    stop_ray,
    verdict,
    versions,
)

FEATURES = ["a", "b", "c", "d"]
WEIGHTS = [1.5, -2.0, 0.5, 0.0]


def make_frame(rows: int, seed: int) -> Any:
    """`rows` rows of four features, rounded to 4 decimals, and a label that depends on them."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, len(FEATURES))).round(4)
    frame = pd.DataFrame(values, columns=FEATURES)
    noise = rng.normal(scale=0.5, size=rows)
    frame["label"] = (values @ np.array(WEIGHTS) + noise > 0).astype(int)
    return frame


def fit_model() -> Any:
    from sklearn.linear_model import LogisticRegression

    sample = make_frame(10_000, seed=1)
    return LogisticRegression().fit(sample[FEATURES].to_numpy(), sample["label"])


def write_input(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    step = 1_000_000
    with pacsv.CSVWriter(path, pa.schema([(f, pa.float64()) for f in FEATURES])) as writer:
        for start in range(0, rows, step):
            frame = make_frame(min(step, rows - start), seed=2 + start // step)
            writer.write_table(pa.Table.from_pandas(frame[FEATURES], preserve_index=False))


def predictor(model: Any) -> Callable[[Any], Any]:
    """The service's function: a DataFrame of features in, P(class 1) per row out."""

    def predict(frame: Any) -> Any:
        return model.predict_proba(frame[FEATURES].to_numpy())[:, 1]

    return predict


def write_table(table: Any, path: Path) -> None:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)


# --- the sides -----------------------------------------------------------------------------------


def run_batchserve(
    args: argparse.Namespace, model: Any, input_csv: Path, work: Path
) -> tuple[float, PeakMemory]:
    with Server(work, args.parallel) as server:
        client = server.client()
        svc = client.publish_service(
            "bench_predict",
            code=predictor(model),
            inputs={f: float for f in FEATURES},
            outputs={"p": float},
            vectorized=True,
            version="v1",
        )

        def once() -> int:
            batch = svc.batch(
                str(input_csv), parallel_count=args.parallel, chunk_size=args.chunk_size
            ).start()
            response = batch.wait(poll_interval=0.1)
            check_batch(response, args.rows)
            batch.export_results(work / f"batchserve-results.{args.output}")
            return int(response.total_item_count)

        with PeakMemory(server.pid) as memory:
            elapsed = best_of(args.repeat, once, args.rows)
        client.close()
    return elapsed, memory


def run_one_process(args: argparse.Namespace, model: Any, input_csv: Path, work: Path) -> float:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    predict = predictor(model)

    def once() -> int:
        frame = pacsv.read_csv(input_csv).to_pandas()
        p = predict(frame)
        table = pa.table({"index": pa.array(range(len(p)), pa.int64()), "p": p})
        write_table(table, work / f"one-process-results.{args.output}")
        return len(p)

    return best_of(args.repeat, once, args.rows)


def run_ray_data(args: argparse.Namespace, model: Any, input_csv: Path, work: Path) -> float:
    import pandas as pd
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=args.parallel,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    predict = predictor(model)

    def predict_batch(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"p": predict(frame)})

    out = work / "ray-data-results"

    def once() -> int:
        shutil.rmtree(out, ignore_errors=True)
        ds = ray.data.read_csv(str(input_csv)).map_batches(predict_batch, batch_format="pandas")
        if args.output == "parquet":
            ds.write_parquet(str(out))
        else:
            ds.write_csv(str(out))
        return args.rows

    elapsed = best_of(args.repeat, once, args.rows)
    written = ray.data.read_parquet(str(out)) if args.output == "parquet" else None
    count = written.count() if written is not None else ray.data.read_csv(str(out)).count()
    if count != args.rows:
        sys.exit(f"Ray Data wrote {count} results, not {args.rows}.")
    return elapsed


# --- the run -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Vectorized throughput against Ray Data.")
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows per run")
    parser.add_argument("--parallel", type=int, default=2, help="processes on the parallel sides")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side; best counts")
    parser.add_argument(
        "--output", choices=["csv", "parquet"], default="csv", help="results file format"
    )
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="batchserve chunk size (server's choice)"
    )
    parser.add_argument(
        "--only", nargs="*", default=None, choices=["batchserve", "one-process", "ray-data"]
    )
    args = parser.parse_args(argv)
    wanted = set(args.only or ["batchserve", "one-process", "ray-data"])
    n = args.rows

    try:
        model = fit_model()
    except ImportError as exc:
        print(f"skipped: every side needs scikit-learn, and {exc.name} is not installed")
        return 0
    with tempfile.TemporaryDirectory(prefix="batchserve-bench-") as tmp:
        work = Path(tmp)
        input_csv = work / "rows.csv"
        write_input(input_csv, n)
        size_mib = input_csv.stat().st_size / 2**20
        print(f"vectorized: {n:,} rows ({size_mib:,.0f} MiB of CSV), best of {args.repeat}")

        bs_s = memory = None
        if "batchserve" in wanted:
            bs_s, memory = run_batchserve(args, model, input_csv, work)
            print(f"  batchserve   {seconds(bs_s)} s  {rate(n, bs_s)} rows/s", flush=True)
        one_s = ray_s = None
        if "one-process" in wanted:
            one_s = run_one_process(args, model, input_csv, work)
            print(f"  one process  {seconds(one_s)} s  {rate(n, one_s)} rows/s", flush=True)
        if "ray-data" in wanted:
            ray_s = run_peer("ray", lambda: run_ray_data(args, model, input_csv, work))
            print(f"  Ray Data     {seconds(ray_s)} s  {rate(n, ray_s)} rows/s", flush=True)

    table = Table(["system", "wall s", "rows/s", "batchserve ÷ system", "target", "met?"])
    table.add("**batchserve**", seconds(bs_s), rate(n, bs_s), "1" if bs_s else "-", "", "")
    for name, value, least, words in (
        ("one process (whole frame)", one_s, 0.5, "within 2x"),
        (f"Ray Data map_batches, {args.parallel} CPUs", ray_s, 5.0, ">= 5x"),
    ):
        ratio = None if value is None or bs_s is None else value / bs_s
        met = None if ratio is None else ratio >= least
        table.add(
            name, seconds(value), rate(n, value),
            "-" if ratio is None else f"{ratio:.2f}", words, verdict(met),
        )  # fmt: skip
    print()
    print(
        f"Vectorized LogisticRegression.predict_proba, {n:,} rows, CSV in, {args.output} out, "
        f"parallel {args.parallel}, best of {args.repeat} ({machine()}; "
        f"{versions(['batchserve', 'scikit-learn', 'ray', 'pandas', 'pyarrow'])})"
    )
    print()
    print(table.render())
    if memory is not None:
        print()
        print(f"batchserve peak RSS (VmHWM): {memory.describe()}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_ray()
