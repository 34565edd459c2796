"""How fast many nodes on one PostgreSQL react: a cancel sent to the API node, a compute node
killed, the leader killed.

An API node and two compute nodes (two workers each) share a fresh PostgreSQL database and a
blob folder, as in ``bench/chaos.py``. Each figure is read from the store itself (the chunks'
states, PostgreSQL's lock table), not from a client's polling:

- **cancel**: from the cancel request to the API node until the batch is ``cancelled`` and no
  chunk of it runs, on either compute node;
- **dead compute node**: from SIGKILL until none of its chunks is left running under its claim
  (each was given back and runs again on the other node); a node on the same host is seen dead
  at once (its process is gone);
- **paused compute node**: the same from SIGSTOP: the process lives on but stops renewing its
  lease, so its chunks are taken back once the lease (3 s here, 10 s by default) runs out, as
  for a node on another host;
- **dead leader**: from SIGKILL of the node holding the leader's advisory lock until another
  node holds it;
- **consume through the API node**: one record sent to the API node, run by a compute node and
  answered through the store (the SDK's ``consume``, one at a time, after 20 to warm up).

    .venv/bin/python bench/nodes.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos import DEFAULT_POSTGRES, PASSWORD, Node, _listening, _port, database
from sqlalchemy import create_engine, text

from batchserve import Client
from batchserve.engine.nodes import LEADER_LOCK


def slow(x: float) -> float:
    import time

    if x >= 0:  # a batch record; a consume's x is negative
        time.sleep(0.05)
    return 2 * x


def until(predicate: Callable[[], Any], timeout: float = 60.0, every: float = 0.01) -> float:
    """Seconds until ``predicate`` holds, looked at every ``every`` seconds."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise TimeoutError("gave up waiting")
        time.sleep(every)
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--postgres", default=os.environ.get("BATCHSERVE_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    args = parser.parse_args()
    with database(args.postgres) as db_url, tempfile.TemporaryDirectory(prefix="nodes-") as tmp:
        root = Path(tmp)
        env = {
            "BATCHSERVE_DATABASE_URL": db_url,
            "BATCHSERVE_BLOB_URL": f"file://{root / 'blobs'}",
            "BATCHSERVE_NODE_LEASE": "3",
            "BATCHSERVE_ADMIN_PASSWORD": PASSWORD,
        }
        port = _port()
        url = f"http://127.0.0.1:{port}"
        api = Node(
            "api",
            ["serve", "--workers", "0", "--port", str(port), "--log-level", "warning"],
            {**env, "BATCHSERVE_HOME": str(root / "api")},
            root / "api.log",
            _listening(url),
        )
        computes = [
            Node(
                f"compute{i}",
                ["worker", "--workers", "2", "--log-level", "warning"],
                {**env, "BATCHSERVE_HOME": str(root / f"compute{i}")},
                root / f"compute{i}.log",
                lambda n: (
                    n.log.exists()
                    and n.log.read_bytes().count(b"batchserve compute node") > n.kills
                ),
            )
            for i in range(2)
        ]
        nodes = [api, *computes]
        db = create_engine(db_url)

        def sql(query: str, **params: Any) -> list[Any]:
            with db.connect() as conn:
                return list(conn.execute(text(query), params))

        def running_on(batch_id: str) -> dict[str, int]:
            rows = sql(
                "SELECT node_id, count(*) FROM chunks WHERE batch_id = :b AND state = 'running' "
                "GROUP BY node_id",
                b=batch_id,
            )
            return {r[0]: r[1] for r in rows}

        def node_of(node: Node) -> str:
            assert node.process is not None
            rows = sql("SELECT id FROM nodes WHERE pid = :p", p=node.process.pid)
            return str(rows[0][0])

        def leader_pid() -> int | None:
            rows = sql(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objid = :low AND classid = :high",
                low=LEADER_LOCK & 0xFFFFFFFF,
                high=LEADER_LOCK >> 32,
            )
            return int(rows[0][0]) if rows else None

        figures: dict[str, list[float]] = {
            "cancel": [],
            "dead compute node": [],
            "paused compute node (3 s lease)": [],
            "dead leader": [],
            "consume through the API node": [],
        }
        try:
            for node in nodes:
                node.start()
            with Client(url, username="admin", password=PASSWORD) as client:
                svc = client.publish_service(
                    "slow", code=slow, inputs={"x": float}, outputs={"y": float}, version="v1"
                )
                for i in range(20 + 60 * args.repeat):
                    began = time.monotonic()
                    svc.consume(x=-1.0 - i)
                    if i >= 20:
                        figures["consume through the API node"].append(time.monotonic() - began)
                records = [{"x": float(i)} for i in range(4000)]
                for _ in range(args.repeat):
                    batch = svc.batch(records, parallel_count=4, chunk_size=20).start()
                    batch_id = batch.execution_id or ""
                    until(lambda b=batch_id: len(running_on(b)) == 2)
                    began = time.monotonic()
                    batch.cancel()
                    until(
                        lambda b=batch_id: (
                            not running_on(b)
                            and sql("SELECT state FROM batches WHERE id = :b", b=b)[0][0]
                            == "cancelled"
                        )
                    )
                    figures["cancel"].append(time.monotonic() - began)
                for _ in range(args.repeat):
                    batch = svc.batch(records, parallel_count=4, chunk_size=20).start()
                    batch_id = batch.execution_id or ""
                    until(lambda b=batch_id: len(running_on(b)) == 2)
                    victim = computes[0]
                    victim_id = node_of(victim)
                    began = time.monotonic()
                    victim.kill()
                    until(lambda v=victim_id, b=batch_id: v not in running_on(b))
                    figures["dead compute node"].append(time.monotonic() - began)
                    victim.start()
                    batch.cancel()
                for _ in range(args.repeat):
                    # Paused by the OS (SIGSTOP): alive, silent; its lease runs out, its chunks
                    # run elsewhere, and when it wakes its old claims write nothing.
                    batch = svc.batch(records, parallel_count=4, chunk_size=20).start()
                    batch_id = batch.execution_id or ""
                    until(lambda b=batch_id: len(running_on(b)) == 2)
                    victim = computes[0]
                    victim_id = node_of(victim)
                    assert victim.process is not None
                    began = time.monotonic()
                    victim.process.send_signal(signal.SIGSTOP)
                    until(lambda v=victim_id, b=batch_id: v not in running_on(b), 60)
                    figures["paused compute node (3 s lease)"].append(time.monotonic() - began)
                    victim.process.send_signal(signal.SIGCONT)
                    batch.cancel()
            for _ in range(args.repeat):
                holder = until(lambda: leader_pid() is not None) and leader_pid()
                until(lambda: sql("SELECT count(*) FROM nodes WHERE leader")[0][0] >= 1, 10)
                leading_pid = int(sql("SELECT pid FROM nodes WHERE leader")[0][0])
                leader = next(n for n in nodes if n.process and n.process.pid == leading_pid)
                began = time.monotonic()
                leader.kill()
                until(lambda h=holder: leader_pid() not in (None, h))
                figures["dead leader"].append(time.monotonic() - began)
                leader.start()
                until(lambda: leader_pid() is not None)
                time.sleep(1.5)  # every node's row says again who leads
        finally:
            for node in nodes:
                node.stop()
            db.dispose()
    print("| what | median s | max s | runs |")
    print("|---|---|---|---|")
    for what, values in figures.items():
        if values:
            print(
                f"| {what} | {statistics.median(values):.3f} | {max(values):.3f} | {len(values)} |"
            )


if __name__ == "__main__":
    main()
