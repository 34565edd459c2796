"""A server killed with SIGKILL in any phase of a batch, then started again on the same data
directory, leaves every batch with exactly one result per record, in a consistent state, and
nothing stuck.

Phases that pass in a blink (cancelling, terminating, deleting) are held open by stopping the
server's fork server (SIGSTOP): a cancel or a delete then waits for the stopped workers' exit to
be reported, so the batch stays ``cancelling``, or marked for deletion, until the kill.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = pytest.mark.e2e

SERVICE = "crash"


def slow_double(x: float) -> float:
    import time

    time.sleep(0.05)
    return 2 * x


def slow_double_frame(frame):  # type: ignore[no-untyped-def]
    import time

    time.sleep(0.02 * len(frame))
    return {"y": frame["x"] * 2}


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def session(server: ServerProcess) -> Iterator[httpx.Client]:
    token = httpx.post(
        f"{server.url}/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["access_token"]
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as http:
        yield http


def publish(server: ServerProcess, *, vectorized: bool = False) -> None:
    from batchserve import Client

    with Client(server.url, username="admin", password=ADMIN_PASSWORD) as client:
        client.publish_service(
            SERVICE,
            code=slow_double_frame if vectorized else slow_double,
            inputs={"x": float},
            outputs={"y": float},
            version="v1",
            vectorized=vectorized,
        )


def csv(n: int) -> bytes:
    return ("x\n" + "".join(f"{i}\n" for i in range(n))).encode()


def create(http: httpx.Client, n: int, *, start: bool = True, **params: Any) -> str:
    resp = http.post(
        f"/v1/services/{SERVICE}/v1/batches",
        params={"start": "true" if start else "false", **params},
        content=csv(n),
        headers={"Content-Type": "text/csv"},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def batch(http: httpx.Client, batch_id: str, wait: float = 0) -> dict[str, Any]:
    resp = http.get(f"/v1/batches/{batch_id}", params={"wait": wait})
    return dict(resp.raise_for_status().json())


def finished(http: httpx.Client, batch_id: str) -> dict[str, Any]:
    """The batch once it is in a final state (each look holds a long poll)."""
    final = ("completed", "cancelled", "failed")
    return wait_for(  # type: ignore[no-any-return]
        f"batch {batch_id} to finish",
        lambda: (b := batch(http, batch_id, wait=5))["state"] in final and b,
        timeout=120,
    )


def results(http: httpx.Client, batch_id: str) -> list[dict[str, Any]]:
    resp = http.get(f"/v1/batches/{batch_id}/results", params={"limit": 100_000})
    return list(resp.raise_for_status().json()["results"])


def assert_one_result_per_record(http: httpx.Client, batch_id: str, n: int) -> dict[str, Any]:
    """The batch is final, each record has exactly one result, and the counts agree with them."""
    info = finished(http, batch_id)
    rows = results(http, batch_id)
    assert [r["index"] for r in rows] == list(range(n)), "a record is missing or repeated"
    statuses = Counter(r["status"] for r in rows)
    assert statuses["succeeded"] == info["succeeded_item_count"]
    assert statuses["failed"] == info["failed_item_count"] == 0
    assert statuses["cancelled"] == info["cancelled_item_count"]
    assert info["completed_item_count"] + info["cancelled_item_count"] == info["total_item_count"]
    for r in rows:
        if r["status"] == "succeeded":
            assert r["outputs"]["y"] == 2 * r["index"]
    if info["state"] == "completed":
        assert statuses == {"succeeded": n}
    return info


def succeeded_before(http: httpx.Client, batch_id: str) -> dict[int, int]:
    """Index -> attempts of the records finished so far."""
    rows = results(http, batch_id)
    return {r["index"]: r["attempts"] for r in rows if r["status"] == "succeeded"}


def assert_kept_or_rerun(before: dict[int, int], rows: list[dict[str, Any]]) -> None:
    """Records finished before the kill kept their results (same attempt) or were re-run with
    their whole chunk (a later attempt); either way they have one result, and succeeded."""
    after = {r["index"]: r for r in rows}
    for index, attempts in before.items():
        assert after[index]["status"] == "succeeded"
        assert after[index]["attempts"] >= attempts


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def fork_server(server: ServerProcess) -> int:
    """The Python fork server that starts the workers: a child of the server, or, in the
    workers' sandbox, a descendant of the bubblewrap processes that hold it."""
    assert server.process is not None
    pending = children(server.process.pid)
    while pending:
        pid = pending.pop(0)
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if comm == "bwrap":
            pending += children(pid)
        elif b"forkserver" in cmdline:
            return pid
    pytest.fail("the server has no fork server process")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def worker_pids(http: httpx.Client) -> list[int]:
    return [int(w["pid"]) for w in http.get("/v1/workers").json()["workers"] if w["pid"]]


@contextmanager
def held_workers(server: ServerProcess) -> Iterator[None]:
    """Stop the fork server so that stopping a worker is not reported until it resumes; the
    fork server (and with it every worker) is ended when the block is left."""
    pid = fork_server(server)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGKILL)


def restart(server: ServerProcess, old_workers: list[int]) -> None:
    """SIGKILL the server, check that none of its workers outlives it, and start it again."""
    server.kill()
    wait_for("the killed server's workers to end", lambda: not any(map(alive, old_workers)), 30)
    server.start()


def db_rows(server: ServerProcess, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{server.home / 'batchserve.db'}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()


@pytest.fixture
def server(fresh_server: ServerProcess) -> ServerProcess:
    return fresh_server.start()


# --- (a) during the upload -------------------------------------------------------------------


def test_a_kill_during_a_streamed_upload_leaves_no_half_made_batch(server):  # type: ignore[no-untyped-def]
    publish(server)
    # Several of the parser's blocks arrive at once, so a part file is being written before the
    # kill; the rest trickles in until the server is gone (or two minutes pass).
    data = csv(1_000_000)
    killed = threading.Event()

    def body() -> Iterator[bytes]:
        yield data[: data.rindex(b"\n", 0, len(data) * 3 // 4) + 1]
        for _ in range(2400):
            if killed.wait(0.05):
                return
            yield b"7\n" * 10

    outcome: list[object] = []

    def upload() -> None:
        with session(server) as http:
            try:
                outcome.append(
                    http.post(
                        f"/v1/services/{SERVICE}/v1/batches",
                        params={"chunk_size": 1000},
                        content=body(),
                        headers={"Content-Type": "text/csv"},
                    )
                )
            except httpx.HTTPError as exc:
                outcome.append(exc)

    uploader = threading.Thread(target=upload)
    uploader.start()
    inputs = server.home / "blobs" / "batches"
    # The first part is being written (under a temporary name until it is complete).
    wait_for("the upload's first part file", lambda: list(inputs.glob("*/inputs/*")))
    partial = next(inputs.iterdir()).name
    assert db_rows(server, "SELECT id, sealed FROM batches") == [(partial, 0)]
    with session(server) as http:
        workers = worker_pids(http)
        assert http.get(f"/v1/batches/{partial}").status_code == 404  # not a batch yet
    server.kill()
    killed.set()
    uploader.join(timeout=60)
    restart_after_kill(server, workers)
    assert outcome and not isinstance(outcome[0], httpx.Response)  # the upload failed
    # The partial batch is gone: its rows, chunks and files.
    assert db_rows(server, "SELECT id FROM batches") == []
    assert db_rows(server, "SELECT id FROM chunks") == []
    assert not (inputs / partial).exists()
    with session(server) as http:
        assert http.get(f"/v1/batches/{partial}").status_code == 404
        assert http.get("/v1/batches").json()["batches"] == []
        # The service takes new batches as before.
        again = create(http, 20, chunk_size=5)
        assert_one_result_per_record(http, again, 20)


# --- (b) created, not started ----------------------------------------------------------------


def test_a_created_batch_survives_a_kill_and_runs_once_started(server):  # type: ignore[no-untyped-def]
    publish(server)
    with session(server) as http:
        batch_id = create(http, 30, start=False, chunk_size=5, metadata='{"phase": "created"}')
        workers = worker_pids(http)
    restart(server, workers)
    with session(server) as http:
        info = batch(http, batch_id)
        assert info["state"] == "created"
        assert info["metadata"] == {"phase": "created"}
        # Its records wait in the upload's parts: chunks are cut only as they are handed out.
        assert (info["total_item_count"], info["chunk_count"]) == (30, 0)
        http.post(f"/v1/batches/{batch_id}/start").raise_for_status()
        info = assert_one_result_per_record(http, batch_id, 30)
        assert info["state"] == "completed"
        assert {r["attempts"] for r in results(http, batch_id)} == {1}


# --- (c) pending behind a full machine -------------------------------------------------------


def test_a_pending_batch_waiting_for_workers_survives_a_kill(server):  # type: ignore[no-untyped-def]
    publish(server)
    with session(server) as http:
        blocker = create(http, 80, chunk_size=5, parallel_count=10)
        wait_for("the blocker to run", lambda: batch(http, blocker)["state"] == "running")
        waiting = create(http, 20, chunk_size=5, parallel_count=2)
        assert batch(http, waiting)["state"] == "pending"
        wait_for("a finished record", lambda: batch(http, blocker)["completed_item_count"] >= 5)
        assert batch(http, waiting)["state"] == "pending"  # still behind the blocker
        before = succeeded_before(http, blocker)
        workers = worker_pids(http)
    restart(server, workers)
    with session(server) as http:
        for batch_id, n in ((blocker, 80), (waiting, 20)):
            info = assert_one_result_per_record(http, batch_id, n)
            assert info["state"] == "completed"
        assert_kept_or_rerun(before, results(http, blocker))
        assert {r["attempts"] for r in results(http, waiting)} == {1}


# --- (d) running ------------------------------------------------------------------------------


def test_a_running_batch_keeps_or_reruns_each_record_after_a_kill(server):  # type: ignore[no-untyped-def]
    publish(server)
    with session(server) as http:
        batch_id = create(http, 200, chunk_size=5, parallel_count=2)
        wait_for("records to finish", lambda: batch(http, batch_id)["completed_item_count"] >= 12)
        before = succeeded_before(http, batch_id)
        workers = worker_pids(http)
    restart(server, workers)
    with session(server) as http:
        info = assert_one_result_per_record(http, batch_id, 200)
        assert info["state"] == "completed"
        rows = results(http, batch_id)
        assert_kept_or_rerun(before, rows)
        assert max(r["attempts"] for r in rows) == 2  # the chunks cut off were run again


# --- (h) a vectorized batch running -----------------------------------------------------------


def test_a_running_vectorized_batch_runs_each_record_once_after_a_kill(server):  # type: ignore[no-untyped-def]
    publish(server, vectorized=True)
    with session(server) as http:
        batch_id = create(http, 500, chunk_size=10, parallel_count=2)
        wait_for("chunks to finish", lambda: batch(http, batch_id)["completed_item_count"] >= 30)
        before = succeeded_before(http, batch_id)
        workers = worker_pids(http)
    restart(server, workers)
    with session(server) as http:
        info = assert_one_result_per_record(http, batch_id, 500)
        assert info["state"] == "completed"
        rows = results(http, batch_id)
        assert_kept_or_rerun(before, rows)
        assert max(r["attempts"] for r in rows) == 2  # the chunks cut off were run again


# --- (e), (f) cancelling and terminating -------------------------------------------------------


@pytest.mark.parametrize("how", ["cancel", "terminate"])
def test_a_batch_killed_while_cancelling_ends_cancelled_with_one_result_per_record(server, how):  # type: ignore[no-untyped-def]
    publish(server)
    with session(server) as http:
        batch_id = create(http, 100, chunk_size=10, parallel_count=2)
        wait_for("records to finish", lambda: batch(http, batch_id)["completed_item_count"] >= 12)
        workers = worker_pids(http)
        with held_workers(server):
            if how == "cancel":
                resp = http.post(f"/v1/batches/{batch_id}/cancel")
            else:
                resp = http.post(f"/v1/batches/{batch_id}/terminate", json={"reason": "Upgrade"})
            assert resp.raise_for_status().json()["state"] == "cancelling"
            time.sleep(0.3)
            assert batch(http, batch_id)["state"] == "cancelling"
            before = succeeded_before(http, batch_id)
            server.kill()
        assert db_rows(server, f"SELECT state FROM batches WHERE id = '{batch_id}'") == [
            ("cancelling",)
        ]
    restart_after_kill(server, workers)
    with session(server) as http:
        info = assert_one_result_per_record(http, batch_id, 100)
        assert info["state"] == "cancelled"
        assert info["termination_reason"] == ("UserTerminate" if how == "cancel" else "Upgrade")
        rows = results(http, batch_id)
        assert_kept_or_rerun(before, rows)
        assert {r["status"] for r in rows} == {"succeeded", "cancelled"}
        # Cancelled means stopped: nothing runs or finishes afterwards.
        time.sleep(0.5)
        assert results(http, batch_id) == rows
        assert not any(w["busy"] for w in http.get("/v1/workers").json()["workers"])


def restart_after_kill(server: ServerProcess, old_workers: list[int]) -> None:
    wait_for("the killed server's workers to end", lambda: not any(map(alive, old_workers)), 30)
    server.start()


# --- (g) deleting ------------------------------------------------------------------------------


def listed(http: httpx.Client) -> list[str]:
    return [b["id"] for b in http.get("/v1/batches", params={"limit": 1000}).json()["batches"]]


def test_a_delete_answers_while_the_workers_are_stopping_and_the_batch_is_gone_at_once(server):  # type: ignore[no-untyped-def]
    publish(server)
    folder = server.home / "blobs" / "batches"
    with session(server) as http:
        batch_id = create(http, 100, chunk_size=10, parallel_count=2)
        wait_for("records to finish", lambda: batch(http, batch_id)["completed_item_count"] >= 12)
        with held_workers(server):
            # Its workers cannot be stopped while they are held; the delete answers anyway.
            assert http.delete(f"/v1/batches/{batch_id}").status_code == 202
            for path in ("", "/results", "/results/0"):
                assert http.get(f"/v1/batches/{batch_id}{path}").status_code == 404
            assert http.post(f"/v1/batches/{batch_id}/cancel").status_code == 404
            assert batch_id not in listed(http)
            assert http.delete(f"/v1/batches/{batch_id}").status_code == 404  # already gone
            # Its rows and files wait for the workers to be gone.
            assert db_rows(server, f"SELECT id FROM batches WHERE id = '{batch_id}'") == [
                (batch_id,)
            ]
            assert (folder / batch_id).is_dir()
        # Leaving the block ends the held workers, and with them the wait.
        wait_for(
            "the batch's rows to be removed",
            lambda: not db_rows(server, f"SELECT id FROM batches WHERE id = '{batch_id}'"),
        )
        assert db_rows(server, f"SELECT id FROM chunks WHERE batch_id = '{batch_id}'") == []
        assert not (folder / batch_id).exists()


def test_a_batch_killed_while_being_deleted_is_gone_after_the_restart(server):  # type: ignore[no-untyped-def]
    publish(server)
    folder = server.home / "blobs" / "batches"
    with session(server) as http:
        batch_id = create(http, 100, chunk_size=10, parallel_count=2)
        kept = create(http, 10, start=False)
        wait_for("records to finish", lambda: batch(http, batch_id)["completed_item_count"] >= 12)
        workers = worker_pids(http)
        outcome: list[object] = []

        def delete() -> None:
            try:
                outcome.append(http.delete(f"/v1/batches/{batch_id}").status_code)
            except httpx.HTTPError as exc:
                outcome.append(exc)

        with held_workers(server):
            deleting = threading.Thread(target=delete)
            deleting.start()
            wait_for(
                "the delete to be recorded",
                lambda: http.get(f"/v1/batches/{batch_id}").status_code == 404,
            )
            # The scheduler is still stopping the batch's workers: nothing of it is removed yet.
            assert db_rows(
                server, f"SELECT count(*) > 0 FROM chunks WHERE batch_id = '{batch_id}'"
            ) == [(1,)]
            assert list((folder / batch_id).glob("results/*"))
            server.kill()
            deleting.join(timeout=60)
        # The delete was answered as accepted, or cut off by the kill; it is on record either way.
        assert outcome and (outcome[0] == 202 or isinstance(outcome[0], httpx.HTTPError))
        marked = f"SELECT deleting_since IS NOT NULL FROM batches WHERE id = '{batch_id}'"
        assert db_rows(server, marked) == [(1,)]
    restart_after_kill(server, workers)
    # The start finished the delete: no row, chunk or file of the batch is left.
    assert db_rows(server, f"SELECT id FROM batches WHERE id = '{batch_id}'") == []
    assert db_rows(server, f"SELECT id FROM chunks WHERE batch_id = '{batch_id}'") == []
    assert sorted(p.name for p in folder.iterdir()) == [kept]
    with session(server) as http:
        assert http.get(f"/v1/batches/{batch_id}").status_code == 404
        assert http.get(f"/v1/batches/{batch_id}/results").status_code == 404
        assert listed(http) == [kept]
        assert http.delete(f"/v1/batches/{batch_id}").status_code == 404
        # The other batch is untouched, and runs.
        assert batch(http, kept)["state"] == "created"
        http.post(f"/v1/batches/{kept}/start").raise_for_status()
        assert assert_one_result_per_record(http, kept, 10)["state"] == "completed"


def test_files_left_by_a_delete_cut_short_are_removed_at_start(server):  # type: ignore[no-untyped-def]
    """A kill between removing a batch's rows and its files leaves files no batch owns."""
    publish(server)
    with session(server) as http:
        kept = create(http, 10, chunk_size=5)
        assert_one_result_per_record(http, kept, 10)
        workers = worker_pids(http)
    server.kill()
    orphan = server.home / "blobs" / "batches" / ("0f" * 16)
    (orphan / "inputs").mkdir(parents=True)
    (orphan / "inputs" / "000000.arrow").write_bytes(b"left behind")
    restart_after_kill(server, workers)
    assert not orphan.exists()
    with session(server) as http:
        assert_one_result_per_record(http, kept, 10)
