"""Chunks cut to measure on a real server: a small batch first does not make the next big one
run in tiny chunks, a batch says where its time went, and exports keep the columns asked for."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import httpx
import numpy as np
import pytest

from batchserve import BatchState
from batchserve.errors import BadRequestError

pytestmark = pytest.mark.e2e

BIG = 300_000
# A trivial function costs well under a microsecond a record and a chunk some milliseconds:
# under the 5% rule a batch of BIG records is a handful of chunks. Cut from a time per record
# measured on small chunks (mostly fixed cost), it would be hundreds.
FEW_CHUNKS = 12


def ratio(hp: float, wt: float) -> float:
    return hp / wt


def ratios(frame):  # type: ignore[no-untyped-def]
    return frame["hp"] / frame["wt"]


@pytest.fixture
def service(client, unique_name):  # type: ignore[no-untyped-def]
    """A row-mode ``ratio`` service of the test's own, version v1."""
    return client.publish_service(
        unique_name,
        code=ratio,
        inputs={"hp": float, "wt": float},
        outputs={"r": float},
        version="v1",
    )


def records(n: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(n)
    return {
        "hp": rng.uniform(50, 300, n).round(1).tolist(),
        "wt": rng.uniform(1.5, 5.5, n).round(3).tolist(),
    }


def chunk_table(server, batch_id: str) -> list[tuple[int, float]]:  # type: ignore[no-untyped-def]
    """A batch's chunks as (records, seconds from start to finish), in the order they ran."""
    with sqlite3.connect(server.home / "batchserve.db") as db:
        rows = db.execute(
            "SELECT count, (julianday(finished_at) - julianday(started_at)) * 86400 "
            "FROM chunks WHERE batch_id = ? ORDER BY started_at",
            (batch_id,),
        ).fetchall()
    return [(n, round(seconds or 0.0, 4)) for n, seconds in rows]


@pytest.mark.parametrize("vectorized", [False, True], ids=["row", "vectorized"])
def test_after_a_small_batch_a_big_one_still_gets_a_few_large_chunks(
    client, server, unique_name, vectorized
):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name,
        code=ratios if vectorized else ratio,
        inputs={"hp": float, "wt": float},
        outputs={"r": float},
        vectorized=vectorized,
        version="v1",
    )
    small = svc.batch(records(100), parallel_count=2).start().wait(timeout=120)
    assert small.state is BatchState.COMPLETED
    batch = svc.batch(records(BIG), parallel_count=2).start()
    done = batch.wait(timeout=300)
    assert done.state is BatchState.COMPLETED
    assert done.completed_item_count == BIG
    chunks = batch.refresh().data["chunk_count"]
    assert 2 <= chunks <= FEW_CHUNKS, (
        f"{BIG:,} records ran in {chunks} chunks: "
        f"{chunk_table(server, small.execution_id)} then {chunk_table(server, batch.execution_id)}"
    )
    assert batch.data["chunk_size"] is None  # cut to measure, not asked for


def test_a_batch_tells_where_its_time_went(service, tmp_path):  # type: ignore[no-untyped-def]
    svc = service
    batch = svc.batch(records(20_000), parallel_count=2).start()
    batch.wait(timeout=120)
    stats = batch.info().job_statistics
    assert stats.ingest_seconds is not None and stats.ingest_seconds > 0
    assert stats.queue_seconds is not None and stats.queue_seconds >= 0
    assert stats.run_seconds > 0
    assert stats.export_seconds is None  # nothing exported yet
    batch.export_results(tmp_path / "all.parquet")
    assert batch.info().job_statistics.export_seconds > 0


def test_an_export_keeps_only_the_columns_asked_for_in_their_order(service, tmp_path):  # type: ignore[no-untyped-def]
    svc = service
    given = records(1_000)
    batch = svc.batch(given, parallel_count=2).start()
    batch.wait(timeout=120)
    path = Path(batch.export_results(tmp_path / "r.csv", columns=["r", "index"]))
    with path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["r", "index"]
    assert [int(r[1]) for r in rows[1:]] == list(range(1_000))
    expected = [hp / wt for hp, wt in zip(given["hp"], given["wt"], strict=True)]
    assert [float(r[0]) for r in rows[1:]] == pytest.approx(expected)
    with pytest.raises(BadRequestError) as refused:
        batch.export_results(tmp_path / "bad.csv", columns=["index", "answer"])
    assert "'answer'" in str(refused.value) and "index, status, r" in str(refused.value)
    assert not (tmp_path / "bad.csv").exists()


def test_a_rest_export_with_an_unknown_column_is_a_clear_400(client, service, server):  # type: ignore[no-untyped-def]
    svc = service
    batch = svc.batch(records(10)).start()
    batch.wait(timeout=120)
    r = httpx.get(
        f"{server.url}/v1/batches/{batch.execution_id}/results",
        params={"format": "csv", "columns": "index,nope"},
        headers={"Authorization": f"Bearer {client.token}"},
    )
    assert r.status_code == 400
    assert "'nope'" in r.json()["error"]["message"]


def test_a_started_batch_runs_its_stored_records_while_the_upload_goes_on(
    client, service, unique_name, server
):  # type: ignore[no-untyped-def]
    import sqlite3
    import threading
    import time

    svc = service
    head = b"hp,wt\n" + b"".join(b"%d,2.0\n" % i for i in range(1, 1_200_001))
    tail = b"".join(b"%d,4.0\n" % i for i in range(10))
    released = threading.Event()

    def body():  # type: ignore[no-untyped-def]
        yield head  # several parts' worth
        released.wait(60)  # the rest of the upload comes only when the test says
        yield tail

    answer: list[httpx.Response] = []

    def upload() -> None:
        answer.append(
            httpx.post(
                f"{server.url}/v1/services/{unique_name}/v1/batches",
                params={"parallel_count": 2},
                content=body(),
                headers={
                    "Content-Type": "text/csv",
                    "Authorization": f"Bearer {client.token}",
                },
                timeout=120,
            )
        )

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        db = server.home / "batchserve.db"
        deadline = time.monotonic() + 60
        ran = 0
        while time.monotonic() < deadline:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                rows = conn.execute(
                    "SELECT b.sealed, coalesce(sum(c.succeeded), 0) FROM batches b "
                    "JOIN chunks c ON c.batch_id = b.id WHERE b.sealed = 0 GROUP BY b.id"
                ).fetchall()
            ran = rows[0][1] if rows else 0
            if ran:
                break
            time.sleep(0.05)
        assert ran > 0, "no record ran before the upload ended"
    finally:
        released.set()
        uploader.join(timeout=120)
    assert answer and answer[0].status_code == 201, answer and answer[0].text
    done = svc.get_batch(answer[0].json()["id"]).wait(timeout=120)
    assert done.state is BatchState.COMPLETED
    assert done.total_item_count == done.completed_item_count == 1_200_010
    frame = done.to_pandas()
    assert frame["index"].tolist() == list(range(1_200_010))
    assert frame["r"].iloc[-1] == pytest.approx(9 / 4.0)
    assert frame["r"].iloc[0] == pytest.approx(1 / 2.0)


def test_an_upload_refused_halfway_leaves_nothing_even_if_its_first_records_ran(
    client, service, unique_name, server
):  # type: ignore[no-untyped-def]
    import time

    svc = service

    def body():  # type: ignore[no-untyped-def]
        yield b"hp,wt\n" + b"".join(b"%d,2.0\n" % i for i in range(1_200_000))
        time.sleep(1.0)  # time for the stored records to start running
        yield b"1,2,3\n"  # a line of three fields: a malformed file

    r = httpx.post(
        f"{server.url}/v1/services/{unique_name}/v1/batches",
        params={"parallel_count": 2},
        content=body(),
        headers={"Content-Type": "text/csv", "Authorization": f"Bearer {client.token}"},
        timeout=120,
    )
    assert r.status_code == 400, r.text
    assert "Expected 2 columns" in r.json()["error"]["message"]
    import sqlite3

    def left() -> tuple[int, set[str]]:
        with sqlite3.connect(f"file:{server.home / 'batchserve.db'}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT count(*) FROM batches WHERE service_id = "
                "(SELECT id FROM services WHERE name = ?)",
                (unique_name,),
            ).fetchone()[0]
            ids = {r[0] for r in db.execute("SELECT id FROM batches")}
        folders = {p.name for p in (server.home / "blobs" / "batches").iterdir()}
        return rows, folders - ids

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and left() != (0, set()):
        time.sleep(0.1)
    assert left() == (0, set())  # no row of it, and no files without a row
    assert list(svc.list_batches()) == []


def test_workers_load_a_service_as_it_is_published(server, client, unique_name):  # type: ignore[no-untyped-def]
    import time
    from pathlib import Path

    def init() -> None:  # runs where the service is loaded
        import os

        # A worker may write only in its own scratch folder, its HOME (the test, as root,
        # finds it on the host).
        with open(os.path.join(os.environ["HOME"], MARKER), "a") as f:  # noqa: F821
            f.write(f"{os.getpid()}\n")

    client.publish_service(
        unique_name,
        code=ratio,
        init=init,
        objects={"MARKER": f"loaded-{unique_name}"},
        inputs={"hp": float, "wt": float},
        outputs={"r": float},
        version="v1",
    )
    pattern = f"batchserve-workers-{server.process.pid}-*/slot-*/loaded-{unique_name}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(Path("/tmp").glob(pattern)):
        time.sleep(0.05)
    # No record was asked for: the idle workers loaded it (and ran its init) on their own.
    assert list(Path("/tmp").glob(pattern))
