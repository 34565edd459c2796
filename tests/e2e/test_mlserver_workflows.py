"""Whole workflows of Machine Learning Server's guides through its original client
(``azureml-model-management-sdk``) against a real server: the mtcars batch workflow, the fluent
publishing form, listing, the three roles, services shared with the native SDK, tokens, and the
per-service Swagger document.

The service functions are defined at module level: the client publishes their *source*, and the
models and objects they read are uploaded into the workspace under the names given at deploy.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from azureml.common.http_client import HttpException
from openapi_spec_validator import OpenAPIV2SpecValidator, validate
from tests.e2e.conftest import ADMIN_PASSWORD

import batchserve.compat.azureml  # noqa: F401 - the client on Python >= 3.8

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MTCARS = ROOT / "examples" / "data" / "mtcars.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PASSWORD = "pw-123456"


def manual_transmission(hp, wt):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().hist(hp_values, bins=10, color="red")  # noqa: F821 - a workspace object
    fig.savefig("Histogram.png")
    return float(cars_model.predict_proba([[hp, wt]])[0, 1])  # noqa: F821 - a workspace object


def init():
    global factor
    factor = 3


def triple(x):
    return factor * x  # set by init


def scale(x):
    with open("note.txt", "w") as f:
        f.write(f"scaled {x}")
    return factor * x + offsets["x"]  # noqa: F821 - a workspace model


def add(x, y):
    return x + y


def square(x):
    return x * x


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtcars() -> pd.DataFrame:
    return pd.read_csv(MTCARS)


@pytest.fixture(scope="module")
def mtcars_model(mtcars):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=math.inf, solver="lbfgs", max_iter=10_000, tol=1e-10)
    return model.fit(mtcars[["hp", "wt"]].to_numpy(), mtcars["am"].to_numpy())


def login(url: str, username: str, password: str) -> dict[str, Any]:
    resp = httpx.post(f"{url}/login", json={"username": username, "password": password})
    resp.raise_for_status()
    return dict(resp.json())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def add_user(server, unique_name):  # type: ignore[no-untyped-def]
    """``add_user(role)`` creates a user with the native API, as the admin, and returns its name."""
    admin = login(server.url, "admin", ADMIN_PASSWORD)["access_token"]

    def create(role: str) -> str:
        username = f"{role}{unique_name}"
        resp = httpx.post(
            f"{server.url}/v1/users",
            json={"username": username, "password": PASSWORD, "role": role},
            headers=bearer(admin),
        )
        assert resp.status_code == 201, resp.text
        return username

    return create


def finished(batch, deadline: float = 120.0):  # type: ignore[no-untyped-def]
    """Poll ``results(show_partial_results=True)`` as ML Server's guide does, until the batch is
    complete; fail when it fails or does not finish in time. Returns every answer seen."""
    seen = []
    stop = time.monotonic() + deadline
    while True:
        res = batch.results(show_partial_results=True)
        seen.append(res)
        if res.state == "complete":
            return seen
        if res.state == "failed":
            pytest.fail(f"the batch failed: {res}")
        if time.monotonic() > stop:
            pytest.fail(f"the batch did not finish in {deadline} s: {res}")
        time.sleep(0.1)


def http_error(call) -> HttpException:  # type: ignore[no-untyped-def]
    with pytest.raises(HttpException) as info:
        call()
    return info.value


# --- 1. the mtcars workflow ---------------------------------------------------------------------


def test_the_mtcars_guide_deploys_consumes_and_batches_with_the_ml_server_client(
    ml, unique_name, mtcars, mtcars_model, tmp_path
):  # type: ignore[no-untyped-def]
    service = ml.deploy_service(
        unique_name,
        version="v1.0.0",
        description="Manual transmission from horsepower and weight",
        code_fn=manual_transmission,
        models={"cars_model": mtcars_model},
        objects={"hp_values": mtcars["hp"].tolist()},
        inputs={"hp": float, "wt": float},
        outputs={"answer": float},
        artifacts=["Histogram.png"],
    )

    one = service.manual_transmission(120, 2.8)
    assert one.error == ""
    assert one.output("answer") == pytest.approx(0.6418, abs=1e-4)
    assert one.artifact("Histogram.png").startswith(PNG_MAGIC)

    batch = service.batch(mtcars[["hp", "wt"]], parallel_count=10).start()
    assert batch.execution_id in service.list_batch_executions()
    polls = finished(batch)
    done = polls[-1]
    assert (done.completed_item_count, done.total_item_count) == (32, 32)
    counts = [p.completed_item_count for p in polls]
    assert counts == sorted(counts)

    expected = mtcars_model.predict_proba(mtcars[["hp", "wt"]].to_numpy())[:, 1]
    for i in range(32):
        execution = done.execution(i)
        assert execution.error == ""
        assert execution.output("answer") == pytest.approx(expected[i], abs=1e-9)
        assert batch.list_artifacts(i) == ["Histogram.png"]
        assert batch.artifact(i, "Histogram.png").startswith(PNG_MAGIC)
    # The client's @execution decorator drops keyword arguments: pass the destination by position.
    paths = batch.download(31, "Histogram.png", str(tmp_path))
    assert [Path(p).name for p in paths] == ["Histogram.png"]
    assert Path(paths[0]).read_bytes() == batch.artifact(31, "Histogram.png")
    assert Path(paths[0]).read_bytes().startswith(PNG_MAGIC)

    assert ml.delete_service(unique_name, version="v1.0.0") is True


# --- 2. the fluent form -------------------------------------------------------------------------


def test_the_fluent_form_deploys_and_redeploys_a_service(ml, unique_name):  # type: ignore[no-untyped-def]
    definition = (
        ml.service(unique_name)
        .version("v1")
        .code_fn(scale, init)
        .inputs(x=int)
        .outputs(y=int)
        .models(offsets={"x": 1})
        .artifacts(["note.txt"])
        .description("Triples its input and adds one")
        .alias("rescale")
    )

    service = definition.deploy()

    caps = service.capabilities()
    assert (caps["name"], caps["version"], caps["description"]) == (
        unique_name,
        "v1",
        "Triples its input and adds one",
    )
    assert (caps["operation_id"], caps["artifacts"]) == ("rescale", ["note.txt"])
    res = service.rescale(7)
    assert res.output("y") == 22
    assert res.artifact("note.txt") == b"scaled 7"

    # The definition keeps what it was given; a redeploy sends it again with the changes.
    redeployed = (
        definition.code_str(
            "open('note.txt', 'w').write('again')\ny = x * factor + offsets['x'] * 100",
            "factor = 10",
        )
        .description("Ten times plus one hundred")
        .redeploy()
    )

    assert redeployed.capabilities()["description"] == "Ten times plus one hundred"
    res = redeployed.rescale(7)
    assert res.output("y") == 170
    assert res.artifact("note.txt") == b"again"
    assert [s["version"] for s in ml.list_services(unique_name)] == ["v1"]


# --- 3. listing and the latest version ----------------------------------------------------------


def test_list_services_finds_all_by_name_and_by_version_and_get_service_takes_the_latest(
    ml, unique_name
):  # type: ignore[no-untyped-def]
    ml.deploy_service(
        unique_name, version="v1", code_fn=square, inputs={"x": int}, outputs={"y": int}
    )
    ml.deploy_service(
        unique_name, version="v2", code_str="y = x * x * x", inputs={"x": int}, outputs={"y": int}
    )
    ml.deploy_service(
        unique_name + "other", version="v1", code_fn=square, inputs={"x": int}, outputs={"y": int}
    )

    every = {(s["name"], s["version"]) for s in ml.list_services()}
    versions = ml.list_services(unique_name)
    one = ml.list_services(unique_name, version="v2")

    assert {(unique_name, "v1"), (unique_name, "v2"), (unique_name + "other", "v1")} <= every
    assert [(s["name"], s["version"]) for s in versions] == [
        (unique_name, "v1"),
        (unique_name, "v2"),
    ]
    assert [(s["name"], s["version"]) for s in one] == [(unique_name, "v2")]
    latest = ml.get_service(unique_name)
    assert latest.capabilities()["version"] == "v2"
    assert latest.consume(3).output("y") == 27


# --- 4. roles -----------------------------------------------------------------------------------


def test_a_reader_lists_and_consumes_but_cannot_deploy(ml, ml_login, add_user, unique_name):  # type: ignore[no-untyped-def]
    ml.deploy_service(
        unique_name, version="v1", code_fn=square, inputs={"x": int}, outputs={"y": int}
    )
    reader = ml_login(add_user("reader"), PASSWORD)

    assert unique_name in {s["name"] for s in reader.list_services()}
    service = reader.get_service(unique_name, version="v1")
    assert service.square(6).output("y") == 36
    done = finished(service.batch({"x": [1, 2, 3]}).start())[-1]
    assert [done.execution(i).output("y") for i in range(3)] == [1, 4, 9]
    refused = http_error(
        lambda: reader.deploy_service(
            unique_name + "r", version="v1", code_fn=square, inputs={"x": int}, outputs={"y": int}
        )
    )
    assert refused.status == 403
    message = json.loads(refused.body)["message"]
    assert "reader" in message
    assert "contributor or owner" in message
    assert unique_name + "r" not in {s["name"] for s in reader.list_services()}


def test_a_contributor_manages_its_own_services_only(ml, ml_login, add_user, unique_name):  # type: ignore[no-untyped-def]
    ml.deploy_service(
        unique_name, version="v1", code_fn=square, inputs={"x": int}, outputs={"y": int}
    )
    contributor = ml_login(add_user("contributor"), PASSWORD)
    own = unique_name + "own"

    published = contributor.deploy_service(
        own, version="v1", code_fn=square, inputs={"x": int}, outputs={"y": int}
    )
    assert published.capabilities()["published_by"] == f"contributor{unique_name}"
    updated = contributor.redeploy_service(own, version="v1", code_str="y = x + 100")
    assert updated.square(1).output("y") == 101

    redeploy_other = http_error(
        lambda: contributor.redeploy_service(unique_name, version="v1", code_str="y = 0")
    )
    delete_other = http_error(lambda: contributor.delete_service(unique_name, version="v1"))
    assert (redeploy_other.status, delete_other.status) == (403, 403)
    assert "only its publisher or an owner" in json.loads(delete_other.body)["message"]
    assert ml.get_service(unique_name, version="v1").square(5).output("y") == 25

    assert contributor.delete_service(own, version="v1") is True
    assert own not in {s["name"] for s in ml.list_services()}


def test_an_owner_deletes_anyones_service(ml, ml_login, add_user, unique_name):  # type: ignore[no-untyped-def]
    contributor = ml_login(add_user("contributor"), PASSWORD)
    contributor.deploy_service(
        unique_name, version="v1", code_fn=square, inputs={"x": int}, outputs={"y": int}
    )
    owner = ml_login(add_user("owner"), PASSWORD)

    assert owner.delete_service(unique_name, version="v1") is True

    assert http_error(lambda: ml.list_services(unique_name)).status == 404


# --- 5. one service, both faces -----------------------------------------------------------------


def test_a_service_published_with_the_native_sdk_is_listed_consumed_and_batched_by_ml_server(
    client, ml, unique_name
):  # type: ignore[no-untyped-def]
    client.publish_service(
        unique_name, add, inputs={"x": int, "y": int}, outputs={"total": int}, version="v1"
    )

    assert [s["version"] for s in ml.list_services(unique_name)] == ["v1"]
    service = ml.get_service(unique_name, version="v1")
    assert service.capabilities()["operation_id"] == "add"
    assert service.add(2, 3).output("total") == 5
    batch = service.batch([{"x": i, "y": 10 * i} for i in range(5)], parallel_count=2).start()
    done = finished(batch)[-1]
    assert [done.execution(i).output("total") for i in range(5)] == [0, 11, 22, 33, 44]


def test_a_service_deployed_with_the_ml_server_client_is_consumed_and_batched_natively(
    client, ml, unique_name
):  # type: ignore[no-untyped-def]
    ml.deploy_service(
        unique_name,
        version="v1",
        code_fn=triple,
        init_fn=init,
        inputs={"x": int},
        outputs={"y": int},
    )

    service = client.get_service(unique_name, "v1")
    assert service.consume(x=4).output("y") == 12
    result = service.batch([{"x": i} for i in range(6)], parallel_count=3).start().wait(timeout=120)
    assert result.completed_item_count == 6
    assert [result.execution(i).output("y") for i in range(6)] == [0, 3, 6, 9, 12, 15]
    # The batch started natively is listed and read through ML Server's client as well.
    same = ml.get_service(unique_name, version="v1")
    assert result.execution_id in same.list_batch_executions()
    seen = same.get_batch(result.execution_id).results(show_partial_results=False)
    assert seen.state == "complete"
    assert seen.execution(5).output("y") == 15


# --- 6. tokens ----------------------------------------------------------------------------------


def test_a_refresh_token_gives_a_new_pair_and_retires_the_old_access_token(server, ml_login):  # type: ignore[no-untyped-def]
    first = login(server.url, "admin", ADMIN_PASSWORD)

    resp = httpx.post(
        f"{server.url}/login/refreshToken", json={"refreshToken": first["refresh_token"]}
    )

    assert resp.status_code == 200
    second = resp.json()
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    old = httpx.get(f"{server.url}/services", headers=bearer(first["access_token"]))
    assert old.status_code == 401
    assert old.json()["code"] == "Unauthorized"
    # ML Server's client takes an access token as it is.
    assert isinstance(ml_login(second["access_token"]).list_services(), list)


def test_a_revoked_refresh_token_cannot_be_used_again(server):  # type: ignore[no-untyped-def]
    tokens = login(server.url, "admin", ADMIN_PASSWORD)

    revoked = httpx.delete(
        f"{server.url}/login/refreshToken", params={"refreshToken": tokens["refresh_token"]}
    )

    assert revoked.is_success
    again = httpx.post(
        f"{server.url}/login/refreshToken", json={"refreshToken": tokens["refresh_token"]}
    )
    assert again.status_code == 401
    assert httpx.get(
        f"{server.url}/services", headers=bearer(tokens["access_token"])
    ).status_code == (401)


def test_bad_credentials_are_refused_with_a_401(ml_login):  # type: ignore[no-untyped-def]
    refused = http_error(lambda: ml_login("admin", "wrong"))

    assert refused.status == 401
    assert "Invalid username or password" in refused.body


# --- 7. the per-service Swagger document --------------------------------------------------------


def test_the_swagger_document_is_valid_swagger_2_and_describes_consume_and_batch(ml, unique_name):  # type: ignore[no-untyped-def]
    service = ml.deploy_service(
        unique_name,
        version="v1",
        code_fn=add,
        inputs={"x": int, "y": float},
        outputs={"total": float},
        artifacts=["report.txt"],
    )

    doc = json.loads(service.swagger())

    validate(doc, cls=OpenAPIV2SpecValidator)
    assert doc["swagger"] == "2.0"
    api = f"/api/{unique_name}/v1"
    assert doc["paths"][api]["post"]["operationId"] == "add"
    assert doc["paths"][api + "/batch"]["post"]["operationId"] == "StartBatchExecution"
    assert doc["paths"][api + "/batch/{executionId}"]["get"]["operationId"] == (
        "GetBatchExecutionStatus"
    )
    operations = {op["operationId"] for path in doc["paths"].values() for op in path.values()}
    assert operations == {
        "add",
        "StartBatchExecution",
        "GetBatchExecutions",
        "GetBatchExecutionStatus",
        "CancelAndDeleteBatchExecution",
        "GetBatchExecutionFiles",
        "GetBatchExecutionFile",
    }
    assert doc["definitions"]["InputParameters"]["properties"] == {
        "x": {"type": "integer"},
        "y": {"type": "number"},
    }
    assert doc["definitions"]["OutputParameters"]["properties"] == {"total": {"type": "number"}}
