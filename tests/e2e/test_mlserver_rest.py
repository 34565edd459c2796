"""The ML Server face at the HTTP level: its error shape, sessions and snapshots, publish
checks, and the batch routes' exact fields."""

from __future__ import annotations

import time

import dill
import httpx
import pytest
from tests.e2e.conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.e2e


def login(url: str, username: str, password: str) -> httpx.Client:
    token = httpx.post(f"{url}/login", json={"username": username, "password": password})
    token.raise_for_status()
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


@pytest.fixture
def http(server):  # type: ignore[no-untyped-def]
    with login(server.url, "admin", ADMIN_PASSWORD) as c:
        yield c


def user(server, http, unique_name: str, role: str) -> httpx.Client:  # type: ignore[no-untyped-def]
    name = f"{role}{unique_name}"
    http.post("/v1/users", json={"username": name, "password": "pw-123456", "role": role})
    return login(server.url, name, "pw-123456")


def publish(http, name: str, code: str, inputs=None, outputs=None, snapshot=None, **more):  # type: ignore[no-untyped-def]
    body = {
        "code": code,
        "runtimeType": "Python",
        "inputParameterDefinitions": [{"name": n, "type": t} for n, t in (inputs or {}).items()],
        "outputParameterDefinitions": [{"name": n, "type": t} for n, t in (outputs or {}).items()],
        **({"snapshotId": snapshot} if snapshot else {}),
        **more,
    }
    return http.post(f"/services/{name}/v1", json=body)


def snapshot_of(http, objects: dict[str, bytes]) -> str:  # type: ignore[no-untyped-def]
    session = http.post("/sessions", json={"runtimeType": "Python"})
    assert session.status_code == 201
    sid = session.json()["sessionId"]
    for name, data in objects.items():
        put = http.post(
            f"/sessions/{sid}/workspace/{name}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert put.status_code == 201
    snap = http.post(f"/sessions/{sid}/snapshot", json={})
    assert snap.status_code == 201
    assert http.delete(f"/sessions/{sid}").status_code == 200
    return str(snap.json()["snapshotId"])


def finished(http, path: str) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 120
    while True:
        body = http.get(path, params={"showPartialResults": "true"}).json()
        if body["state"] in ("complete", "failed") or time.monotonic() > deadline:
            return dict(body)
        time.sleep(0.1)


def test_errors_have_ml_servers_shape(http):  # type: ignore[no-untyped-def]
    resp = http.get("/services/no-such-service/v1")
    assert resp.status_code == 404
    assert set(resp.json()) == {"message", "code", "fields"}
    assert resp.json()["code"] == "NotFound"


def test_a_missing_token_is_a_401_in_ml_servers_shape(server):  # type: ignore[no-untyped-def]
    resp = httpx.get(f"{server.url}/services")
    assert resp.status_code == 401
    assert resp.json()["code"] == "Unauthorized"
    assert "POST /login" in resp.json()["message"]


def test_workspace_objects_reach_the_service_still_serialized(http, unique_name):  # type: ignore[no-untyped-def]
    snap = snapshot_of(http, {"rates": dill.dumps({"eur": 0.5})})
    assert (
        publish(
            http,
            unique_name,
            "out = amount * rates['eur']",
            inputs={"amount": "numeric"},
            outputs={"out": "numeric"},
            snapshot=snap,
        ).json()
        == f"/api/{unique_name}/v1"
    )
    assert http.delete(f"/snapshots/{snap}").status_code == 200

    result = http.post(f"/api/{unique_name}/v1", json={"amount": 8}).json()
    assert result == {
        "success": True,
        "errorMessage": "",
        "consoleOutput": "",
        "changedFiles": [],
        "outputParameters": {"out": 4.0},
        "outputFiles": {},
    }
    meta = http.get(f"/services/{unique_name}/v1").json()[0]
    assert meta["snapshotId"] == snap
    assert meta["inputParameterDefinitions"] == [{"name": "amount", "type": "numeric"}]


def test_an_object_that_cannot_be_loaded_fails_the_records_not_the_server(http, unique_name):  # type: ignore[no-untyped-def]
    snap = snapshot_of(http, {"broken": b"not a pickle"})
    publish(http, unique_name, "y = x", {"x": "integer"}, {"y": "integer"}, snapshot=snap)

    result = http.post(f"/api/{unique_name}/v1", json={"x": 1}).json()
    assert result["success"] is False
    assert "broken" in result["errorMessage"]


def test_sessions_belong_to_whoever_opened_them(server, http, unique_name):  # type: ignore[no-untyped-def]
    sid = http.post("/sessions", json={"runtimeType": "Python"}).json()["sessionId"]
    with user(server, http, unique_name, "contributor") as other:
        resp = other.post(f"/sessions/{sid}/workspace/x", content=b"data")
    assert resp.status_code == 404
    http.delete(f"/sessions/{sid}")


def test_readers_cannot_open_sessions(server, http, unique_name):  # type: ignore[no-untyped-def]
    with user(server, http, unique_name, "reader") as reader:
        resp = reader.post("/sessions", json={"runtimeType": "Python"})
    assert resp.status_code == 403
    assert "contributor" in resp.json()["message"]


def test_workspace_object_names_must_be_identifiers(http):  # type: ignore[no-untyped-def]
    sid = http.post("/sessions", json={"runtimeType": "Python"}).json()["sessionId"]
    resp = http.post(f"/sessions/{sid}/workspace/not-a-name", content=b"x")
    assert resp.status_code == 400
    assert "identifier" in resp.json()["message"]


def test_publishing_from_an_unknown_snapshot_is_a_404(http, unique_name):  # type: ignore[no-untyped-def]
    resp = publish(http, unique_name, "y = 1", snapshot="0" * 32)
    assert resp.status_code == 404
    assert "snapshot" in resp.json()["message"]


def test_code_that_does_not_compile_is_refused_at_publish(http, unique_name):  # type: ignore[no-untyped-def]
    resp = publish(http, unique_name, "y = = 1")
    assert resp.status_code == 400
    assert "not valid Python" in resp.json()["message"]


def test_a_batch_starts_with_202_and_both_spellings_of_its_id(http, unique_name):  # type: ignore[no-untyped-def]
    publish(http, unique_name, "y = x + 1", {"x": "integer"}, {"y": "integer"})
    api = f"/api/{unique_name}/v1/batch"

    resp = http.post(api, params={"parallelCount": 2}, json=[{"x": 1}, {"x": 2}, {"x": 3}])

    assert resp.status_code == 202
    execution_id = resp.json()["batchExecutionId"]
    assert resp.json()["BatchExecutionId"] == execution_id
    assert http.get(api).json() == [execution_id]
    body = finished(http, f"{api}/{execution_id}")
    assert body["state"] == "complete"
    assert (body["completedItemCount"], body["totalItemCount"]) == (3, 3)
    assert [r["outputParameters"]["y"] for r in body["batchExecutionResults"]] == [2, 3, 4]
    assert http.delete(f"{api}/{execution_id}").json() == [execution_id]
    assert http.get(f"{api}/{execution_id}").status_code == 404


def test_batch_records_must_be_an_array_naming_every_input(http, unique_name):  # type: ignore[no-untyped-def]
    publish(http, unique_name, "y = x", {"x": "integer"}, {"y": "integer"})
    api = f"/api/{unique_name}/v1/batch"

    not_array = http.post(api, json={"x": 1})
    wrong_column = http.post(api, json=[{"z": 1}])

    assert not_array.status_code == 400
    assert "JSON array" in not_array.json()["message"]
    assert wrong_column.status_code == 400
    assert "'x'" in wrong_column.json()["message"]


def test_an_execution_is_only_found_under_its_own_service(http, unique_name):  # type: ignore[no-untyped-def]
    publish(http, unique_name, "y = x", {"x": "integer"}, {"y": "integer"})
    publish(http, unique_name + "b", "y = x", {"x": "integer"}, {"y": "integer"})
    started = http.post(f"/api/{unique_name}/v1/batch", json=[{"x": 1}]).json()

    resp = http.get(f"/api/{unique_name}b/v1/batch/{started['batchExecutionId']}")

    assert resp.status_code == 404
    assert resp.json()["code"] == "NotFound"
    finished(http, f"/api/{unique_name}/v1/batch/{started['batchExecutionId']}")


def test_redeploy_keeps_what_it_leaves_out_and_waits_for_running_batches(http, unique_name):  # type: ignore[no-untyped-def]
    publish(
        http,
        unique_name,
        "import time\ntime.sleep(0.3)\ny = x",
        {"x": "integer"},
        {"y": "integer"},
        description="first",
    )
    api = f"/api/{unique_name}/v1"
    started = http.post(
        f"{api}/batch", params={"parallelCount": 1}, json=[{"x": i} for i in range(40)]
    )

    refused = http.patch(f"/services/{unique_name}/v1", json={"code": "y = x * 2"})
    http.delete(f"{api}/batch/{started.json()['batchExecutionId']}")
    changed = http.patch(f"/services/{unique_name}/v1", json={"code": "y = x * 2"})

    assert refused.status_code == 409
    assert "unfinished batches" in refused.json()["message"]
    assert changed.status_code == 200
    meta = http.get(f"/services/{unique_name}/v1").json()[0]
    assert meta["description"] == "first"
    assert meta["inputParameterDefinitions"] == [{"name": "x", "type": "integer"}]
    assert http.post(api, json={"x": 5}).json()["outputParameters"] == {"y": 10}
