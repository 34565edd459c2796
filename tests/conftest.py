"""Fixtures shared by every kind of test: the services some tests need (PostgreSQL, an
S3-compatible server), and what a test does when such a service is missing."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from batchserve.settings import with_driver
from batchserve.store import upgrade
from batchserve.store.models import Base

if TYPE_CHECKING:
    from pyarrow import fs as pafs

    from batchserve.blobs.s3 import S3Config

#: The PostgreSQL server of the tests, overridden by ``BATCHSERVE_TEST_POSTGRES_URL``: a database
#: to connect to while the tests' own databases are created and dropped beside it. Through its
#: Unix socket where there is one: the tests may run in a network namespace of their own
#: (scripts/test), whose loopback has no PostgreSQL.
POSTGRES_SOCKET = "/var/run/postgresql"
POSTGRES_URL = (
    f"postgresql://postgres@/postgres?host={POSTGRES_SOCKET}"
    if os.path.exists(f"{POSTGRES_SOCKET}/.s.PGSQL.5432")
    else "postgresql://postgres@127.0.0.1:5432/postgres"
)


def missing_service(message: str) -> NoReturn:
    """A service the test needs is not there: skip on a laptop, fail in CI (``CI=true``), where
    a skipped test would pass unnoticed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (with CI=true a missing service fails the test)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of the tests' PostgreSQL server (its maintenance database)."""
    return find_postgres()


def find_postgres() -> str:
    """The URL of a reachable PostgreSQL server (of its maintenance database)."""
    url = with_driver(os.environ.get("BATCHSERVE_TEST_POSTGRES_URL", POSTGRES_URL))
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        missing_service(
            f"PostgreSQL is not reachable at {make_url(url).render_as_string()} "
            f"({' '.join(str(exc.orig).split())}); start it, or point "
            "BATCHSERVE_TEST_POSTGRES_URL at one"
        )
    finally:
        engine.dispose()
    return url


@contextmanager
def throwaway_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server of ``server_url``, dropped on exit: its URL."""
    name = f"batchserve_test_{secrets.token_hex(4)}"
    # CREATE and DROP DATABASE cannot run in a transaction.
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            # Sessions on it run in a zone far from UTC (as a server's TimeZone may be), so that
            # a time read back in the session's zone rather than in UTC shows in the tests.
            conn.execute(text(f"ALTER DATABASE \"{name}\" SET timezone TO 'Pacific/Chatham'"))
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            # FORCE: a server process the test killed may have left connections behind.
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A migrated database of the test session's own; tests empty it (:func:`empty_tables`)
    rather than create a database each, which would cost far more than the tests."""
    with throwaway_database(postgres_server) as url:
        upgrade(url)
        yield url


def empty_tables(engine: Engine) -> None:
    """Remove every row the tests may have left (not the migrations' version) and restart ids."""
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


# --- an S3-compatible server -----------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    """The S3-compatible server of the tests: where it is and the credentials it takes.

    ``url`` is None for the tests' own moto server, where each test gets a bucket of its own;
    with ``BATCHSERVE_TEST_S3_URL`` it is that ``s3://bucket/prefix``, and each test gets a
    prefix of its own under it.
    """

    config: S3Config
    url: str | None = None

    def environ(self) -> dict[str, str | None]:
        """The AWS variables that point a process at this server (None: unset)."""
        c = self.config
        return {
            "AWS_ENDPOINT_URL": c.endpoint_url,
            "AWS_ENDPOINT_URL_S3": None,  # would win over AWS_ENDPOINT_URL
            "AWS_ACCESS_KEY_ID": c.access_key,
            "AWS_SECRET_ACCESS_KEY": c.secret_key,
            "AWS_SESSION_TOKEN": c.session_token,
            "AWS_REGION": c.region,
            "AWS_DEFAULT_REGION": None,
        }

    def filesystem(self) -> pafs.S3FileSystem:
        """A client of the server that may create and remove buckets (the store never does)."""
        from pyarrow import fs as pafs

        return pafs.S3FileSystem(
            **self.config.filesystem_options(),
            allow_bucket_creation=True,
            allow_bucket_deletion=True,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server(**environ: str) -> Iterator[str]:
    """moto's S3 server, in a process of its own on 127.0.0.1: its endpoint URL. ``environ``
    is added to its environment (``INITIAL_NO_AUTH_ACTION_COUNT="0"`` makes it check keys).

    Not in the tests' process (``ThreadedMotoServer``): the server's Python would share the
    tests' GIL, and a pyarrow S3 call made while holding it (a stream closed by its finalizer)
    would wait for a server that cannot run until that call times out."""
    if importlib.util.find_spec("moto") is None:
        missing_service(
            "moto (the tests' S3 server) is not installed; install the test extra "
            "(pip install -e '.[test]'), or point BATCHSERVE_TEST_S3_URL at an S3 server"
        )
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **environ},
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    missing_service(f"moto's S3 server did not start on port {port}: {tail}")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """An S3-compatible server for the session: ``BATCHSERVE_TEST_S3_URL`` (an
    ``s3://bucket/prefix`` to work under, on the server the AWS variables name), or else a moto
    server started for the session."""
    from batchserve.blobs import BlobStoreUnavailable
    from batchserve.blobs.s3 import S3BlobStore, S3Config

    url = os.environ.get("BATCHSERVE_TEST_S3_URL")
    if url:
        try:
            config = S3Config.from_environ()
            S3BlobStore(url, config)
        except (ValueError, BlobStoreUnavailable) as exc:
            missing_service(f"the S3 server of BATCHSERVE_TEST_S3_URL={url} cannot be used: {exc}")
        yield S3Server(config, url)
        return
    with moto_server() as endpoint:
        yield S3Server(
            S3Config(
                endpoint_url=endpoint,
                access_key="batchserve-test",
                secret_key="batchserve-test-secret",
                region="us-east-1",
            )
        )


@pytest.fixture
def s3_blob_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The ``s3://bucket/prefix`` of an empty blob store of the test's own, with the AWS
    variables set for the test to open it (as a worker opens a store from its URL)."""
    for name, value in s3_server.environ().items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    fs = s3_server.filesystem()
    if s3_server.url is None:
        bucket = f"batchserve-test-{secrets.token_hex(4)}"
        fs.create_dir(bucket)
        try:
            yield f"s3://{bucket}/blobs"
        finally:
            fs.delete_dir(bucket)
        return
    url = f"{s3_server.url.rstrip('/')}/test-{secrets.token_hex(4)}"
    try:
        yield url
    finally:
        path = url.removeprefix("s3://")
        with suppress(FileNotFoundError):
            fs.delete_dir(path)


# --- a Ray cluster of two nodes ----------------------------------------------------------------

#: How every process of the test cluster (nodes, servers) talks to Ray: the same everywhere, or
#: a token-authenticated cluster would refuse the others.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


#: The head's health checks of the other nodes, sped up for tests that kill a node.
FAST_NODE_DEATH = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


@dataclass
class RayCluster:
    """A local Ray cluster: a head node and a second node, each its own raylet, in process
    groups of their own (so a node can be killed whole)."""

    port: int
    temp_dir: str
    head: subprocess.Popen[bytes] | None = None
    second: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ray(
        self, *args: str, log: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        ray = str(Path(sys.executable).with_name("ray"))
        return subprocess.Popen(
            [
                ray,
                "start",
                "--block",
                "--num-cpus",
                "1",
                "--node-ip-address",
                "127.0.0.1",
                "--object-store-memory",
                str(200 * 1024**2),
                "--disable-usage-stats",
                *args,
            ],
            env=dict(os.environ, **RAY_ENV, **(env or {})),
            stdout=open(Path(self.temp_dir) / log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self) -> RayCluster:
        self.head = self._ray(
            "--head",
            "--port",
            str(self.port),
            "--include-dashboard=false",
            "--temp-dir",
            self.temp_dir,
            log="head.log",
            # A dead node is declared dead after about 3 s, not Ray's default 30 or so.
            env=FAST_NODE_DEATH,
        )
        self.wait_for_nodes(1)
        self.start_second_node()
        return self

    def start_second_node(self, *args: str) -> None:
        """Start the second node (again), with more ``ray start`` options if given."""
        self.second = self._ray("--address", self.address, *args, log="second.log")
        self.wait_for_nodes(2)

    def alive_nodes(self) -> int:
        script = (
            f"import ray; ray.init(address={self.address!r}, log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        out = subprocess.run(
            [sys.executable, "-c", script],
            env=dict(os.environ, **RAY_ENV),
            capture_output=True,
            timeout=60,
        )
        try:
            return int(out.stdout.split()[-1])
        except (IndexError, ValueError):
            return 0

    def wait_for_nodes(self, count: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() != count:
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-2000:] for p in Path(self.temp_dir).glob("*.log"))
                raise RuntimeError(f"the Ray cluster has no {count} live node(s):\n{logs}")
            time.sleep(1)

    def kill_second_node(self) -> None:
        """SIGKILL every process of the second node (its raylet, its workers, its actors)."""
        assert self.second is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.second.pid, signal.SIGKILL)
        self.second.wait(timeout=30)

    def stop(self) -> None:
        for proc in (self.second, self.head):
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def ray_problem() -> str | None:
    """Why the test Ray cluster cannot run here, or None."""
    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install 'batchserve[ray]')"
    if not Path(sys.executable).with_name("ray").exists():
        return "the ray command is missing beside this Python"
    return None


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    problem = ray_problem()
    if problem:
        missing_service(problem)
    # Short: Ray's socket paths live under it, and a Unix socket's path has at most 107 bytes.
    cluster = RayCluster(free_port(), tempfile.mkdtemp(prefix="bsray-", dir="/tmp"))
    try:
        cluster.start()
    except Exception as exc:
        cluster.stop()
        missing_service(f"a local Ray cluster did not start: {exc}")
    yield cluster
    cluster.stop()
