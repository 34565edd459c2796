"""What nodes sharing a store know of each other: leases, dead nodes, void claims, and
one-record requests waiting for a compute node."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

from tests.unit.test_store import add_batch, result_key

from batchserve.engine.nodes import Identity, dead_nodes, host_key, process_alive
from batchserve.states import ChunkState
from batchserve.store.models import Node, utcnow


def node(node_id: str, *, lease: float = 10.0, pid: int | None = None, key: str | None = None):
    now = utcnow()
    return Node(
        id=node_id,
        role="compute",
        host="h",
        host_key=key or host_key(),
        pid=pid or os.getpid(),
        version="0",
        workers=2,
        executor="local",
        started_at=now,
        heartbeat_at=now,
        lease_until=now + timedelta(seconds=lease),
        draining=False,
        leader=False,
    )


def gone_pid() -> int:
    """The pid of a process that ran and was reaped."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    return int(done.stdout)


def test_a_process_that_exited_is_not_alive_and_this_one_is() -> None:
    assert process_alive(os.getpid())
    assert not process_alive(gone_pid())


def test_a_node_is_dead_when_its_lease_ran_out_or_its_process_here_is_gone() -> None:
    me = Identity.here("all")
    nodes = [
        node("live"),
        node("expired", lease=-1.0),
        node("gone", pid=gone_pid()),
        node("elsewhere", pid=gone_pid(), key="another-host"),  # only its lease tells
    ]
    assert [n.id for n in dead_nodes(nodes, me, utcnow())] == ["expired", "gone"]


def test_a_lease_is_renewed_until_the_node_is_removed(store) -> None:
    store.register_node(node("a"))
    assert store.renew_node("a", utcnow() + timedelta(seconds=5), False, True)
    assert store.leader_node() == "a"
    store.remove_node("a")
    assert not store.renew_node("a", utcnow() + timedelta(seconds=5), False, False)


def test_only_the_chunks_of_nodes_not_live_are_orphaned(store, squares, owner) -> None:
    batch = add_batch(store, squares, owner, chunks=[4, 4, 4])
    mine = store.claim_chunk(batch.id, result_key, node_id="live")
    theirs = store.claim_chunk(batch.id, result_key, node_id="dead")
    store.claim_chunk(batch.id, result_key, node_id="live")
    assert [c.id for c in store.orphaned_chunks(["live"])] == [theirs.id]
    # Once taken back (put in the queue again), the dead node's writes are refused.
    assert store.set_chunk(
        theirs.id,
        expect_state=ChunkState.RUNNING,
        expect_key=theirs.result_key,
        state=ChunkState.PENDING.value,
    )
    again = store.claim_chunk(batch.id, result_key, node_id="live")
    assert again.id == theirs.id and again.result_key != theirs.result_key
    assert not store.set_chunk(
        theirs.id,
        expect_state=ChunkState.RUNNING,
        expect_key=theirs.result_key,
        state=ChunkState.SUCCEEDED.value,
    )
    assert mine.node_id == "live"


def test_a_waiting_request_is_claimed_once_and_answered_once(store, squares) -> None:
    store.add_consume("r1", squares.id, {"hp": 1.0, "wt": 2.0})
    store.add_consume("r2", squares.id, {"hp": 3.0, "wt": 4.0})
    first = store.claim_consumes("a", 1)
    assert [r.id for r in first] == ["r1"]
    assert [r.id for r in store.claim_consumes("b", 5)] == ["r2"]
    assert store.claim_consumes("c", 5) == []
    assert not store.finish_consume("r1", result={"x": 1}, node_id="b")  # not b's
    assert store.finish_consume("r1", result={"x": 1}, node_id="a")
    assert not store.finish_consume("r1", result={"x": 2}, node_id="a")  # answered already
    assert store.get_consume("r1").result == {"x": 1}
    store.abandon_consume("r2")
    assert store.consume_states(["r1", "r2"]) == {"r1": "done", "r2": "abandoned"}
    assert not store.finish_consume("r2", result={"x": 3})


def test_requests_running_on_a_dead_node_are_answered_with_an_error(store, squares) -> None:
    store.add_consume("r1", squares.id, {})
    store.claim_consumes("dead", 1)
    assert store.fail_orphaned_consumes(["live"]) == ["r1"]
    assert "stopped" in store.get_consume("r1").error


def test_an_unfinished_upload_is_abandoned_only_once_its_node_is_not_live(store, squares, owner):  # type: ignore[no-untyped-def]
    uploading = add_batch(store, squares, owner, sealed=False, upload_node="live")
    orphan = add_batch(store, squares, owner, sealed=False, upload_node="dead")
    assert [b.id for b in store.abandoned_uploads(["live"])] == [orphan.id]
    assert uploading.id not in [b.id for b in store.abandoned_uploads(["live"])]
