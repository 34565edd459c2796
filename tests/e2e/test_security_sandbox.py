"""The worker boundary, against a real server: a contributor's service code finds none of the
server's secrets, cannot open its database or another batch's files, cannot reach the network,
and cannot make the server run code by what its worker sends back."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import httpx
import pytest
from tests.conftest import missing_service
from tests.e2e.conftest import ADMIN_PASSWORD, ServerProcess

from batchserve import Client
from batchserve.worker.sandbox import bwrap_problem

pytestmark = pytest.mark.e2e

PASSWORD = "pw-sandbox-123456"


def snoop(probe: str) -> str:
    """Try one way out of the sandbox; say what it gave."""
    import os
    import socket
    import sqlite3

    kind, _, arg = probe.partition(":")
    try:
        if kind == "env":
            found = {
                k: v for k, v in os.environ.items() if k.startswith("BATCHSERVE") or "PASS" in k
            }
            return f"GOT {found}" if found else "denied: nothing"
        if kind == "file":
            with open(arg, "rb") as f:
                return f"GOT {f.read(40)!r}"
        if kind == "list":
            return f"GOT {os.listdir(arg)}"
        if kind == "sqlite":
            db = sqlite3.connect(f"file:{arg}?mode=rw", uri=True)
            db.execute("UPDATE users SET role = 'owner'")
            db.commit()
            return "GOT write"
        if kind == "net":
            host, port = arg.rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=2).close()
            return "GOT connection"
        if kind == "unix":
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(arg)
            return "GOT connection"
    except Exception as exc:
        return f"denied: {type(exc).__name__}"
    return "unknown probe"


def forge(x: float) -> float:
    """Write a crafted pickle (one that would create a file when unpickled) to every socket the
    worker holds, as if it were the worker's answer to the server."""
    import os
    import pickle
    import stat

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("touch /tmp/batchserve-unpickled-by-the-server",))

    payload = pickle.dumps(Boom())
    for fd in range(3, 256):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.write(fd, len(payload).to_bytes(4, "big") + payload)
        except OSError:
            pass
    return x


@pytest.fixture
def contributor(server: ServerProcess, unique_name: str) -> Client:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        token = http.post("/login", json={"username": "admin", "password": ADMIN_PASSWORD}).json()[
            "access_token"
        ]
        resp = http.post(
            "/v1/users",
            json={"username": f"c{unique_name}", "password": PASSWORD, "role": "contributor"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status_code == 201, resp.text
    return Client(server.url, username=f"c{unique_name}", password=PASSWORD)


def _role(server: ServerProcess, username: str) -> str:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        token = http.post("/login", json={"username": "admin", "password": ADMIN_PASSWORD}).json()[
            "access_token"
        ]
        listed = http.get("/v1/users", headers={"Authorization": f"Bearer {token}"}).json()
    rows = listed["users"] if isinstance(listed, dict) else listed
    return next(u["role"] for u in rows if u["username"] == username)


def test_service_code_finds_no_secret_database_or_other_batch(
    server: ServerProcess, client: Client, contributor: Client, unique_name: str
) -> None:
    problem = bwrap_problem()
    if problem is not None:
        missing_service(f"workers are not sandboxed here: {problem}")
    # Another user's batch, whose files the contributor's code then looks for.
    other = client.publish_service(
        f"o{unique_name}", lambda x: x + 1, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    theirs = other.batch({"x": [41.0]}).start()
    theirs.wait(60)
    home = server.home.resolve()
    their_files = sorted(
        p for p in (home / "blobs").rglob("*") if theirs.execution_id in str(p) and p.is_file()
    )
    assert their_files, "the other batch's files are where the test looks for them"
    database = home / "batchserve.db"
    assert database.exists()

    svc = contributor.publish_service(
        f"s{unique_name}", snoop, inputs={"probe": str}, outputs={"found": str}, version="v1"
    )
    probes = [
        "env:",
        f"file:{home / 'admin-password'}",
        f"file:{database}",
        f"sqlite:{database}",
        f"list:{home}",
        f"list:{home / 'blobs'}",
        *(f"file:{p}" for p in their_files[:3]),
        f"file:/proc/{server.process.pid}/environ",  # type: ignore[union-attr]
        "file:/proc/1/environ",
        "file:/root/.bash_history",
        "file:/etc/shadow",
        "net:127.0.0.1:5432",
        # The database's own socket: a trust-auth PostgreSQL would let anyone on it in.
        "unix:/var/run/postgresql/.s.PGSQL.5432",
        f"net:127.0.0.1:{server.port}",
    ]
    batch = svc.batch({"probe": probes}).start()
    results = batch.wait(120).to_pandas()
    found = dict(zip(probes, results["found"], strict=True))
    leaks = {p: f for p, f in found.items() if not str(f).startswith("denied")}
    assert not leaks, f"service code reached what it must not: {leaks}"
    # The same by a request-response call, which runs on a worker too.
    assert svc.consume(probe="env:").outputs["found"].startswith("denied")
    assert _role(server, f"c{unique_name}") == "contributor"


def test_a_worker_that_sends_a_pickle_is_stopped_and_nothing_is_unpickled(
    server: ServerProcess, contributor: Client, unique_name: str
) -> None:
    marker = Path("/tmp/batchserve-unpickled-by-the-server")
    marker.unlink(missing_ok=True)
    svc = contributor.publish_service(
        f"f{unique_name}", forge, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    resp = svc.batch({"x": [1.0]}).start().wait(120)
    assert resp.state.lower() in ("failed", "completed")
    assert not marker.exists()
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_the_data_directory_is_private(server: ServerProcess) -> None:
    home = server.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for path in [home / "batchserve.db", home / "admin-password", *home.rglob("*")]:
        if path.exists() and not path.is_symlink():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def _worker_pids(url: str) -> list[int]:
    with httpx.Client(base_url=url, timeout=30) as http:
        token = http.post("/login", json={"username": "admin", "password": ADMIN_PASSWORD}).json()[
            "access_token"
        ]
        workers = http.get("/v1/workers", headers={"Authorization": f"Bearer {token}"}).json()
    return [w["pid"] for w in workers["workers"] if w["pid"]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for good; only its parent has not read its status yet
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def busy(x: float) -> float:
    import time

    end = time.time() + 60
    while time.time() < end:
        pass
    return x


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_the_workers_stop_with_the_server_however_it_stops(
    fresh_server: ServerProcess, unique_name: str, how: signal.Signals
) -> None:
    fresh_server.start()
    owner = Client(fresh_server.url, username="admin", password=ADMIN_PASSWORD)
    svc = owner.publish_service(unique_name, busy, inputs={"x": float}, outputs={"y": float})
    svc.batch({"x": [1.0, 2.0]}, parallel_count=2).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _busy_count(fresh_server.url) < 2:
        time.sleep(0.2)
    pids = _worker_pids(fresh_server.url)
    assert len(pids) == 2
    assert fresh_server.process is not None
    fresh_server.process.send_signal(how)
    fresh_server.process.wait(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)], "workers outlived the server"
    scratch = list(Path("/tmp").glob(f"batchserve-workers-{fresh_server.process.pid}-*"))
    if how == signal.SIGKILL:
        # A killed server cannot clean up: the next one to start does.
        fresh_server.start()
        assert all(not root.exists() for root in scratch)
    else:
        assert not scratch, "the workers' scratch folders outlived the server"


def _busy_count(url: str) -> int:
    with httpx.Client(base_url=url, timeout=30) as http:
        token = http.post("/login", json={"username": "admin", "password": ADMIN_PASSWORD}).json()[
            "access_token"
        ]
        workers = http.get("/v1/workers", headers={"Authorization": f"Bearer {token}"}).json()
    return sum(1 for w in workers["workers"] if w["busy"])


def test_a_blob_store_outside_the_data_directory_holds_the_files_and_is_hidden_too(
    fresh_server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    problem = bwrap_problem()
    if problem is not None:
        missing_service(f"workers are not sandboxed here: {problem}")
    shared = tmp_path / "shared-blobs"
    monkeypatch.setenv("BATCHSERVE_BLOB_URL", f"file://{shared}")
    fresh_server.start()
    owner = Client(fresh_server.url, username="admin", password=ADMIN_PASSWORD)
    svc = owner.publish_service(
        "snoop", snoop, inputs={"probe": str}, outputs={"found": str}, version="v1"
    )
    batch = svc.batch({"probe": [f"list:{shared}", f"list:{shared / 'batches'}"]}).start()
    found = batch.wait(60).to_pandas()["found"].tolist()
    assert all(f.startswith("denied") for f in found), found
    assert (shared / "batches" / batch.execution_id).is_dir()
    assert not (fresh_server.home / "blobs" / "batches").exists()
