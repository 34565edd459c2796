"""The original Machine Learning Server client (``azureml-model-management-sdk``), unmodified,
against a real server: publish, consume, batch, files, cancel, delete.

The service functions are defined at module level: the client publishes their *source*, and
the models and objects they read (``model``, ``offset``) are uploaded into the workspace under
the same names they have here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from azureml.common.http_client import HttpException

import batchserve.compat.azureml  # noqa: F401 - the client on Python >= 3.8

pytestmark = pytest.mark.e2e

model = {"intercept": 1.0, "hp": 0.01, "wt": -0.5}
offset = 0.25


def init():
    global scale
    scale = 2


def manual_transmission(hp, wt):
    with open("report.txt", "w") as f:
        f.write(f"hp={hp} wt={wt}")
    print("scoring", hp, wt)
    return scale * (model["intercept"] + model["hp"] * hp + model["wt"] * wt) + offset


def expected(hp: float, wt: float) -> float:
    return 2 * (model["intercept"] + model["hp"] * hp + model["wt"] * wt) + offset


def slow_double(x):
    import time

    time.sleep(0.3)
    return x * 2


def double(x):
    return x * 2


@pytest.fixture
def mt_service(ml, unique_name):  # type: ignore[no-untyped-def]
    return ml.deploy_service(
        unique_name,
        version="v1.0.0",
        description="Manual transmission",
        code_fn=manual_transmission,
        init_fn=init,
        models={"model": model},
        objects={"offset": offset},
        inputs={"hp": float, "wt": float},
        outputs={"answer": float},
        artifacts=["report.txt"],
    )


def wait_for_end(batch, deadline: float = 120.0):  # type: ignore[no-untyped-def]
    """Poll ``results`` as ML Server's documentation does, until the batch is finished."""
    stop = time.monotonic() + deadline
    while True:
        res = batch.results(show_partial_results=True)
        if res.state in ("complete", "failed") or time.monotonic() > stop:
            return res
        time.sleep(0.1)


def test_deploy_service_publishes_a_version_the_client_describes(ml, mt_service, unique_name):
    caps = mt_service.capabilities()
    assert caps["name"] == unique_name
    assert caps["version"] == "v1.0.0"
    assert caps["published_by"] == "admin"
    assert caps["operation_id"] == "manual_transmission"
    assert caps["inputs_encoded"] == [
        {"name": "hp", "type": "float"},
        {"name": "wt", "type": "float"},
    ]
    assert caps["outputs_encoded"] == [{"name": "answer", "type": "float"}]
    assert caps["artifacts"] == ["report.txt"]
    assert [s["version"] for s in ml.list_services(unique_name)] == ["v1.0.0"]
    assert ml.list_services(unique_name, version="v1.0.0")[0]["description"] == (
        "Manual transmission"
    )
    assert unique_name in {s["name"] for s in ml.list_services()}
    swagger = json.loads(mt_service.swagger())
    assert swagger["paths"][caps["api"]]["post"]["operationId"] == "manual_transmission"
    assert swagger["definitions"]["InputParameters"]["properties"]["hp"] == {"type": "number"}


def test_consume_through_the_alias_returns_outputs_console_and_artifacts(mt_service):
    res = mt_service.manual_transmission(120, 2.8)
    assert res.error == ""
    assert res.output("answer") == pytest.approx(expected(120, 2.8))
    assert "scoring 120.0 2.8" in res.console_output
    assert res.artifact("report.txt") == b"hp=120.0 wt=2.8"


def test_batch_from_a_dataframe_gives_per_record_results_and_files(mt_service, tmp_path):
    records = pd.DataFrame({"wt": [2.6, 3.2, 1.8, 4.0], "hp": [110, 150, 95, 200]})
    batch = mt_service.batch(records, parallel_count=2).start()
    assert batch.execution_id

    res = wait_for_end(batch)
    assert res.state == "complete"
    assert (res.completed_item_count, res.total_item_count) == (4, 4)
    for i, (hp, wt) in enumerate(zip(records.hp, records.wt, strict=True)):
        assert res.execution(i).output("answer") == pytest.approx(expected(hp, wt))
    assert res.execution(3).console_output.startswith("scoring 200")

    assert batch.list_artifacts(1) == ["report.txt"]
    assert batch.artifact(1, "report.txt") == b"hp=150.0 wt=3.2"
    # The client's @execution decorator drops keyword arguments: pass the destination by position.
    paths = batch.download(2, "report.txt", str(tmp_path))
    assert [Path(p).read_bytes() for p in paths] == [b"hp=95.0 wt=1.8"]


def test_batch_executions_are_listed_and_found_again_by_id(mt_service):
    batch = mt_service.batch([{"hp": 100, "wt": 3.0}, {"hp": 120, "wt": 2.0}]).start()
    assert batch.execution_id in mt_service.list_batch_executions()

    again = mt_service.get_batch(batch.execution_id)
    res = wait_for_end(again)
    assert res.state == "complete"
    assert res.execution(1).output("answer") == pytest.approx(expected(120, 2.0))


def test_partial_results_show_what_is_finished_while_a_batch_runs(ml, unique_name):
    service = ml.deploy_service(
        unique_name,
        version="v1",
        code_fn=slow_double,
        inputs={"x": int},
        outputs={"y": int},
    )
    batch = service.batch({"x": list(range(6))}, parallel_count=2).start()

    early = batch.results(show_partial_results=True)
    assert early.total_item_count == 6
    assert early.state in ("pending", "inProgress", "complete")
    # Only finished records are listed while the batch runs.
    assert len(early._execution_results) <= 6
    assert all(r["success"] for r in early._execution_results)

    final = wait_for_end(batch)
    assert final.state == "complete"
    assert [final.execution(i).output("y") for i in range(6)] == [0, 2, 4, 6, 8, 10]
    # Once finished, every result is there with or without partial results.
    assert len(batch.results(show_partial_results=False)._execution_results) == 6


def test_cancel_stops_and_deletes_the_batch_execution(ml, unique_name):
    service = ml.deploy_service(
        unique_name, version="v1", code_fn=slow_double, inputs={"x": int}, outputs={"y": int}
    )
    batch = service.batch({"x": list(range(40))}, parallel_count=1).start()

    batch.cancel()

    assert batch.execution_id not in service.list_batch_executions()
    with pytest.raises(HttpException) as info:
        batch.results()
    assert info.value.status == 404


def test_a_record_that_fails_reports_its_error_and_the_others_still_run(ml, unique_name):
    service = ml.deploy_service(
        unique_name, version="v1", code_fn=double, inputs={"x": int}, outputs={"y": int}
    )
    batch = service.batch([{"x": 1}, {"x": "not a number"}, {"x": 3}]).start()

    res = wait_for_end(batch)
    assert res.state == "complete"
    assert res.execution(0).output("y") == 2
    assert "x" in res.execution(1).error
    assert res.execution(2).output("y") == 6


def test_deploy_without_a_version_gets_a_generated_one(ml, unique_name):
    service = ml.deploy_service(unique_name, code_fn=double, inputs={"x": int}, outputs={"y": int})
    assert service.capabilities()["version"]
    assert service.double(21).output("y") == 42


def test_code_str_services_read_their_inputs_and_objects_as_variables(ml, unique_name):
    service = ml.deploy_service(
        unique_name,
        version="v1",
        code_str="total = x + bonus",
        init_str="bonus = 10",
        inputs={"x": int},
        outputs={"total": int},
        alias="add_bonus",
    )
    assert service.add_bonus(5).output("total") == 15


def test_redeploy_replaces_the_code_of_a_version(ml, unique_name):
    ml.deploy_service(
        unique_name, version="v1", code_fn=double, inputs={"x": int}, outputs={"y": int}
    )
    service = ml.redeploy_service(
        unique_name, version="v1", code_str="y = x * 10", inputs={"x": int}, outputs={"y": int}
    )
    # Fields a redeploy leaves out, like the consume method's name, stay as they were.
    assert service.double(4).output("y") == 40


def test_delete_service_removes_it(ml, unique_name):
    ml.deploy_service(
        unique_name, version="v1", code_fn=double, inputs={"x": int}, outputs={"y": int}
    )

    assert ml.delete_service(unique_name, version="v1") is True

    with pytest.raises(HttpException) as info:
        ml.get_service(unique_name, version="v1")
    assert info.value.status == 404


def test_an_unknown_service_is_a_404_in_ml_servers_error_shape(ml):
    with pytest.raises(HttpException) as info:
        ml.get_service("no-such-service", version="v1")
    assert info.value.status == 404
    assert '"code":"NotFound"' in info.value.body.replace(" ", "")
    assert "no-such-service" in info.value.body


def test_an_unsupported_parameter_type_is_refused_with_a_clear_message(ml, unique_name):
    with pytest.raises(HttpException) as info:
        ml.deploy_service(unique_name, version="v1", code_str="y = 1", inputs={"xs": "numpy.array"})
    assert info.value.status == 400
    assert "vector" in info.value.body
