"""End-to-end fixtures: a real ``batchserve serve`` process, started once per test session, the
native SDK's client on it, and Machine Learning Server's original client
(``azureml-model-management-sdk``) on it."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import RAY_ENV, RayCluster, S3Server, find_postgres, throwaway_database

ADMIN_PASSWORD = "e2e-admin-password"
METRICS_TOKEN = "e2e-metrics-token-0123456789"  # the session server's, for GET /metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A server process on a data directory; it can be killed and started again."""

    home: Path
    port: int = field(default_factory=free_port)
    workers: int | None = 2  # None: the server's default
    database_url: str | None = None  # None: SQLite in the data directory
    env: dict[str, str] = field(default_factory=dict)  # more settings, as BATCHSERVE_* variables
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(
        self, timeout: float = 60.0, admin_password: str | None = ADMIN_PASSWORD
    ) -> ServerProcess:
        """Start (again) on the data directory; ``admin_password`` None lets it generate one."""
        env = dict(os.environ, BATCHSERVE_HOME=str(self.home))
        env.pop("BATCHSERVE_ADMIN_PASSWORD", None)
        env.pop("BATCHSERVE_DATABASE_URL", None)
        if self.database_url is not None:
            env["BATCHSERVE_DATABASE_URL"] = self.database_url
        if admin_password is not None:
            env["BATCHSERVE_ADMIN_PASSWORD"] = admin_password
        env.update(self.env)
        self.log = self.home.parent / f"{self.home.name}-server.log"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "batchserve",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.home),
                *(["--workers", str(self.workers)] if self.workers is not None else []),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while deadline > time.monotonic():
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not answer in {timeout} s:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared server of the e2e tests (two workers)."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("server") / "home",
        env={"BATCHSERVE_METRICS_TOKEN": METRICS_TOKEN},
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def scaleout_server(
    tmp_path_factory: pytest.TempPathFactory,
    ray_cluster: RayCluster,
    s3_server: S3Server,
    s3_bucket_url: str,
) -> Iterator[ServerProcess]:
    """A server that runs chunks on the test Ray cluster and keeps batch data in S3 (as many
    actor slots as the cluster has CPUs: one per node)."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("scaleout") / "home",
        workers=None,
        env=scaleout_env(ray_cluster, s3_server, s3_bucket_url),
    ).start(timeout=120)
    yield proc
    proc.stop()


def scaleout_env(cluster: RayCluster, s3: S3Server, blob_url: str) -> dict[str, str]:
    """The settings of a server on the Ray cluster with its data at ``blob_url`` in S3."""
    aws = {name: value or "" for name, value in s3.environ().items()}
    return {
        "BATCHSERVE_EXECUTOR": "ray",
        "BATCHSERVE_RAY_ADDRESS": cluster.address,
        "BATCHSERVE_BLOB_URL": blob_url,
        **aws,
        **RAY_ENV,
    }


@pytest.fixture(scope="session", params=["local", "ray+s3"])
def any_server(request: pytest.FixtureRequest) -> ServerProcess:
    """The shared server on each executor and blob store: the local pool on a folder, and Ray
    actors on S3. Tests that use it run once on each."""
    name = "server" if request.param == "local" else "scaleout_server"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture(scope="session", params=["local", "ray+s3", "nodes"])
def any_deployment(request: pytest.FixtureRequest) -> ServerProcess:
    """As :func:`any_server`, and also an API node with two compute nodes on PostgreSQL (the
    server the tests talk to is the API node)."""
    if request.param == "nodes":
        cluster: NodeCluster = request.getfixturevalue("node_cluster")
        return cluster.api
    name = "server" if request.param == "local" else "scaleout_server"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


# --- many nodes on one PostgreSQL --------------------------------------------------------------

#: Leases of the test nodes: a killed node is found dead this many seconds after its last
#: heartbeat (when the process cannot be seen gone at once).
NODE_LEASE = "3"


@dataclass
class ComputeNode:
    """A ``batchserve worker`` process; it can be killed, drained and started again."""

    home: Path
    env: dict[str, str]
    workers: int = 2
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    args: tuple[str, ...] = ()

    def start(self, timeout: float = 60.0) -> ComputeNode:
        env = dict(os.environ, BATCHSERVE_HOME=str(self.home), **self.env)
        self.log = self.home.parent / f"{self.home.name}-worker.log"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "batchserve",
                "worker",
                "--workers",
                str(self.workers),
                "--log-level",
                "warning",
                *self.args,
            ],
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        started = self.log.stat().st_size if self.log.exists() else 0
        deadline = time.monotonic() + timeout
        while deadline > time.monotonic():
            if self.process.poll() is not None:
                raise RuntimeError(f"the compute node exited early:\n{self.log.read_text()}")
            with self.log.open("rb") as f:
                f.seek(started)
                if b"batchserve compute node" in f.read():
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"the compute node did not start in {timeout} s")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, and wait for the node to drain and exit: its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


@dataclass
class NodeCluster:
    """An API node (``serve --workers 0``) and compute nodes (``batchserve worker``) sharing
    one PostgreSQL database and one blob folder."""

    root: Path
    database_url: str
    api: ServerProcess
    compute: list[ComputeNode]

    @classmethod
    def create(cls, root: Path, database_url: str, computes: int = 2) -> NodeCluster:
        env = {
            "BATCHSERVE_DATABASE_URL": database_url,
            "BATCHSERVE_BLOB_URL": f"file://{root / 'blobs'}",
            "BATCHSERVE_NODE_LEASE": NODE_LEASE,
            "BATCHSERVE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
        api = ServerProcess(root / "api", workers=0, database_url=database_url, env=env)
        nodes = [ComputeNode(root / f"compute{i}", env) for i in range(computes)]
        return cls(root, database_url, api, nodes)

    def start(self) -> NodeCluster:
        self.api.start()
        for node in self.compute:
            node.start()
        return self

    def add_compute(self, workers: int = 2, args: tuple[str, ...] = ()) -> ComputeNode:
        node = ComputeNode(
            self.root / f"compute{len(self.compute)}", self.compute[0].env, workers, args=args
        ).start()
        self.compute.append(node)
        return node

    def stop(self) -> None:
        for node in self.compute:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
                node.process.wait()
        self.api.stop()


@contextlib.contextmanager
def node_cluster_on(root: Path) -> Iterator[NodeCluster]:
    """A started cluster on a database of its own."""
    with throwaway_database(find_postgres()) as url:
        cluster = NodeCluster.create(root, url)
        try:
            yield cluster.start()
        finally:
            cluster.stop()


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    """The shared cluster of the e2e tests: an API node and two compute nodes of two workers."""
    with node_cluster_on(tmp_path_factory.mktemp("nodes")) as cluster:
        yield cluster


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, for tests that kill it."""
    proc = ServerProcess(tmp_path / "home")
    yield proc
    proc.stop()


@pytest.fixture
def client(server: ServerProcess):  # type: ignore[no-untyped-def]
    from batchserve import Client

    with Client(server.url, username="admin", password=ADMIN_PASSWORD) as c:
        yield c


_counter = [0]


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A service name no other test uses."""
    _counter[0] += 1
    base = "".join(ch for ch in request.node.name if ch.isalnum())[:40]
    return f"{base}{_counter[0]}"


@pytest.fixture
def ml_login(server: ServerProcess) -> Callable[..., Any]:
    """Log in with ML Server's client: ``ml_login(username, password)``, or ``ml_login(token)``
    with an access token, as ``DeployClient``'s ``auth`` takes them. The test modules import
    ``batchserve.compat.azureml``, as a user of the client on this Python does."""
    from azureml.deploy import DeployClient
    from azureml.deploy.server import MLServer

    def login(*auth: str) -> Any:
        return DeployClient(server.url, use=MLServer, auth=auth if len(auth) > 1 else auth[0])

    return login


@pytest.fixture
def ml(ml_login: Callable[..., Any]) -> Any:
    """ML Server's client, logged in as the admin (an owner)."""
    return ml_login("admin", ADMIN_PASSWORD)


@pytest.fixture(scope="session")
def s3_bucket_url(s3_server: S3Server) -> Iterator[str]:
    """An ``s3://bucket/prefix`` for the session's scale-out servers (each under a prefix of
    its own)."""
    fs = s3_server.filesystem()
    if s3_server.url is not None:
        url = f"{s3_server.url.rstrip('/')}/e2e-{secrets.token_hex(4)}"
        yield url
        with contextlib.suppress(FileNotFoundError):
            fs.delete_dir(url.removeprefix("s3://"))
        return
    bucket = f"batchserve-e2e-{secrets.token_hex(4)}"
    fs.create_dir(bucket)
    yield f"s3://{bucket}/shared"
    with contextlib.suppress(Exception):
        fs.delete_dir(bucket)
