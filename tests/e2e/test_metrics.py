"""GET /metrics on the session's server: who may read it, and figures that follow a batch as it
runs and after it completes (read from the store, and counted where chunks end)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchserve import BatchState

from .conftest import ADMIN_PASSWORD, METRICS_TOKEN, ServerProcess
from .test_cancel_and_durability import wait_for

pytestmark = pytest.mark.e2e

RECORDS = 40
CHUNK_SIZE = 4


def slowish_double(x: float) -> float:
    import time

    time.sleep(0.1)
    return 2 * x


Samples = list[tuple[str, dict[str, str], float]]


def scrape(server: ServerProcess, token: str) -> Samples:
    answer = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 without any)."""
    return sum(v for n, found, v in samples if n == name and labels.items() <= found.items())


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {found[label] for n, found, _ in samples if n == name and label in found}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _user_token(server: ServerProcess, admin: str, name: str, role: str) -> str:
    created = httpx.post(
        server.url + "/v1/users",
        json={"username": name, "password": "pw-123456", "role": role},
        headers=bearer(admin),
    )
    assert created.status_code == 201, created.text
    login = httpx.post(server.url + "/login", json={"username": name, "password": "pw-123456"})
    assert login.status_code == 200, login.text
    return str(login.json()["access_token"])


def _error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code
    return error


def test_metrics_are_refused_without_a_token_a_wrong_one_or_a_readers(
    server: ServerProcess, client: Any, unique_name: str
) -> None:
    url = server.url + "/metrics"
    assert "bearer token" in _error(httpx.get(url), 401, "unauthorized")["message"]
    _error(httpx.get(url, headers=bearer("not-a-token")), 401, "unauthorized")
    _error(httpx.get(url, headers={"Authorization": METRICS_TOKEN}), 401, "unauthorized")
    reader = _user_token(server, client.token, f"reader{unique_name}", "reader")
    assert "owners" in _error(httpx.get(url, headers=bearer(reader)), 403, "forbidden")["message"]
    contributor = _user_token(server, client.token, f"contrib{unique_name}", "contributor")
    _error(httpx.get(url, headers=bearer(contributor)), 403, "forbidden")


def test_the_metrics_token_and_an_owner_both_read_the_metrics(
    server: ServerProcess, client: Any
) -> None:
    for token in (METRICS_TOKEN, client.token):
        samples = scrape(server, token)
        assert value(samples, "batchserve_store_up") == 1
        # Every state has its series, at 0 when no batch is in it.
        assert label_values(samples, "batchserve_batches", "state") == {s.value for s in BatchState}


def test_metrics_follow_a_batch_while_it_runs_and_after_it_completes(
    server: ServerProcess, client: Any, unique_name: str
) -> None:
    svc = client.publish_service(
        unique_name, code=slowish_double, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    before = scrape(server, METRICS_TOKEN)
    histogram = "batchserve_chunk_run_seconds_count"
    assert value(before, histogram, service=unique_name) == 0
    uploaded = value(before, "batchserve_upload_bytes_total")
    exported = value(before, "batchserve_export_bytes_total")
    completed = value(before, "batchserve_batches", state="completed")
    started = value(before, "batchserve_queue_wait_seconds_count")

    batch = svc.batch(
        [{"x": float(i)} for i in range(RECORDS)], parallel_count=1, chunk_size=CHUNK_SIZE
    ).start()

    def running() -> Samples | None:
        samples = scrape(server, METRICS_TOKEN)
        busy = value(samples, "batchserve_node_workers", state="busy")
        waiting = value(samples, "batchserve_queue_records", service=unique_name)
        return samples if busy >= 1 and waiting > 0 else None

    during = wait_for(running, timeout=120)
    assert value(during, "batchserve_batches", state="running") >= 1
    # One node (the embedded server), with its two workers busy or idle.
    nodes = label_values(during, "batchserve_node_workers", "node")
    assert len(nodes) == 1
    assert value(during, "batchserve_node_workers") == 2
    assert value(during, "batchserve_upload_bytes_total") > uploaded

    batch.wait(timeout=120)
    results = httpx.get(
        f"{server.url}/v1/batches/{batch.execution_id}/results",
        params={"format": "jsonl"},
        headers=bearer(client.token),
    )
    assert results.status_code == 200
    after = scrape(server, METRICS_TOKEN)

    # Read from the store: the records of the service, the completed batch, an empty queue.
    assert value(after, "batchserve_records", service=unique_name, status="succeeded") == RECORDS
    assert value(after, "batchserve_records", service=unique_name, status="failed") == 0
    assert value(after, "batchserve_batches", state="completed") >= completed + 1
    assert value(after, "batchserve_queue_records", service=unique_name) == 0
    assert value(after, "batchserve_queue_wait_seconds_count") >= started + 1
    # Counted where the chunks ended: one observation a chunk, every record once.
    assert value(after, histogram, service=unique_name) == RECORDS // CHUNK_SIZE
    assert value(after, "batchserve_chunk_run_seconds_sum", service=unique_name) > 0
    assert (
        value(after, "batchserve_chunk_records_total", service=unique_name, status="succeeded")
        == RECORDS
    )
    assert value(after, "batchserve_export_bytes_total") >= exported + len(results.content)

    # Requests are labelled by their route's template, never by the path asked for.
    routes = label_values(after, "batchserve_http_request_duration_seconds_count", "route")
    assert "/v1/batches/{batch_id}" in routes
    assert "/v1/services/{name}/{version}/batches" in routes
    assert "/metrics" in routes
    assert not any(batch.execution_id in route for route in routes)
    polled = value(
        after,
        "batchserve_http_request_duration_seconds_count",
        method="GET",
        route="/v1/batches/{batch_id}",
        status="200",
    )
    assert polled >= 1


def test_unknown_paths_and_methods_add_no_series(server: ServerProcess, client: Any) -> None:
    for path in ("/no/such/path/1", "/no/such/path/2"):
        assert httpx.get(server.url + path).status_code == 404
    assert httpx.request("BREW", server.url + "/health").status_code in (400, 405, 501)
    samples = scrape(server, client.token)
    routes = label_values(samples, "batchserve_http_request_duration_seconds_count", "route")
    assert "(unmatched)" in routes
    assert not any(r.startswith("/no/such") for r in routes)
    methods = label_values(samples, "batchserve_http_request_duration_seconds_count", "method")
    assert "BREW" not in methods


def test_the_server_log_holds_no_password_or_token(server: ServerProcess, client: Any) -> None:
    scrape(server, METRICS_TOKEN)
    httpx.get(server.url + "/metrics", headers=bearer("wrong-" + METRICS_TOKEN))
    assert server.log is not None
    text = server.log.read_text(errors="replace")
    for secret in (ADMIN_PASSWORD, METRICS_TOKEN, client.token):
        assert secret not in text
