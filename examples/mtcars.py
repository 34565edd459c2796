"""Publish a model as a web service and score a data set with an asynchronous batch.

The Python version of the classic ML Server walkthrough: fit a logistic regression that gives
the probability of a car having a manual transmission from its horsepower and weight, publish
it as the service ``mtService<timestamp>`` version ``v1.0.0``, call it once, then run a batch
over all 32 cars of ``mtcars``, watch it, and collect every record's answer and plot.

Start a server first (``./scripts/start``), then::

    .venv/bin/python examples/mtcars.py [--url URL] [--username admin] [--password PW | --token T]
                                        [--output-dir DIR] [--keep]

The password defaults to $BATCHSERVE_PASSWORD, else to the admin password file the server writes
(``~/.batchserve/admin-password``, or ``$BATCHSERVE_HOME/admin-password``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression

from batchserve import BatchState, Client

DATA_FILE = Path(__file__).resolve().parent / "data" / "mtcars.csv"
VERSION = "v1.0.0"

# The service function reads these two globals. On the server the worker sets them from
# publish_service(models=..., objects=...); main() sets them here to try the function locally.
cars_model: LogisticRegression
hp_values: list[float]


def manual_transmission(hp: float, wt: float) -> float:
    """Probability that a car with this horsepower and weight has a manual transmission."""
    # --- Build a plot to demonstrate files in results ---
    # A bare Figure renders with the Agg backend: no display and no pyplot state needed.
    fig = Figure()
    ax = fig.subplots()
    ax.hist(hp_values, bins=10, color="red")
    ax.set_xlabel("Horsepower")
    ax.set_title("Histogram of Horsepower")
    fig.savefig("Histogram.png", transparent=True)

    # --- Predict and return the answer ---
    return float(cars_model.predict_proba([[hp, wt]])[0, 1])


def fit_cars_model(mtcars: pd.DataFrame) -> LogisticRegression:
    """The equivalent of R's ``glm(am ~ hp + wt, data = mtcars, family = binomial)``."""
    # glm fits without a penalty; C=inf says that in every scikit-learn release from 1.4 on
    # (penalty=None does too, but is deprecated since 1.8). The tight tol reproduces glm's
    # coefficients to about 7 digits.
    model = LogisticRegression(C=math.inf, solver="lbfgs", max_iter=10_000, tol=1e-10)
    # Plain arrays, so that predict_proba([[hp, wt]]) in the service gets no feature-name warning.
    return model.fit(mtcars[["hp", "wt"]].to_numpy(), mtcars["am"].to_numpy())


def read_admin_password() -> str | None:
    """The password the server wrote for its admin user, if this machine runs the server."""
    home = Path(os.environ.get("BATCHSERVE_HOME") or Path.home() / ".batchserve")
    path = home / "admin-password"
    return path.read_text().strip() if path.is_file() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Publish the mtcars model as a service and score all 32 cars in a batch."
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("BATCHSERVE_URL", "http://127.0.0.1:8000"),
        help="server address (default: $BATCHSERVE_URL or http://127.0.0.1:8000)",
    )
    parser.add_argument("--username", default="admin")
    parser.add_argument(
        "--password",
        default=os.environ.get("BATCHSERVE_PASSWORD"),
        help="default: $BATCHSERVE_PASSWORD, else the server's admin-password file",
    )
    parser.add_argument("--token", help="an access token to use instead of a password")
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="where to write Histogram.png and the downloaded artifacts (default: a new temp dir)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the published service (default: delete it)",
    )
    return parser.parse_args(argv)


def connect(args: argparse.Namespace) -> Client:
    if args.token:
        return Client(args.url, token=args.token)
    password = args.password or read_admin_password()
    if password is None:
        sys.exit(
            "No password: pass --password or --token, set BATCHSERVE_PASSWORD, or run this on "
            "the server's machine, where ~/.batchserve/admin-password holds the admin password."
        )
    return Client(args.url, username=args.username, password=password)


def main(argv: list[str] | None = None) -> int:
    global cars_model, hp_values

    args = parse_args(argv)
    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="mtcars-"))
    output_dir.mkdir(parents=True, exist_ok=True)

    ##########################################################################
    #              Create & test a logistic regression model                 #
    ##########################################################################
    mtcars = pd.read_csv(DATA_FILE)
    cars_model = fit_cars_model(mtcars)
    hp_values = mtcars["hp"].astype(float).tolist()

    # Try the function locally first (it writes Histogram.png into the output directory).
    with contextlib.chdir(output_dir):
        local_answer = manual_transmission(120, 2.8)
    print(f"local prediction for hp=120, wt=2.8: {local_answer:.7f}")  # 0.6418125

    ##########################################################################
    #                 Log in and publish the model as a service              #
    ##########################################################################
    client = connect(args)

    # A unique name, so that the example can run again without a name+version conflict.
    service_name = f"mtService{int(time.time())}"
    svc = client.publish_service(
        service_name,
        code=manual_transmission,
        # The function runs in a worker process, which has neither this script's data file nor
        # its state: whatever the function reads besides its arguments travels with the service.
        models={"cars_model": cars_model},
        objects={"hp_values": hp_values},
        inputs={"hp": float, "wt": float},
        outputs={"answer": float},
        artifacts=["Histogram.png"],
        version=VERSION,
        description="Probability of a manual transmission from horsepower and weight (mtcars)",
    )
    print(f"published {service_name} {VERSION}")

    try:
        # Consume the service once, request-response style. The same call reads
        # svc.manual_transmission(120, 2.8): the service has a method named after the function.
        result = svc.consume(hp=120, wt=2.8)
        if result.error:
            raise RuntimeError(f"the service failed: {result.error}")
        print(f"service answer: {result.output('answer'):.7f}, artifacts: {result.artifacts}")

        run_batch(client, service_name, mtcars, output_dir)
    finally:
        if args.keep:
            print(f"kept {service_name} {VERSION}")
        else:
            client.delete_service(service_name, version=VERSION)
            print(f"deleted {service_name} {VERSION}")
    return 0


def run_batch(client: Client, service_name: str, mtcars: pd.DataFrame, output_dir: Path) -> None:
    ##########################################################################
    #                  Batch-consume the service                             #
    ##########################################################################
    svc = client.get_service(service_name, version=VERSION)

    # One record per car: the service's inputs, hp and wt. A list of dicts, a dict of columns or
    # the path of a CSV/TSV file work as well as a DataFrame.
    records = mtcars[["hp", "wt"]].astype(float)

    # parallel_count: how many records may be scored at the same time (default 10).
    batch = svc.batch(records, parallel_count=10)
    batch = batch.start()
    print(f"batch started: execution id {batch.execution_id}")
    # To find it again later: svc.get_batch(execution_id), or svc.list_batch_executions().
    # To stop it: batch.cancel() (the records finished so far keep their results).

    # Poll the results until the batch completes or fails. (batch.wait() does this in one call.)
    while True:
        response = batch.results(show_partial_results=True)
        if response.state in (BatchState.FAILED, BatchState.CANCELLED):
            raise RuntimeError(f"Batch execution {response.state}")
        if response.state == BatchState.COMPLETED:
            break
        print(
            f"Polling for the batch to complete... {response.completed_item_count}"
            f"/{response.total_item_count} records done ({response.state})"
        )
        time.sleep(1)
    print(f"batch completed: {response.total_item_count} records")

    ##########################################################################
    #                 Every record's artifacts and answer                    #
    ##########################################################################
    artifacts_dir = output_dir / "artifacts"
    for i in range(response.total_item_count):  # record indexes are 0-based
        # 1. Every artifact that record i produced.
        names = batch.list_artifacts(i)

        # 2. The contents of each.
        for name in names:
            content = batch.artifact(i, name)
            if not content:
                raise RuntimeError(f"Unable to get artifact {name} of record {i}")

        # 3. Download it; every record made a Histogram.png, so each gets its own folder.
        #    (Without a file name, download() fetches all of the record's artifacts.)
        record_dir = artifacts_dir / str(i)
        record_dir.mkdir(parents=True, exist_ok=True)
        batch.download(i, "Histogram.png", destination=record_dir)

        # 4. The record's result: outputs, error, console output.
        execution = response.execution(i)
        if execution.error:
            raise RuntimeError(f"record {i} failed: {execution.error}")

    print(f"artifacts downloaded to {artifacts_dir}")

    # All answers as one table, next to the cars they belong to.
    answers = response.to_pandas()["answer"]
    print(mtcars[["model", "hp", "wt"]].join(answers).to_string(float_format="{:.4f}".format))


if __name__ == "__main__":
    sys.exit(main())
