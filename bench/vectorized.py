"""Vectorized batch throughput: a scikit-learn model over millions of rows, against the plain
one-process script and against Ray, in one run.

Every side does the same job: read a CSV of ``--rows`` rows of four features, compute
``LogisticRegression.predict_proba`` (the probability of class 1), write a file of one column
``p`` with one result per row (``--output csv``, the default, or ``parquet``; the same on every
side). The model is fitted on 10,000 rows of the same distribution before anything is timed.
Each side is timed from reading the input to the results file being written.

- **batchserve**: a real ``batchserve serve --workers P`` on a new data directory; a service
  published with ``vectorized=True`` whose function gets each chunk as a DataFrame (the model
  travels with it in its closure); ``svc.batch(csv, parallel_count=P).start()``, ``wait()``,
  ``export_results("results.<output>", columns=["p"])``. Timed twice in each repetition: *cold*
  (a fresh server, the service just published) and *after a small batch* (a fresh server, the
  service published, a 100-row batch of it run first, not timed).
- **one process**: ``pyarrow.csv.read_csv(...).to_pandas()``, the same ``predict`` on the whole
  frame, ``pyarrow.csv.write_csv(pa.table({"p": p}))``. No parallelism and nothing moved between
  processes: the floor of what the job costs.
- **one process, a fresh script**: the same script as a file run by a new interpreter
  (``python predict.py model.pkl rows.csv out.csv``), timed whole, its start and its imports
  (pyarrow, scikit-learn, through unpickling the model) included: what a cold batchserve pays
  in each worker to load the service, the script pays once.
- **Ray tasks**: ``ray.init(num_cpus=P)`` (not timed); pyarrow reads into one pandas frame, one
  ``@ray.remote`` task per 100,000 rows (``--ray-task-rows``) is passed its slice
  ``frame.iloc[i:i + 100_000]`` (Ray puts each slice in its object store) and returns the
  slice's probabilities; ``ray.get``, ``np.concatenate``, pyarrow writes ``p``.
- **Ray Data**: ``read_csv`` → ``map_batches`` (``predict`` per pandas batch) → ``write_csv`` /
  ``write_parquet``.

The sides alternate within each repetition (one process, batchserve cold, batchserve after a
small batch, Ray tasks, Ray Data), so that load from elsewhere on a shared machine meets all of
them alike; the median of the repetitions counts, the best is shown beside it. Ray runs in a
process of its own (see ``PeerProcess``), started once before the repetitions.

    .venv/bin/python bench/vectorized.py [--rows 2000000] [--parallel 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
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
    Target,
    Variant,
    comparison_table,
    head_csv,
    machine,
    run_peer,
    stage_table,
    time_ratio,
    versions,
)

SIDES = ["batchserve", "one-process", "ray-tasks", "ray-data"]
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
    """Write the results table as the file's extension says (pyarrow's writers)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)


# --- the sides -----------------------------------------------------------------------------------


def publisher(model: Any) -> Callable[[Any], Any]:
    """Publishes the model's service with a client: ``predict`` called once per chunk."""

    def publish(client: Any) -> Any:
        return client.publish_service(
            "bench_predict",
            code=predictor(model),
            inputs={f: float for f in FEATURES},
            outputs={"p": float},
            vectorized=True,
            version="v1",
        )

    return publish


def run_one_process(model: Any, input_csv: Path, out: Path, expected: int) -> float:
    """The plain script, timed whole: pyarrow in, one predict on the whole frame, pyarrow out."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    predict = predictor(model)
    start = time.perf_counter()
    frame = pacsv.read_csv(input_csv).to_pandas()
    p = predict(frame)
    write_table(pa.table({"p": p}), out)
    elapsed = time.perf_counter() - start
    if len(p) != expected:
        sys.exit(f"The one process wrote {len(p)} results, not {expected}.")
    return elapsed


FRESH_SCRIPT = """
import pickle, sys
import pyarrow as pa, pyarrow.csv as pacsv, pyarrow.parquet as pq
with open(sys.argv[1], "rb") as f:
    model = pickle.load(f)
frame = pacsv.read_csv(sys.argv[2]).to_pandas()
p = model.predict_proba(frame[{features!r}].to_numpy())[:, 1]
table = pa.table({{"p": p}})
if sys.argv[3].endswith(".parquet"):
    pq.write_table(table, sys.argv[3])
else:
    pacsv.write_csv(table, sys.argv[3])
"""


def run_fresh_script(model: Any, input_csv: Path, out: Path, work: Path) -> float:
    """The same script run as a new process, timed whole: the interpreter's start and the
    imports (pyarrow, scikit-learn) count, as they do for batchserve's cold workers."""
    import pickle

    script, model_file = work / "predict.py", work / "model.pkl"
    if not script.exists():
        script.write_text(FRESH_SCRIPT.format(features=FEATURES))
        with model_file.open("wb") as f:
            pickle.dump(model, f)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(script), str(model_file), str(input_csv), str(out)], check=True
    )
    return time.perf_counter() - start


# --- Ray, in a process of its own ----------------------------------------------------------------


def ray_peer(
    parallel: int, model: Any, input_csv: Path, work: Path, output: str, task_rows: int, rows: int
) -> dict[str, Callable[[], float]]:
    """Set up in the Ray process (``ray.init``, not timed): its two timed runs by name."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import ray

    ray.init(num_cpus=parallel, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # Ray's workers cannot import this script (it runs here as the main module of a spawned
    # process), so its functions travel by value, as they would from a script run directly.
    ray.cloudpickle.register_pickle_by_value(sys.modules[predictor.__module__])
    predict = predictor(model)

    @ray.remote
    def predict_part(part: pd.DataFrame) -> Any:
        return predict(part)

    def tasks() -> float:
        start = time.perf_counter()
        frame = pacsv.read_csv(input_csv).to_pandas()
        refs = [
            predict_part.remote(frame.iloc[i : i + task_rows])
            for i in range(0, len(frame), task_rows)
        ]
        p = np.concatenate(ray.get(refs))
        write_table(pa.table({"p": p}), work / f"ray-tasks-results.{output}")
        elapsed = time.perf_counter() - start
        if len(p) != rows:
            raise RuntimeError(f"Ray tasks wrote {len(p)} results, not {rows}.")
        return elapsed

    def predict_batch(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"p": predict(frame)})

    out = work / "ray-data-results"

    def data() -> float:
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        ds = ray.data.read_csv(str(input_csv)).map_batches(predict_batch, batch_format="pandas")
        if output == "parquet":
            ds.write_parquet(str(out))
        else:
            ds.write_csv(str(out))
        elapsed = time.perf_counter() - start
        read = ray.data.read_parquet if output == "parquet" else ray.data.read_csv
        written = read(str(out)).count()
        if written != rows:
            raise RuntimeError(f"Ray Data wrote {written} results, not {rows}.")
        return elapsed

    return {"tasks": tasks, "data": data}


# --- the run -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Vectorized throughput against one process.")
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows per run")
    parser.add_argument("--parallel", type=int, default=2, help="processes on the parallel sides")
    parser.add_argument(
        "--repeat", type=int, default=3, help="repetitions of every side; the median counts"
    )
    parser.add_argument(
        "--output", choices=["csv", "parquet"], default="csv", help="results file format"
    )
    parser.add_argument("--ray-task-rows", type=int, default=100_000, help="rows per Ray task")
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="batchserve chunk size (server's choice)"
    )
    parser.add_argument(
        "--only", nargs="*", default=None, choices=SIDES, help="run only these sides"
    )
    args = parser.parse_args(argv)
    wanted = set(args.only or SIDES)
    n = args.rows

    try:
        model = fit_model()
    except ImportError as exc:
        print(f"skipped: every side needs scikit-learn, and {exc.name} is not installed")
        return 0
    cold = Variant(Side("batchserve cold", n), "cold", False, ["p"])
    small = Variant(Side("batchserve after a small batch", n), "after a small batch", True, ["p"])
    variants = [cold, small] if "batchserve" in wanted else []
    one = Side("one process (whole frame)", n)
    fresh = Side("one process, a fresh script (its start and imports timed)", n)
    ray_tasks = Side(f"Ray tasks, {args.ray_task_rows:,} rows per task", n)
    ray_data = Side(f"Ray Data map_batches, {args.parallel} CPUs", n)

    with (
        tempfile.TemporaryDirectory(prefix="batchserve-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        files = {"work": work, "input": work / "rows.csv", "small": work / "small.csv"}
        write_input(files["input"], n)
        small_count = head_csv(files["input"], files["small"], SMALL_BATCH)
        size_mib = files["input"].stat().st_size / 2**20
        print(
            f"vectorized: {n:,} rows ({size_mib:,.0f} MiB of CSV), parallel {args.parallel}, "
            f"{args.repeat} repetitions",
            flush=True,
        )

        ray = None  # Ray's process, once it answered; started before the repetitions
        if wanted & {"ray-tasks", "ray-data"}:
            peer = PeerProcess(
                "Ray", ray_peer, args.parallel, model, files["input"], work, args.output,
                args.ray_task_rows, n,
            )  # fmt: skip
            ray = run_peer("ray", lambda: stack.enter_context(peer))

        runs = Runs(args.repeat, "rows", 34)
        note, say = runs.note, runs.say

        for rep in range(1, args.repeat + 1):
            if "one-process" in wanted:
                out = work / f"one-process-results.{args.output}"
                note(rep, one, run_one_process(model, files["input"], out, n))
                fresh_out = work / f"fresh-results.{args.output}"
                note(rep, fresh, run_fresh_script(model, files["input"], fresh_out, work))
            for i, variant in enumerate(variants):
                run = variant.time(
                    work=work,
                    name=f"batchserve{i}-{rep}",
                    parallel=args.parallel,
                    publish=publisher(model),
                    source=files["input"],
                    small_source=files["small"],
                    small_count=small_count,
                    out=work / f"batchserve-results.{args.output}",
                    chunk_size=args.chunk_size,
                )
                say(rep, variant.side, run.wall)
                print(f"      {run.describe()}", flush=True)
            if ray is not None and "ray-tasks" in wanted:
                note(rep, ray_tasks, ray.call("tasks"))
            if ray is not None and "ray-data" in wanted:
                note(rep, ray_data, ray.call("data"))

        if one.runs and variants:
            same_results(work, args.output)

    target = Target(">= 0.67 (within 1.5x); goal > 1 (faster)", lambda r: r >= 1 / 1.5)
    others = [(one, target), (fresh, target), (ray_tasks, None), (ray_data, None)]
    report(args, cold.side, small.side, variants, [(s, t) for s, t in others if s.runs])
    return 0


def same_results(work: Path, output: str) -> None:
    """Exit unless batchserve's ``p`` matches the one process's (to float rounding)."""
    import numpy as np
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    read = pq.read_table if output == "parquet" else pacsv.read_csv
    ours = read(work / f"batchserve-results.{output}")
    theirs = read(work / f"one-process-results.{output}")
    if ours.column_names != ["p"] or not np.allclose(
        ours.column("p").to_numpy(), theirs.column("p").to_numpy(), rtol=1e-9, atol=1e-12
    ):
        sys.exit(f"batchserve's results ({ours.column_names}) differ from the one process's.")
    print(f"  checked: batchserve's results hold the one process's {ours.num_rows:,} results")


def report(
    args: argparse.Namespace,
    cold: Side,
    small: Side,
    variants: list[Variant],
    others: list[tuple[Side, Target | None]],
) -> None:
    print()
    print(
        f"Vectorized LogisticRegression.predict_proba, {args.rows:,} rows, CSV in, "
        f"{args.output} of `p` out, parallel {args.parallel}, median of {args.repeat} "
        f"repetitions ({machine()}; "
        f"{versions(['batchserve', 'scikit-learn', 'ray', 'pandas', 'pyarrow'])})"
    )
    print()
    print(comparison_table(cold, small, others, "rows").render())
    print()
    print(
        "side ÷ batchserve: the side's median seconds per row over batchserve's (best runs in "
        "parentheses); above 1, batchserve is faster. Targets are judged on the medians."
    )
    for side, target in others:
        if target is None:
            continue
        goal = [time_ratio(side, base) for base in (cold, small)]
        cold_met, small_met = ("-" if g is None else "met" if g > 1 else "not yet" for g in goal)
        print(
            f"Goal, faster than the {side.name}: cold {cold_met}, after a small batch {small_met}."
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
