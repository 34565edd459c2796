"""A randomized chaos run of many nodes on one PostgreSQL: kill nodes, restart them, check.

An API node (``serve --workers 0``) and compute nodes (``batchserve worker``) share a fresh
PostgreSQL database and a blob folder. Batches go in while, at random moments, a random node
(API or compute) is killed with SIGKILL and started again. Then every batch must end, and every
record of every batch must have exactly one result, the right one:

    .venv/bin/python bench/chaos.py --seed 1 --kills 40
    .venv/bin/python bench/chaos.py --seed 7 --kills 3 --json   # the short run of the tests

It prints the kills survived, the records checked, and the duplicates, losses, wrong results
and stuck batches found (all zero when batchserve holds); its exit status is 1 otherwise.
PostgreSQL comes from ``--postgres`` (a URL of the server's maintenance database), else
``BATCHSERVE_TEST_POSTGRES_URL``, else the local server's Unix socket.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, make_url, text

from batchserve import BatchState, Client
from batchserve.settings import with_driver

PASSWORD = "chaos-admin-password"
DEFAULT_POSTGRES = "postgresql://postgres@/postgres?host=/var/run/postgresql"


def double(x: float) -> float:
    import time

    time.sleep(0.02)
    return 2 * x


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    """One batchserve process: the API node or a compute node."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    ready: Callable[[Node], bool]
    process: subprocess.Popen[bytes] | None = None
    kills: int = 0

    def start(self, timeout: float = 60.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "batchserve", *self.argv],
            env={**os.environ, **self.env},
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not self.ready(self):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {self.log}")
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.kills += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Figures:
    seed: int
    kills: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    uploads_cut: int = 0  # batches not sent: the API node was down or died under the upload
    records: int = 0
    duplicates: int = 0
    losses: int = 0
    wrong: int = 0
    stuck: int = 0
    seconds: float = 0.0

    @property
    def problems(self) -> int:
        return self.duplicates + self.losses + self.wrong + self.stuck


@contextlib.contextmanager
def database(server_url: str) -> Iterator[str]:
    name = f"batchserve_chaos_{secrets.token_hex(4)}"
    admin = create_engine(with_driver(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(with_driver(server_url)).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _listening(url: str) -> Callable[[Node], bool]:
    def ready(_: Node) -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def run(
    seed: int,
    kills: int,
    *,
    computes: int = 2,
    workers: int = 2,
    postgres: str = DEFAULT_POSTGRES,
    say: Callable[[str], None] = print,
) -> Figures:
    rng = random.Random(seed)
    figures = Figures(seed)
    began = time.monotonic()
    with database(postgres) as db_url, tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        root = Path(tmp)
        env = {
            "BATCHSERVE_DATABASE_URL": db_url,
            "BATCHSERVE_BLOB_URL": f"file://{root / 'blobs'}",
            "BATCHSERVE_NODE_LEASE": "3",
            "BATCHSERVE_ADMIN_PASSWORD": PASSWORD,
            # Kills, not the service, cut chunks short here: give them every retry they need.
            "BATCHSERVE_MAX_WORKER_LOSS_RETRIES": "1000",
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
        nodes = [api]
        for i in range(computes):
            home = root / f"compute{i}"
            node = Node(
                f"compute{i}",
                ["worker", "--workers", str(workers), "--log-level", "warning"],
                {**env, "BATCHSERVE_HOME": str(home)},
                root / f"compute{i}.log",
                lambda n: (
                    n.log.exists()
                    and n.log.read_bytes().count(b"batchserve compute node") > n.kills
                ),
            )
            nodes.append(node)
        try:
            for node in nodes:
                node.start()
            submitted: list[tuple[str, int]] = []
            with Client(url, username="admin", password=PASSWORD) as client:
                svc = client.publish_service(
                    "chaos", code=double, inputs={"x": float}, outputs={"y": float}, version="v1"
                )

            # Kills come at random moments of their own, uploads and all.
            def killer() -> None:
                for k in range(kills):
                    time.sleep(rng.uniform(0.3, 2.5))
                    victim = rng.choice(nodes)
                    say(f"kill {k + 1}/{kills}: {victim.name}")
                    victim.kill()
                    time.sleep(rng.uniform(0.0, 1.5))
                    victim.start()

            chaos = threading.Thread(target=killer)
            chaos.start()
            sizes = random.Random(seed + 1)
            while chaos.is_alive():
                n = sizes.randint(20, 300)
                try:
                    with Client(url, username="admin", password=PASSWORD) as client:
                        batch = client.get_service("chaos", version="v1").batch(
                            [{"x": float(i)} for i in range(n)],
                            parallel_count=sizes.randint(1, 6),
                            chunk_size=sizes.randint(2, 25),
                        )
                        batch.start()
                        submitted.append((batch.execution_id or "", n))
                except Exception as exc:  # the API node died under the upload
                    figures.uploads_cut += 1
                    say(f"  a batch could not be sent ({type(exc).__name__})")
                    time.sleep(0.5)
                time.sleep(sizes.uniform(0.1, 1.0))
            chaos.join()
            figures.batches = len(submitted)
            del svc
            with Client(url, username="admin", password=PASSWORD) as client:
                service = client.get_service("chaos", version="v1")
                deadline = time.monotonic() + 300
                for batch_id, n in submitted:
                    batch = service.get_batch(batch_id)
                    try:
                        final = batch.wait(timeout=max(1.0, deadline - time.monotonic()))
                    except Exception:
                        figures.stuck += 1
                        say(f"  batch {batch_id} did not end")
                        continue
                    if final.state is not BatchState.COMPLETED:
                        figures.stuck += 1
                        say(f"  batch {batch_id} ended {final.state}")
                    frame = final.to_pandas()
                    indexes = frame["index"].tolist()
                    figures.records += n
                    figures.duplicates += len(indexes) - len(set(indexes))
                    figures.losses += len(set(range(n)) - set(indexes))
                    ok = frame[
                        (frame["status"] == "succeeded") & (frame["y"] == 2 * frame["index"])
                    ]
                    figures.wrong += len(frame) - len(ok)
        finally:
            for node in nodes:
                node.stop()
        figures.kills = {node.name: node.kills for node in nodes}
    figures.seconds = round(time.monotonic() - began, 1)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--computes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="workers per compute node")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BATCHSERVE_TEST_POSTGRES_URL", DEFAULT_POSTGRES),
        help="URL of a PostgreSQL server's maintenance database",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = parser.parse_args()
    say = (lambda _: None) if args.json else print
    figures = run(
        args.seed,
        args.kills,
        computes=args.computes,
        workers=args.workers,
        postgres=args.postgres,
        say=say,
    )
    report: dict[str, Any] = {**figures.__dict__, "problems": figures.problems}
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"seed {figures.seed}: {sum(figures.kills.values())} kills survived "
            f"({', '.join(f'{k} {v}' for k, v in figures.kills.items())}), "
            f"{figures.batches} batches, {figures.records} records checked, "
            f"{figures.uploads_cut} uploads cut off; duplicates {figures.duplicates}, "
            f"losses {figures.losses}, wrong {figures.wrong}, stuck {figures.stuck}; "
            f"{figures.seconds} s"
        )
    return 1 if figures.problems else 0


if __name__ == "__main__":
    sys.exit(main())
