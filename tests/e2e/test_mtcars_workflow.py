"""The ML Server batch workflow of the mtcars guide, in Python, against a real server."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from batchserve import BatchState, Client

from .conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MTCARS = ROOT / "examples" / "data" / "mtcars.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def client(any_deployment: ServerProcess):  # type: ignore[no-untyped-def]
    """The workflow runs on each executor: the local pool on a folder, Ray actors on S3, and
    compute nodes behind an API node."""
    with Client(any_deployment.url, username="admin", password=ADMIN_PASSWORD) as c:
        yield c


def _fit(mtcars: pd.DataFrame):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=math.inf, solver="lbfgs", max_iter=10_000, tol=1e-10)
    return model.fit(mtcars[["hp", "wt"]].to_numpy(), mtcars["am"].to_numpy())


def manual_transmission(hp: float, wt: float) -> float:
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().hist(hp_values, bins=10, color="red")  # noqa: F821 - an object of the service
    fig.savefig("Histogram.png")
    return float(cars_model.predict_proba([[hp, wt]])[0, 1])  # noqa: F821 - the service's model


def test_the_mtcars_workflow_publishes_consumes_and_batches(client, unique_name, tmp_path):  # type: ignore[no-untyped-def]
    mtcars = pd.read_csv(MTCARS)
    model = _fit(mtcars)
    svc = client.publish_service(
        unique_name,
        code=manual_transmission,
        models={"cars_model": model},
        objects={"hp_values": mtcars["hp"].tolist()},
        inputs={"hp": float, "wt": float},
        outputs={"answer": float},
        artifacts=["Histogram.png"],
        version="v1.0.0",
    )

    res = svc.consume(hp=120, wt=2.8)
    assert res.error in (None, "")
    assert res.output("answer") == pytest.approx(0.6418125, abs=1e-4)
    assert res.artifacts == ["Histogram.png"]
    assert res.artifact("Histogram.png").startswith(PNG_MAGIC)
    assert svc.manual_transmission(120, 2.8).output("answer") == pytest.approx(0.6418, abs=1e-4)

    svc = client.get_service(unique_name, version="v1.0.0")
    batch = svc.batch(mtcars[["hp", "wt"]], parallel_count=10).start()
    assert batch.execution_id
    assert batch.execution_id in svc.list_batch_executions()

    seen_partial = []
    deadline = time.monotonic() + 120
    while True:
        resp = batch.results(show_partial_results=True)
        seen_partial.append(resp.completed_item_count)
        assert resp.state != BatchState.failed
        if resp.state == batch.STATE.complete:
            break
        if time.monotonic() > deadline:
            pytest.fail("the batch did not finish in two minutes")
        time.sleep(0.2)
    assert resp.total_item_count == 32
    assert resp.completed_item_count == 32
    assert seen_partial == sorted(seen_partial)

    expected = model.predict_proba(mtcars[["hp", "wt"]].to_numpy())[:, 1]
    for i in range(resp.total_item_count):
        execution = resp.execution(i)
        assert execution.output("answer") == pytest.approx(expected[i], abs=1e-9)
        files = batch.list_artifacts(i)
        assert files == ["Histogram.png"]
        assert batch.artifact(i, "Histogram.png").startswith(PNG_MAGIC)
    dest = tmp_path / "downloads"
    dest.mkdir()
    paths = batch.download(5, "Histogram.png", destination=str(dest))
    assert [Path(p).name for p in paths] == ["Histogram.png"]
    assert Path(paths[0]).read_bytes().startswith(PNG_MAGIC)

    frame = resp.to_pandas()
    assert list(frame["index"]) == list(range(32))
    assert set(frame["status"]) == {"succeeded"}
    assert frame["answer"].to_numpy() == pytest.approx(expected, abs=1e-9)

    again = svc.get_batch(batch.execution_id).results()
    assert again.state is BatchState.COMPLETED
    client.delete_service(unique_name, version="v1.0.0")


def test_the_mtcars_example_script_runs_against_a_server(server, tmp_path):  # type: ignore[no-untyped-def]
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "mtcars.py"),
            "--url",
            server.url,
            "--password",
            ADMIN_PASSWORD,
            "--output-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0.64181" in out.stdout
    downloaded = sorted(tmp_path.rglob("Histogram.png"))
    assert len(downloaded) >= 32
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in downloaded)
