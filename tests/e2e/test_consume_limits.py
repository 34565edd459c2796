"""Requests cannot hold workers: a consume that times out, or whose client goes away, is
stopped; consumes run on at most their share of the workers, so batches keep the rest; a record
that needs more memory than a worker may take fails alone, saying so."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from batchserve import Client

from .conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = pytest.mark.e2e


def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose consumes time out after 3 s (two workers: one may run consumes), and
    whose workers may take 1 GiB each."""
    limits = {"BATCHSERVE_CONSUME_TIMEOUT": "3", "BATCHSERVE_WORKER_MEMORY": "1GiB"}
    os.environ.update(limits)
    try:
        proc = ServerProcess(Path(tmp_path_factory.mktemp("consumes")) / "home").start()
    finally:
        for name in limits:
            del os.environ[name]
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    token = httpx.post(
        f"{server.url}/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["access_token"]
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture(scope="module")
def service(server: ServerProcess) -> str:
    owner = Client(server.url, username="admin", password=ADMIN_PASSWORD)
    owner.publish_service(
        "nap", nap, inputs={"seconds": float}, outputs={"slept": float}, version="v1"
    )
    return "/v1/services/nap/v1/consume"


def hog(megabytes: int) -> int:
    return len(bytearray(megabytes << 20))


def test_a_record_over_the_worker_memory_limit_fails_alone(server: ServerProcess) -> None:
    owner = Client(server.url, username="admin", password=ADMIN_PASSWORD)
    svc = owner.publish_service(
        "hog", hog, inputs={"megabytes": int}, outputs={"got": int}, version="v1"
    )
    results = svc.batch({"megabytes": [10, 4096, 20]}).start().wait(60).to_pandas()
    assert results["status"].tolist() == ["succeeded", "failed", "succeeded"]
    error = results["error"].tolist()[1]
    assert "memory limit (1024 MiB)" in error and "--worker-memory" in error


def _busy(http: httpx.Client) -> int:
    return sum(1 for w in http.get("/v1/workers").json()["workers"] if w["busy"])


def _until(condition, seconds: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_consume_that_times_out_is_stopped(
    server: ServerProcess, http: httpx.Client, service: str
) -> None:
    resp = http.post(service, json={"inputs": {"seconds": 60}})
    assert resp.status_code == 503
    assert "did not answer within 3 s" in resp.json()["error"]["message"]
    assert _until(lambda: _busy(http) == 0), "the worker still runs the abandoned consume"
    # Its worker was replaced; the scratch folder of the one stopped is gone with it.
    assert server.process is not None
    (root,) = Path("/tmp").glob(f"batchserve-workers-{server.process.pid}-*")
    assert _until(lambda: len(list(root.glob("slot-*"))) == 2), list(root.iterdir())


def test_a_consume_whose_client_goes_away_is_stopped(
    server: ServerProcess, http: httpx.Client, service: str
) -> None:
    def call() -> None:
        # The client gives up after half a second and closes its connection.
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(
                f"{server.url}{service}",
                json={"inputs": {"seconds": 2.5}},
                headers=http.headers,
                timeout=0.5,
            )

    assert _until(lambda: _busy(http) == 0)
    thread = threading.Thread(target=call)
    thread.start()
    assert _until(lambda: _busy(http) == 1, 5), "the consume did not start"
    thread.join()
    # Stopped when the server notices the client is gone, well before the 2.5 s nap ends.
    assert _until(lambda: _busy(http) == 0, 2.0), "the worker went on for a client that left"


def test_consumes_leave_workers_to_batches(
    server: ServerProcess, http: httpx.Client, service: str
) -> None:
    owner = Client(server.url, username="admin", password=ADMIN_PASSWORD)
    callers = [
        threading.Thread(
            target=lambda: http.post(service, json={"inputs": {"seconds": 2.0}}), daemon=True
        )
        for _ in range(3)
    ]
    for caller in callers:
        caller.start()
    assert _until(lambda: _busy(http) >= 1, 5)
    # Three consumes wait or run, yet a batch started now runs beside them at once.
    batch = owner.get_service("nap", version="v1").batch({"seconds": [0.01] * 4}).start()
    assert batch.wait(20).state.lower() == "completed"
    busy = [w for w in http.get("/v1/workers").json()["workers"] if w.get("consume")]
    assert len(busy) <= 1, "consumes took more than their share of the workers"
    for caller in callers:
        caller.join(timeout=30)
