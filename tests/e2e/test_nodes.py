"""Many nodes on one PostgreSQL: an API node and two compute nodes, real processes, killed and
restarted. Every record keeps exactly one result, caps and control requests hold across nodes,
and the leader's duties survive the leader."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from batchserve import BatchState, Client

from .conftest import ADMIN_PASSWORD, NodeCluster, free_port, node_cluster_on
from .test_cancel_and_durability import slow_double, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    with node_cluster_on(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def client(cluster: NodeCluster) -> Iterator[Client]:
    for node in cluster.compute:  # a test before may have stopped one
        if node.process is None or node.process.poll() is not None:
            node.start()
    if cluster.api.process is None or cluster.api.process.poll() is not None:
        cluster.api.start()
    with Client(cluster.api.url, username="admin", password=ADMIN_PASSWORD) as c:
        yield c


@pytest.fixture
def svc(client: Client, unique_name: str) -> Any:
    return client.publish_service(
        unique_name, code=slow_double, inputs={"x": float}, outputs={"y": float}, version="v1"
    )


def chunks(cluster: NodeCluster, batch_id: str) -> list[Any]:
    """The batch's chunks as the store has them: node, state and times."""
    engine = create_engine(cluster.database_url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    text(
                        "SELECT node_id, state, started_at, finished_at, attempts, lost_workers "
                        "FROM chunks WHERE batch_id = :b ORDER BY seq"
                    ),
                    {"b": batch_id},
                )
            )
    finally:
        engine.dispose()


def nodes(cluster: NodeCluster, client: Client) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {client.token}"}
    answer = httpx.get(cluster.api.url + "/v1/nodes", headers=headers)
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def exactly_once(final: Any, n: int) -> None:
    frame = final.to_pandas()
    assert list(frame["index"]) == list(range(n))
    assert set(frame["status"]) == {"succeeded"}
    assert (frame["y"] == 2 * frame["index"]).all()


def test_the_nodes_are_listed_with_their_roles_and_one_leader(cluster, client):  # type: ignore[no-untyped-def]
    found = wait_for(lambda: (n := nodes(cluster, client)) and len(n) == 3 and n)
    assert sorted(n["role"] for n in found) == ["api", "compute", "compute"]
    assert sum(n["leader"] for n in found) == 1
    computes = {n["pid"]: n for n in found if n["role"] == "compute"}
    assert set(computes) == {node.pid for node in cluster.compute}
    assert all(n["workers"] == 2 for n in computes.values())
    assert [n["workers"] for n in found if n["role"] == "api"] == [0]
    assert [n["this_node"] for n in found if n["role"] == "api"] == [True]
    cli = subprocess.run(
        [sys.executable, "-m", "batchserve", "nodes"],
        env={"BATCHSERVE_URL": cluster.api.url, "BATCHSERVE_TOKEN": client.token or "", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.count("compute") == 2 and "leader" in cli.stdout


def test_chunks_run_on_both_compute_nodes_and_one_parallel_count_caps_all(cluster, client, svc):  # type: ignore[no-untyped-def]
    capped = svc.batch([{"x": float(i)} for i in range(40)], parallel_count=2, chunk_size=2)
    capped.start()
    wide = svc.batch([{"x": float(i)} for i in range(40)], parallel_count=8, chunk_size=2)
    wide.start()
    exactly_once(capped.wait(timeout=120), 40)
    exactly_once(wide.wait(timeout=120), 40)
    # At no moment did more than two chunks of the capped batch run, across both nodes.
    spans = [(c.started_at, c.finished_at) for c in chunks(cluster, capped.execution_id)]
    moments: list[tuple[datetime, int]] = [(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans]
    running = most = 0
    for _, step in sorted(moments, key=lambda m: (m[0], m[1])):
        running += step
        most = max(most, running)
    assert most == 2
    # The wide batch ran on both compute nodes, four chunks at once.
    assert len({c.node_id for c in chunks(cluster, wide.execution_id)}) == 2


def test_a_cancel_sent_to_the_api_node_stops_chunks_on_both_compute_nodes(cluster, client, svc):  # type: ignore[no-untyped-def]
    batch = svc.batch([{"x": float(i)} for i in range(400)], parallel_count=4, chunk_size=20)
    batch.start()
    wait_for(
        lambda: (
            len({c.node_id for c in chunks(cluster, batch.execution_id) if c.state == "running"})
            == 2
        )
    )
    wait_for(lambda: batch.results().completed_item_count >= 4)
    batch.cancel()
    final = wait_for(lambda: (r := batch.results()).state is BatchState.CANCELLED and r, 30)
    assert not [c for c in chunks(cluster, batch.execution_id) if c.state == "running"]
    frame = final.to_pandas()
    assert len(frame) == 400
    done = frame[frame["status"] == "succeeded"]
    assert len(done) == final.completed_item_count >= 4
    assert (done["y"] == 2 * done["index"]).all()
    assert set(frame["status"]) <= {"succeeded", "cancelled"}
    time.sleep(1.0)  # stopped means stopped: nothing more finishes
    assert batch.results().completed_item_count == final.completed_item_count


def test_a_killed_compute_node_s_chunks_run_again_each_record_once(cluster, client, svc):  # type: ignore[no-untyped-def]
    batch = svc.batch([{"x": float(i)} for i in range(120)], parallel_count=4, chunk_size=6)
    batch.start()
    victim = cluster.compute[0]
    node_ids = {n["pid"]: n["id"] for n in nodes(cluster, client)}
    victim_id = node_ids[victim.pid]
    wait_for(
        lambda: any(
            c.node_id == victim_id and c.state == "running"
            for c in chunks(cluster, batch.execution_id)
        )
    )
    victim.kill()
    final = batch.wait(timeout=120)
    assert final.state is BatchState.COMPLETED
    exactly_once(final, 120)
    ran = chunks(cluster, batch.execution_id)
    assert max(c.lost_workers for c in ran) == 1  # the dead node's chunks ran again
    assert all(c.state == "succeeded" for c in ran)
    assert victim_id not in {n["id"] for n in nodes(cluster, client)}  # its row went


def test_a_drained_compute_node_finishes_its_chunks_and_exits(cluster, client, svc):  # type: ignore[no-untyped-def]
    batch = svc.batch([{"x": float(i)} for i in range(80)], parallel_count=4, chunk_size=8)
    batch.start()
    leaving = cluster.compute[1]
    node_id = {n["pid"]: n["id"] for n in nodes(cluster, client)}[leaving.pid]
    wait_for(
        lambda: any(
            c.node_id == node_id and c.state == "running"
            for c in chunks(cluster, batch.execution_id)
        )
    )
    assert leaving.stop() == 0  # SIGTERM: drained, then exited
    final = batch.wait(timeout=120)
    exactly_once(final, 80)
    ran = chunks(cluster, batch.execution_id)
    assert all(c.attempts == 1 for c in ran if c.node_id == node_id)  # none was cut off
    assert node_id not in {n["id"] for n in nodes(cluster, client)}


def test_when_the_leader_dies_another_keeps_deadlines_and_dependencies(cluster, client, svc):  # type: ignore[no-untyped-def]
    endless = svc.batch(
        [{"x": float(i)} for i in range(2000)], parallel_count=1, max_wall_clock_time=6
    ).start()
    behind = svc.batch([{"x": 1.0}], depends_on=[endless]).start()
    first = svc.batch([{"x": float(i)} for i in range(30)], parallel_count=1, chunk_size=1)
    first.start()
    after = svc.batch([{"x": 1.0}], depends_on=[first]).start()
    leader = next(n for n in nodes(cluster, client) if n["leader"])
    if leader["role"] == "api":
        cluster.api.kill()
    else:
        next(node for node in cluster.compute if node.pid == leader["pid"]).kill()
    # Another node leads within a few seconds, and does the leader's work.
    if leader["role"] == "api":
        cluster.api.start()
    with Client(cluster.api.url, username="admin", password=ADMIN_PASSWORD) as c:
        service = c.get_service(svc.name, version="v1")
        ended = service.get_batch(endless.execution_id).wait(timeout=60)
        assert ended.state is BatchState.FAILED
        info = service.get_batch(endless.execution_id).info()
        assert info.execution_info.termination_reason == "MaxWallClockTimeExpiry"
        assert service.get_batch(after.execution_id).wait(timeout=60).state is BatchState.COMPLETED
        behind_info = service.get_batch(behind.execution_id)
        assert behind_info.wait(timeout=60).state is BatchState.FAILED
        assert behind_info.info().execution_info.termination_reason == "DependencyFailed"
    new = wait_for(lambda: [n for n in nodes(cluster, client) if n["leader"]])
    assert new[0]["id"] != leader["id"]


def test_a_paused_leader_is_unseated_and_its_claims_write_nothing(cluster, client, svc):  # type: ignore[no-untyped-def]
    # The API node gives up the lead by restarting, so that a compute node leads.
    for _ in range(10):
        leading = wait_for(lambda: [n for n in nodes(cluster, client) if n["leader"]])[0]
        if leading["role"] == "compute":
            break
        cluster.api.kill()
        cluster.api.start()
    assert leading["role"] == "compute"
    with Client(cluster.api.url, username="admin", password=ADMIN_PASSWORD) as fresh:
        _paused_leader(cluster, fresh, fresh.get_service(svc.name, version="v1"), leading)


def _paused_leader(cluster, client, svc, leading):  # type: ignore[no-untyped-def]
    paused = next(node for node in cluster.compute if node.pid == leading["pid"])
    batch = svc.batch([{"x": float(i)} for i in range(120)], parallel_count=4, chunk_size=6)
    batch.start()
    wait_for(
        lambda: any(
            c.node_id == leading["id"] and c.state == "running"
            for c in chunks(cluster, batch.execution_id)
        )
    )
    paused.process.send_signal(signal.SIGSTOP)
    try:
        # Its lease runs out: another node leads, takes its chunks back, and the batch ends.
        final = batch.wait(timeout=120)
        exactly_once(final, 120)
        new = wait_for(lambda: [n for n in nodes(cluster, client) if n["leader"]], 30)
        assert new[0]["id"] != leading["id"]
    finally:
        paused.process.send_signal(signal.SIGCONT)
    # Awake again, it finds its claims gone: nothing it finishes now is counted, and it joins
    # the cluster again under its old id.
    wait_for(lambda: leading["id"] in {n["id"] for n in nodes(cluster, client)}, 30)
    time.sleep(1.0)
    again = batch.results()
    assert again.completed_item_count == 120
    exactly_once(again, 120)
    assert all(c.state == "succeeded" for c in chunks(cluster, batch.execution_id))


def test_a_restarted_api_node_loses_nothing(cluster, client, svc):  # type: ignore[no-untyped-def]
    running = svc.batch([{"x": float(i)} for i in range(60)], parallel_count=2, chunk_size=3)
    running.start()
    paused = svc.batch([{"x": float(i)} for i in range(20)], parallel_count=1, chunk_size=2)
    paused.start()
    paused.disable()
    created = httpx.post(  # uploaded, not started
        f"{cluster.api.url}/v1/services/{svc.name}/v1/batches",
        params={"start": "false"},
        headers={"Authorization": f"Bearer {client.token}", "Content-Type": "application/x-ndjson"},
        content="".join(f'{{"x": {i}.0}}\n' for i in range(10)),
    )
    assert created.status_code == 201, created.text
    created_id = created.json()["id"]
    done = svc.batch([{"x": 3.0}]).start()
    done.wait(timeout=60)
    waiting = svc.batch([{"x": 5.0}], depends_on=[running]).start()
    wait_for(lambda: running.results().completed_item_count >= 3)
    cluster.api.kill()
    cluster.api.start()
    with Client(cluster.api.url, username="admin", password=ADMIN_PASSWORD) as c:
        service = c.get_service(svc.name, version="v1")
        exactly_once(service.get_batch(running.execution_id).wait(timeout=120), 60)
        assert service.get_batch(waiting.execution_id).wait(timeout=60).state is (
            BatchState.COMPLETED
        )
        again = service.get_batch(paused.execution_id)
        assert again.info().state == "disabled"
        again.enable()
        exactly_once(again.wait(timeout=120), 20)
        later = service.get_batch(created_id)
        later.start()
        exactly_once(later.wait(timeout=120), 10)
        assert service.get_batch(done.execution_id).results().to_pandas()["y"].tolist() == [6.0]


def test_pause_resume_and_delete_to_the_api_node_reach_compute_nodes(cluster, client, svc):  # type: ignore[no-untyped-def]
    paused = svc.batch([{"x": float(i)} for i in range(200)], parallel_count=4, chunk_size=10)
    paused.start()
    wait_for(lambda: any(c.state == "running" for c in chunks(cluster, paused.execution_id)))
    paused.disable()  # requeue: the running chunks are stopped and queued again
    wait_for(lambda: paused.info().state == "disabled", 10)
    assert not [c for c in chunks(cluster, paused.execution_id) if c.state == "running"]
    paused.enable()
    exactly_once(paused.wait(timeout=120), 200)

    doomed = svc.batch([{"x": float(i)} for i in range(200)], parallel_count=4, chunk_size=10)
    doomed.start()
    wait_for(
        lambda: (
            len({c.node_id for c in chunks(cluster, doomed.execution_id) if c.state == "running"})
            == 2
        )
    )
    doomed.delete()
    wait_for(lambda: not chunks(cluster, doomed.execution_id), 10)
    files = list((cluster.root / "blobs" / "batches").glob(f"{doomed.execution_id}*"))
    assert files == []


def test_records_added_to_an_open_batch_on_the_api_node_run_on_compute_nodes(cluster, client, svc):  # type: ignore[no-untyped-def]
    batch = svc.batch(
        [{"x": float(i)} for i in range(40)], parallel_count=4, chunk_size=10, open=True
    ).start()
    wait_for(lambda: any(c.state == "running" for c in chunks(cluster, batch.execution_id)))
    assert batch.add([{"x": float(i)} for i in range(40, 80)]) == range(40, 80)
    wait_for(lambda: batch.refresh().data["completed_item_count"] == 80, 60)
    assert batch.refresh().state is not BatchState.COMPLETED  # open: it waits to be closed
    assert all(c.node_id for c in chunks(cluster, batch.execution_id))
    batch.close()  # the leader, on whichever node, completes it
    exactly_once(batch.wait(timeout=60), 80)


def test_a_one_record_request_to_the_api_node_runs_on_a_compute_node(cluster, client, svc):  # type: ignore[no-untyped-def]
    assert svc.consume(x=21.0).output("y") == 42.0


def test_a_compute_node_serves_its_own_metrics_on_its_metrics_port(cluster, client, svc):  # type: ignore[no-untyped-def]
    from prometheus_client.parser import text_string_to_metric_families

    for node in cluster.compute:  # the batch runs on the new node alone
        assert node.stop() == 0
    port = free_port()
    node = cluster.add_compute(args=("--metrics-port", str(port)))
    try:
        said = f"metrics: http://127.0.0.1:{port}/metrics"  # said just after it started
        wait_for(lambda: said in node.log.read_text(), 30)  # type: ignore[union-attr]
        batch = svc.batch([{"x": float(i)} for i in range(10)], chunk_size=5).start()
        exactly_once(batch.wait(timeout=120), 10)
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics")  # no token asked on the node
        assert answer.status_code == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text)
            for s in family.samples
        }
        name = svc.name
        assert samples[("batchserve_chunk_run_seconds_count", (("service", name),))] == 2
        records = ("batchserve_chunk_records_total", (("service", name), ("status", "succeeded")))
        assert samples[records] == 10
        # The cluster's figures are the API nodes' to serve, read from the store.
        assert not any(n == "batchserve_batches" for n, _ in samples)
    finally:
        node.stop()
        cluster.compute.remove(node)


def test_nodes_cannot_share_an_sqlite_database(tmp_path: Path) -> None:
    for command in (["worker"], ["serve", "--workers", "0"]):
        run = subprocess.run(
            [sys.executable, "-m", "batchserve", *command, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "", "HOME": str(tmp_path)},
        )
        assert run.returncode == 2, run.stdout + run.stderr
        assert "PostgreSQL" in run.stderr and "Traceback" not in run.stderr
