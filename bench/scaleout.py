"""Scale-out: batchserve's Ray executor and S3 blob store against its local pool and a folder,
and against the plain Ray tasks script on the same Ray cluster, in one run.

Two jobs, each the job of another benchmark, on the same input for every side:

- **row mode** (``row_mode_peers.py``'s): a CSV of ``--records`` records (``hp``, ``wt``),
  ``ratio(hp, wt) = hp / wt`` once per record, a CSV of one column ``r`` out;
- **vectorized** (``vectorized.py``'s): a CSV of ``--rows`` rows of four features,
  ``LogisticRegression.predict_proba`` (fitted before anything is timed), a CSV of ``p`` out.

The sides, each job on ``--parallel`` (P) CPUs:

- **local**: ``batchserve serve --workers P`` (the local executor), batch data in a folder
  (``--blob-url file://...``);
- **ray**: ``batchserve serve --executor ray --ray-address HOST:PORT`` (one actor per slot; no
  ``--workers``, so the slots are the cluster's P CPUs), batch data in a folder;
- **ray-s3**: the same, batch data in S3 (``--blob-url s3://bench/<run>``) on a moto server;
- **ray-tasks**: the plain Ray tasks script of ``row_mode_peers.py`` (one ``@ray.remote`` task
  per 10,000 records) or ``vectorized.py`` (one task per 100,000 rows, passed its pandas slice),
  connected to the same cluster by ``ray.init(address=...)`` (not timed), pyarrow reading and
  writing the files.

Each batchserve side is timed twice in each repetition, each time on a fresh server (a new data
directory and blob store): *cold* (the service just published) and *after a small batch* (a
100-record batch of it run first, not timed; ``--cold-only`` leaves it out), from the upload
(``start()``) until ``export_results`` has written the results file. The Ray cluster
(``ray start --head --num-cpus P`` on 127.0.0.1) and the moto server are started once, before
the repetitions, and stopped at the end; between runs the script waits until no actor holds a
CPU of the cluster. moto is written in Python and serves one request at a time slowly, so the
S3 figures are an upper bound on what S3 costs next to a folder; a real S3 or MinIO is faster.

    .venv/bin/python bench/scaleout.py [--records 1000000] [--rows 2000000] [--repeat 3]

The sides alternate within each repetition; the median of the repetitions counts, the best is
shown beside it. Prints every run as it goes, then, for each job, a table of the sides with
their ratio to the Ray tasks script, the overheads of Ray over local and of S3 over a folder,
and batchserve's stage times.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import row_mode_peers as row_mode
import vectorized
from _common import (
    PASSWORD,
    SMALL_BATCH,
    BatchRun,
    PeerProcess,
    Runs,
    Server,
    Side,
    Skipped,
    Table,
    batchserve_command,
    exit_on_sigterm,
    free_port,
    head_csv,
    machine,
    rate,
    run_peer,
    seconds,
    small_batch,
    stage_table,
    stop_process_group,
    tail,
    time_ratio,
    timed_batch,
    versions,
)

SIDES = ["local", "ray", "ray-s3", "ray-tasks"]
# Ray's own variables, for the cluster, the server (a Ray driver) and the Ray tasks script.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
BUCKET = "bench"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


# --- the Ray cluster and the S3 server -----------------------------------------------------------


class RayCluster:
    """``ray start --head --block`` with P CPUs on 127.0.0.1, in a session of its own: stopping
    it kills that session (its GCS, raylet and workers), never another Ray on the machine."""

    def __init__(self, cpus: int, work: Path) -> None:
        self.cpus = cpus
        self.port = free_port()
        self.log_path = work / "ray.log"
        # Short: Ray's socket paths live under it, and a Unix socket's path has at most 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="bsr-", dir="/tmp")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> RayCluster:
        exit_on_sigterm()
        ray = Path(sys.executable).with_name("ray")
        if not ray.exists():
            raise ImportError(name="ray")
        command = [
            str(ray), "start", "--head", "--block", "--port", str(self.port),
            "--num-cpus", str(self.cpus), "--node-ip-address", "127.0.0.1",
            "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", self.temp_dir,
            "--object-store-memory", str(1024**3),
            # Ports of its own: Ray's fixed defaults would meet another cluster on the machine.
            "--dashboard-agent-listen-port", str(free_port()),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **RAY_ENV},
                start_new_session=True,
            )
        try:
            self._wait()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait(self, timeout: float = 120) -> None:
        """Until a new driver joins the cluster and sees its CPUs (as the server will)."""
        probe = (
            f"import ray; ray.init(address={self.address!r}, log_to_driver=False); "
            "print(int(ray.cluster_resources().get('CPU', 0)))"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise Skipped(f"`ray start` exited:\n{tail(self.log_path)}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                out = subprocess.run(
                    [sys.executable, "-c", probe],
                    capture_output=True,
                    env={**os.environ, **RAY_ENV},
                    timeout=60,
                )
                if out.stdout.split()[-1:] == [str(self.cpus).encode()]:
                    return
            time.sleep(1)
        raise Skipped(f"the Ray cluster did not answer within {timeout} s:\n{tail(self.log_path)}")

    def __exit__(self, *exc: object) -> None:
        stop_process_group(self.process)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class MotoS3:
    """moto's S3 server on 127.0.0.1 with the bucket ``bench``.

    In a process of its own, not a ``ThreadedMotoServer`` here: its Python would share this
    process's GIL with the client being timed.
    """

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.log_path = work / "moto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def environ(self) -> dict[str, str]:
        """The AWS variables that point the server (and its actors) at this one."""
        return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", **S3_KEYS}

    def filesystem(self) -> Any:
        from pyarrow import fs as pafs

        return pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            access_key=S3_KEYS["AWS_ACCESS_KEY_ID"],
            secret_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
            region=S3_KEYS["AWS_REGION"],
            allow_bucket_creation=True,
        )

    def __enter__(self) -> MotoS3:
        import moto.server  # noqa: F401  (skipped with a note when moto is missing)

        exit_on_sigterm()
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise Skipped(f"moto did not start:\n{tail(self.log_path)}") from None
                time.sleep(0.1)
        self.filesystem().create_dir(BUCKET)
        return self

    def remove(self, prefix: str) -> None:
        """Drop a run's objects: moto keeps every object in its memory."""
        with contextlib.suppress(FileNotFoundError, OSError):
            self.filesystem().delete_dir(f"{BUCKET}/{prefix}")

    def __exit__(self, *exc: object) -> None:
        stop_process_group(self.process)


class ScaleoutServer(Server):
    """A ``batchserve serve`` on an executor and blob store of the side's: ``--workers`` only
    where given (on Ray, without it, the slots are the cluster's CPUs)."""

    def __init__(
        self,
        work: Path,
        workers: int | None,
        name: str,
        *,
        executor: str,
        blob_url: str,
        ray_address: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(work, workers or 0, name=name)
        self.workers_option = workers
        self.executor = executor
        self.blob_url = blob_url
        self.ray_address = ray_address
        self.env = env or {}

    def __enter__(self) -> ScaleoutServer:
        exit_on_sigterm()
        env = {
            **os.environ,
            **RAY_ENV,
            **self.env,
            "BATCHSERVE_HOME": str(self.data_dir),
            "BATCHSERVE_ADMIN_PASSWORD": PASSWORD,
        }
        env.pop("AWS_ENDPOINT_URL_S3", None)  # would win over AWS_ENDPOINT_URL
        command = [
            batchserve_command(), "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir),
            "--executor", self.executor, "--blob-url", self.blob_url,
        ]  # fmt: skip
        if self.ray_address is not None:
            command += ["--ray-address", self.ray_address]
        if self.workers_option is not None:
            command += ["--workers", str(self.workers_option)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_for_health()
        except BaseException:
            self._stop()
            raise
        return self


# --- the jobs ------------------------------------------------------------------------------------


@dataclass
class Job:
    """One job every side does: its input, its service, its results column, and the Ray tasks
    script's method on it."""

    key: str  # "rows" or "vectorized": the Ray process's function of it
    title: str
    unit: str
    count: int
    input: Path
    small: Path
    small_count: int
    publish: Callable[[Any], Any]
    column: str
    ray_method: str  # the Ray tasks script, in words
    ray_args: tuple[Any, ...]
    exact: bool  # results compared exactly (row mode) or to float rounding (a model)


@dataclass
class Deployment:
    """A batchserve side: an executor and a blob store, with its runs."""

    key: str  # its --only name
    side: Side
    executor: str  # local or ray
    store: str  # file or s3
    runs: list[BatchRun] = field(default_factory=list)
    small_side: Side | None = None  # after a small batch (None with --cold-only)
    small_runs: list[BatchRun] = field(default_factory=list)


@dataclass
class Place:
    """Where the sides run: the work folder, the Ray cluster and the S3 server (if started)."""

    work: Path
    parallel: int
    chunk_size: int | None
    cluster: RayCluster | None
    s3: MotoS3 | None
    ray: PeerProcess | None  # the Ray tasks script's process, connected to the cluster

    def settle(self) -> None:
        """Wait until the cluster's CPUs are free: a stopped server's actors are killed by
        Ray shortly after, and must not take CPUs from the next side."""
        if self.ray is not None:
            self.ray.call("idle")


def time_batchserve(
    place: Place, job: Job, deployment: Deployment, name: str, after_small: bool
) -> BatchRun:
    """One timed batch of the job on a fresh server of the deployment's (cold, or after a
    small batch); the server's data directory and blob store are removed afterwards."""
    work = place.work
    if deployment.store == "s3":
        assert place.s3 is not None
        blob_url, env = f"s3://{BUCKET}/{name}", place.s3.environ
    else:
        blob_url, env = (work / f"{name}-blobs").as_uri(), {}
    on_ray = deployment.executor == "ray"
    assert not on_ray or place.cluster is not None
    server = ScaleoutServer(
        work,
        None if on_ray else place.parallel,
        name,
        executor=deployment.executor,
        blob_url=blob_url,
        ray_address=place.cluster.address if on_ray and place.cluster else None,
        env=env,
    )
    try:
        with server:
            client = server.client()
            try:
                service = job.publish(client)
                if after_small:
                    small_batch(service, job.small, place.parallel, job.small_count)
                return timed_batch(
                    service,
                    job.input,
                    parallel=place.parallel,
                    expected=job.count,
                    out=work / f"{job.key}-{deployment.key}-results.csv",
                    columns=[job.column],
                    chunk_size=place.chunk_size,
                )
            finally:
                client.close()
    finally:
        shutil.rmtree(server.data_dir, ignore_errors=True)
        shutil.rmtree(work / f"{name}-blobs", ignore_errors=True)
        if deployment.store == "s3" and place.s3 is not None:
            place.s3.remove(name)
        place.settle()


# --- the Ray tasks script, in a process of its own -----------------------------------------------


def ray_peer(address: str, model: Any) -> dict[str, Callable[..., float]]:
    """Joins the cluster (``ray.init(address=...)``, not timed): the two jobs' Ray tasks
    scripts, as ``row_mode_peers.py`` and ``vectorized.py`` run them, and a wait for idle CPUs."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    # The cluster's workers cannot import these scripts (bench/ is not on their path), so
    # their functions travel by value, as they would from a script run directly.
    for module in (ray_peer.__module__, row_mode.__name__, vectorized.__name__):
        ray.cloudpickle.register_pickle_by_value(sys.modules[module])

    @ray.remote
    def ratio_each(hps: list[float], wts: list[float]) -> list[float]:
        return [row_mode.ratio(h, w) for h, w in zip(hps, wts, strict=True)]

    def rows(input_csv: Path, out: Path, step: int, expected: int) -> float:
        start = time.perf_counter()
        hp, wt = row_mode.read_columns(input_csv)
        refs = [
            ratio_each.remote(hp[i : i + step], wt[i : i + step]) for i in range(0, len(hp), step)
        ]
        rs = [r for part in ray.get(refs) for r in part]
        row_mode.write_results(rs, out)
        elapsed = time.perf_counter() - start
        row_mode.expect(len(rs), expected, "Ray tasks")
        return elapsed

    predict = vectorized.predictor(model) if model is not None else None

    @ray.remote
    def predict_part(part: pd.DataFrame) -> Any:
        assert predict is not None
        return predict(part)

    def scores(input_csv: Path, out: Path, step: int, expected: int) -> float:
        start = time.perf_counter()
        frame = pacsv.read_csv(input_csv).to_pandas()
        refs = [predict_part.remote(frame.iloc[i : i + step]) for i in range(0, len(frame), step)]
        p = np.concatenate(ray.get(refs))
        vectorized.write_table(pa.table({"p": p}), out)
        elapsed = time.perf_counter() - start
        row_mode.expect(len(p), expected, "Ray tasks")
        return elapsed

    def idle(timeout: float = 60) -> float:
        start = time.perf_counter()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            total = ray.cluster_resources().get("CPU", 0)
            if total and ray.available_resources().get("CPU", 0) >= total:
                break
            time.sleep(0.2)
        return time.perf_counter() - start

    return {"rows": rows, "vectorized": scores, "idle": idle}


# --- the run -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="batchserve on Ray and S3 against its local pool and the Ray tasks script."
    )
    parser.add_argument("--records", type=int, default=1_000_000, help="row-mode records")
    parser.add_argument("--rows", type=int, default=2_000_000, help="vectorized rows")
    parser.add_argument("--parallel", type=int, default=2, help="workers, and the cluster's CPUs")
    parser.add_argument(
        "--repeat", type=int, default=3, help="repetitions of every side; the median counts"
    )
    parser.add_argument("--ray-task-records", type=int, default=10_000, help="records per task")
    parser.add_argument("--ray-task-rows", type=int, default=100_000, help="rows per Ray task")
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="batchserve chunk size (server's choice)"
    )
    parser.add_argument(
        "--cold-only",
        action="store_true",
        help="time batchserve cold only, not also after a 100-record batch",
    )
    parser.add_argument("--skip-rows", action="store_true", help="leave out the row-mode job")
    parser.add_argument(
        "--skip-vectorized", action="store_true", help="leave out the vectorized job"
    )
    parser.add_argument(
        "--only", nargs="*", default=None, choices=SIDES, help="run only these sides"
    )
    args = parser.parse_args(argv)
    wanted = set(args.only or SIDES)
    exit_on_sigterm()
    os.environ.update(RAY_ENV)  # for the Ray tasks script's process, spawned from this one

    model = None
    if not args.skip_vectorized:
        try:
            model = vectorized.fit_model()
        except ImportError as exc:
            print(f"skipped: the vectorized job needs scikit-learn ({exc.name} is not installed)")
            args.skip_vectorized = True

    with (
        tempfile.TemporaryDirectory(prefix="batchserve-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        jobs = make_jobs(args, work, model)
        print(
            f"scale-out: {', '.join(f'{j.title} ({j.count:,} {j.unit})' for j in jobs)}; "
            f"parallel {args.parallel}, {args.repeat} repetitions; sides: "
            f"{', '.join(s for s in SIDES if s in wanted)}",
            flush=True,
        )

        cluster = None
        if wanted & {"ray", "ray-s3", "ray-tasks"}:
            cluster = run_peer(
                "Ray cluster", lambda: stack.enter_context(RayCluster(args.parallel, work))
            )
        if cluster is not None:
            print(f"  Ray cluster at {cluster.address}, {args.parallel} CPUs", flush=True)
        s3 = None
        if "ray-s3" in wanted and cluster is not None:
            s3 = run_peer("S3 (moto)", lambda: stack.enter_context(MotoS3(work)))
        if s3 is not None:
            print(f"  moto S3 server at 127.0.0.1:{s3.port} (pure Python, slow)", flush=True)
        ray = None
        if cluster is not None:
            peer = PeerProcess("Ray tasks", ray_peer, cluster.address, model)
            ray = run_peer("ray-tasks", lambda: stack.enter_context(peer))
        place = Place(work, args.parallel, args.chunk_size, cluster, s3, ray)

        available = {"local": True, "ray": cluster is not None, "ray-s3": s3 is not None}
        reports = []
        for job in jobs:
            deployments = make_deployments(job, not args.cold_only)
            deployments = [d for d in deployments if d.key in wanted and available[d.key]]
            ray_tasks = Side(f"Ray tasks script ({job.ray_method.split(':')[0]})", job.count)
            run_job(args, place, job, deployments, ray_tasks if "ray-tasks" in wanted else None)
            check_results(work, job, deployments, ray_tasks)
            reports.append((job, deployments, ray_tasks))

    for job, deployments, ray_tasks in reports:
        report(args, job, deployments, ray_tasks)
    return 0


def make_jobs(args: argparse.Namespace, work: Path, model: Any) -> list[Job]:
    jobs = []
    if not args.skip_rows:
        source, small = work / "records.csv", work / "records-small.csv"
        row_mode.write_input(source, args.records)
        step = args.ray_task_records
        jobs.append(
            Job(
                key="rows",
                title="row mode, `ratio(hp, wt) = hp / wt`",
                unit="records",
                count=args.records,
                input=source,
                small=small,
                small_count=head_csv(source, small, SMALL_BATCH),
                publish=row_mode.publish,
                column="r",
                ray_method=(
                    f"row_mode_peers.py's method, {step:,} records per task: pyarrow reads the "
                    f"CSV into two lists, one @ray.remote task per {step:,} records returns "
                    "[ratio(h, w) ...] of its slices, ray.get, pyarrow writes `r`"
                ),
                ray_args=(step,),
                exact=True,
            )
        )
    if not args.skip_vectorized:
        source, small = work / "rows.csv", work / "rows-small.csv"
        vectorized.write_input(source, args.rows)
        step = args.ray_task_rows
        jobs.append(
            Job(
                key="vectorized",
                title="vectorized LogisticRegression.predict_proba",
                unit="rows",
                count=args.rows,
                input=source,
                small=small,
                small_count=head_csv(source, small, SMALL_BATCH),
                publish=vectorized.publisher(model),
                column="p",
                ray_method=(
                    f"vectorized.py's method, {step:,} rows per task: pyarrow reads the CSV into "
                    f"a pandas frame, one @ray.remote task per frame.iloc slice of {step:,} rows "
                    "returns its predict_proba, ray.get, np.concatenate, pyarrow writes `p`"
                ),
                ray_args=(step,),
                exact=False,
            )
        )
    return jobs


def make_deployments(job: Job, after_small: bool) -> list[Deployment]:
    names = {
        "local": ("batchserve local executor, file:// store", "local", "file"),
        "ray": ("batchserve Ray executor, file:// store", "ray", "file"),
        "ray-s3": ("batchserve Ray executor, S3 store (moto)", "ray", "s3"),
    }
    deployments = []
    for key, (name, executor, store) in names.items():
        small = Side(f"{name}, after a small batch", job.count) if after_small else None
        deployments.append(
            Deployment(key, Side(name, job.count), executor, store, small_side=small)
        )
    return deployments


def run_job(
    args: argparse.Namespace,
    place: Place,
    job: Job,
    deployments: list[Deployment],
    ray_tasks: Side | None,
) -> None:
    print(f"{job.title}: {job.count:,} {job.unit}", flush=True)
    runs = Runs(args.repeat, job.unit, 56)
    for rep in range(1, args.repeat + 1):
        for deployment in deployments:
            kinds = [(deployment.side, deployment.runs, False)]
            if deployment.small_side is not None:
                kinds.append((deployment.small_side, deployment.small_runs, True))
            for side, done, after_small in kinds:
                name = f"{job.key}-{deployment.key}{'-small' if after_small else ''}-{rep}"
                run = time_batchserve(place, job, deployment, name, after_small)
                done.append(run)
                runs.note(rep, side, run.wall)
                print(f"      {run.describe()}", flush=True)
        if ray_tasks is not None and place.ray is not None:
            out = place.work / f"{job.key}-ray-tasks-results.csv"
            elapsed = place.ray.call(job.key, job.input, out, *job.ray_args, job.count)
            runs.note(rep, ray_tasks, elapsed)


def check_results(work: Path, job: Job, deployments: list[Deployment], ray_tasks: Side) -> None:
    """Exit unless every batchserve side's results file holds the Ray tasks script's results
    (or, without it, the first side's): the same values, exactly in row mode, to float
    rounding for the model."""
    import numpy as np
    import pyarrow.csv as pacsv

    files = [work / f"{job.key}-{d.key}-results.csv" for d in deployments if d.runs]
    reference = work / f"{job.key}-ray-tasks-results.csv"
    if not ray_tasks.runs:
        if not files:
            return
        reference = files.pop(0)
    theirs = pacsv.read_csv(reference).column(job.column)
    for path in files:
        ours = pacsv.read_csv(path)
        if ours.column_names != [job.column]:
            sys.exit(f"{path.name} holds {ours.column_names}, not [{job.column!r}].")
        column = ours.column(job.column)
        same = (
            column.equals(theirs)
            if job.exact
            else np.allclose(column.to_numpy(), theirs.to_numpy(), rtol=1e-9, atol=1e-12)
        )
        if not same:
            sys.exit(f"{path.name} differs from {reference.name}.")
    if files:
        names = ", ".join(p.name for p in files)
        print(f"  checked: {names}: the {theirs.length():,} results of {reference.name}")


def report(
    args: argparse.Namespace, job: Job, deployments: list[Deployment], ray_tasks: Side
) -> None:
    print()
    print(
        f"{job.title[0].upper()}{job.title[1:]}, {job.count:,} {job.unit}, CSV in, CSV of "
        f"`{job.column}` out, parallel {args.parallel} (local: --workers {args.parallel}; Ray: a "
        f"local cluster of {args.parallel} CPUs), median of {args.repeat} repetitions, each "
        f"batchserve run on a fresh server ({machine()}; "
        f"{versions(['batchserve', 'ray', 'moto', 'scikit-learn', 'pandas', 'pyarrow'])})"
    )
    print()
    sides: list[Side] = []
    for d in deployments:
        sides += [d.side] + ([d.small_side] if d.small_side is not None else [])
    sides = [s for s in sides if s.runs]
    if ray_tasks.runs:
        sides.append(ray_tasks)
    table = Table(
        ["side", "median s", "best s", f"{job.unit}/s (median)", "side ÷ Ray tasks script"]
    )
    for side in sides:
        table.add(
            side.name if side is ray_tasks else f"**{side.name}**",
            seconds(side.median),
            seconds(side.best),
            rate(side.records, side.median),
            ratio(side, ray_tasks),
        )
    print(table.render())
    if ray_tasks.runs:
        print()
        print(
            "side ÷ Ray tasks script: the side's median seconds over the script's (best runs in "
            "parentheses); above 1, the Ray tasks script is faster."
        )
        print(f"Ray tasks script: {job.ray_method}; ray.init(address=...) on the same cluster.")

    by_key = {d.key: d for d in deployments}
    overheads = Table(["overhead", "ratio of medians (best)"])
    pairs = [
        ("Ray executor ÷ local executor (file:// store)", "ray", "local"),
        ("S3 store (moto) ÷ file:// store (Ray executor)", "ray-s3", "ray"),
        ("Ray executor and S3 (moto) ÷ local executor and file://", "ray-s3", "local"),
    ]
    for words, a, b in pairs:
        if a in by_key and b in by_key:
            overheads.add(words, ratio(by_key[a].side, by_key[b].side))
            small_a, small_b = by_key[a].small_side, by_key[b].small_side
            if small_a is not None and small_b is not None:
                overheads.add(f"{words}, after a small batch", ratio(small_a, small_b))
    if overheads.rows:
        print()
        print(overheads.render())
        if "ray-s3" in by_key:
            print()
            print(
                "moto is a pure-Python S3 server that serves requests slowly: the S3 overhead "
                "here is an upper bound on what S3 costs next to a folder."
            )
    stages: dict[str, list[BatchRun]] = {}
    for d in deployments:
        stages[d.key] = d.runs
        if d.small_side is not None:
            stages[f"{d.key}, after a small batch"] = d.small_runs
    if any(stages.values()):
        print()
        print(stage_table(stages).render())


def ratio(side: Side, base: Side) -> str:
    median, best = time_ratio(side, base), time_ratio(side, base, best=True)
    return "-" if median is None else f"{median:.2f} ({seconds(best)})"


if __name__ == "__main__":
    sys.exit(main())
