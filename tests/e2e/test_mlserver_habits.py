"""The native SDK as Machine Learning Server's users write it, against a real server: state
spellings, R's type names, downloads of many records, batch URLs, fetched batches and counts."""

from __future__ import annotations

import asyncio
import json
import time

import cloudpickle
import httpx
import pytest
from tests.e2e.conftest import ADMIN_PASSWORD

from batchserve import AsyncClient
from batchserve.errors import UsageError

pytestmark = pytest.mark.e2e


def add_one(x: float) -> float:
    return x + 1


def test_a_poll_loop_written_as_in_machine_learning_server_ends(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=add_one, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    batch = svc.batch({"x": [1.0, 2.0, 3.0]}, parallel_count=2).start()

    # As ML Server's guides poll, with its spellings of the states.
    polls = 0
    while True:
        polls += 1
        assert polls < 600, "the batch did not finish"
        res = batch.results(show_partial_results=True)
        if res.state == "Failed":
            raise RuntimeError("Batch execution failed")
        if res.state == "Complete":
            break
        assert res.state in ("pending", "inProgress")
        time.sleep(0.1)

    assert res.state == batch.STATE.complete
    assert res.state.value == "completed"
    assert [res.execution(i).output("y") for i in range(3)] == [2.0, 3.0, 4.0]


def test_r_type_names_declare_a_service_through_the_sdk(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name,
        code=add_one,
        inputs={"x": "numeric"},
        outputs={"y": "numeric"},
        version="v1",
    )

    assert svc.inputs == {"x": "float"}
    assert client.get_service(unique_name, "v1").outputs == {"y": "float"}
    assert svc.consume(x=1.5).output("y") == 2.5


def test_r_type_names_declare_a_service_through_the_rest_api(server, unique_name):  # type: ignore[no-untyped-def]
    token = httpx.post(
        f"{server.url}/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["access_token"]
    metadata = {
        "name": unique_name,
        "version": "v1",
        "bundle_kind": "code",
        "inputs": {"n": "integer", "label": "character", "on": "logical"},
        "outputs": {"text": "character"},
    }
    bundle = {"format": 1, "kind": "code", "code": "text = f'{label}{n * 2}{on}'"}
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        published = http.post(
            "/v1/services",
            data={"metadata": json.dumps(metadata)},
            files={"bundle": ("bundle.pkl", cloudpickle.dumps(bundle))},
        )
        assert published.status_code == 201, published.text
        assert published.json()["inputs"] == {"n": "int", "label": "str", "on": "bool"}
        answer = http.post(
            f"/v1/services/{unique_name}/v1/consume",
            json={"inputs": {"n": 4, "label": "n=", "on": True}},
        )
        assert answer.json()["outputs"] == {"text": "n=8True"}

        metadata["version"] = "v2"
        metadata["inputs"] = {"n": "decimal"}
        refused = http.post(
            "/v1/services",
            data={"metadata": json.dumps(metadata)},
            files={"bundle": ("bundle.pkl", cloudpickle.dumps(bundle))},
        )
        assert refused.status_code == 400
        assert "declare it as int, float, str or bool" in refused.json()["error"]["message"]


def plot(x: float) -> float:
    # Every record writes files of the same names, as ML Server's walkthrough does.
    with open("Histogram.png", "w") as f:
        f.write(f"plot of {x}")
    with open("report.txt", "w") as f:
        f.write(f"report of {x}")
    return x


def wait_for_start(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


@pytest.fixture
def plotted(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name,
        code=plot,
        inputs={"x": float},
        outputs={"y": float},
        artifacts=["Histogram.png", "report.txt"],
        version="v1",
    )
    batch = svc.batch({"x": [10.0, 11.0, 12.0]}, parallel_count=2).start()
    batch.wait(timeout=120)
    return batch


def test_download_all_keeps_every_records_files_apart(plotted, tmp_path):  # type: ignore[no-untyped-def]
    paths = plotted.download_all(tmp_path)

    expected = [
        tmp_path / str(i) / name for i in range(3) for name in ("Histogram.png", "report.txt")
    ]
    assert sorted(paths) == sorted(str(p) for p in expected)
    for i in range(3):
        assert (tmp_path / str(i) / "Histogram.png").read_text() == f"plot of {10.0 + i}"
        assert (tmp_path / str(i) / "report.txt").read_text() == f"report of {10.0 + i}"


def test_download_per_record_uses_the_layout_of_download_all(plotted, tmp_path):  # type: ignore[no-untyped-def]
    first = plotted.download(1, "Histogram.png", tmp_path, per_record=True)
    both = plotted.download(2, destination=tmp_path, per_record=True)

    assert first == [str(tmp_path / "1" / "Histogram.png")]
    assert sorted(both) == [
        str(tmp_path / "2" / "Histogram.png"),
        str(tmp_path / "2" / "report.txt"),
    ]
    assert (tmp_path / "1" / "Histogram.png").read_text() == "plot of 11.0"
    assert (tmp_path / "2" / "Histogram.png").read_text() == "plot of 12.0"


def test_downloads_to_a_missing_folder_or_of_a_bad_index_say_what_to_do(plotted, tmp_path):  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match="does not exist or is not a directory; create it first"):
        plotted.download_all(tmp_path / "missing")
    with pytest.raises(UsageError, match="A record index is a whole number from 0 on"):
        plotted.download("../1", destination=tmp_path, per_record=True)
    assert list(tmp_path.iterdir()) == []


def test_a_batch_and_its_results_give_the_batchs_absolute_url(client, plotted):  # type: ignore[no-untyped-def]
    url = f"{client.url}/v1/batches/{plotted.execution_id}"

    assert plotted.api == url
    assert plotted.results().api == url
    token = httpx.post(
        f"{client.url}/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["access_token"]
    answer = httpx.get(plotted.api, headers={"Authorization": f"Bearer {token}"})
    assert answer.json()["id"] == plotted.execution_id


def test_a_fetched_batch_reads_its_records_back_from_the_server(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name,
        code=add_one,
        inputs={"x": float},
        outputs={"y": float},
        version="v1",
    )
    records = [{"x": float(i)} for i in range(2500)]
    started = svc.batch(records, parallel_count=4).start()
    assert started.records is records

    fetched = client.get_service(unique_name, "v1").get_batch(started.execution_id)
    stored = fetched.records
    stored.page_size = 1000  # three pages

    assert len(stored) == 2500
    assert stored[0] == {"x": 0.0}
    assert stored[1999] == {"x": 1999.0}
    assert stored[-1] == {"x": 2499.0}
    assert list(stored) == records
    assert stored.to_pandas()["x"].tolist() == [float(i) for i in range(2500)]
    with pytest.raises(IndexError, match="has 2500 records"):
        stored[2500]
    started.wait(timeout=120)


def test_parallel_count_follows_update_and_executions_have_ml_servers_name(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name,
        code=wait_for_start,
        inputs={"seconds": float},
        outputs={"t": float},
        version="v1",
    )
    batch = svc.batch({"seconds": [0.5] * 6}, parallel_count=1).start()
    try:
        assert batch.parallel_count == 1
        batch.update(parallel_count=3)
        assert batch.parallel_count == 3
        assert svc.get_batch(batch.execution_id).parallel_count == 3
        with pytest.raises(UsageError, match=r"batch.update\(parallel_count=5\)"):
            batch.parallel_count = 5
        assert svc.get_batch_executions() == svc.list_batch_executions() == [batch.execution_id]
    finally:
        batch.cancel()


def test_cancelled_records_make_up_the_total_with_the_completed_ones(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name,
        code=wait_for_start,
        inputs={"seconds": float},
        outputs={"t": float},
        version="v1",
    )
    batch = svc.batch({"seconds": [0.3] * 40}, parallel_count=1, chunk_size=2).start()
    polls = 0
    while batch.results().completed_item_count == 0:
        polls += 1
        assert polls < 600, "no record finished"
        time.sleep(0.1)
    batch.cancel()
    resp = batch.wait(timeout=120)

    assert resp.state == "cancelled"
    assert resp.cancelled_item_count > 0
    assert resp.completed_item_count > 0
    assert resp.completed_item_count + resp.cancelled_item_count == resp.total_item_count == 40
    assert resp.completed_item_count == resp.succeeded_item_count + resp.failed_item_count
    assert batch.cancelled_item_count == resp.cancelled_item_count
    statuses = resp.to_pandas()["status"].value_counts().to_dict()
    assert statuses == {
        "succeeded": resp.succeeded_item_count,
        "cancelled": resp.cancelled_item_count,
    }


def test_the_asyncio_client_has_the_same_batch_habits(server, unique_name, tmp_path):  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with AsyncClient(server.url, username="admin", password=ADMIN_PASSWORD) as client:
            svc = await client.publish_service(
                unique_name,
                code=plot,
                inputs={"x": "numeric"},
                outputs={"y": "numeric"},
                artifacts=["Histogram.png", "report.txt"],
                version="v1",
            )
            started = await svc.batch({"x": [1.0, 2.0]}).start()
            resp = await started.wait(timeout=120)
            assert resp.state == "Complete"
            assert resp.cancelled_item_count == 0

            fetched = await svc.get_batch(started.execution_id)
            assert fetched.api == f"{server.url}/v1/batches/{started.execution_id}"
            assert await fetched.records[1] == {"x": 2.0}
            assert [r async for r in fetched.records] == [{"x": 1.0}, {"x": 2.0}]
            paths = await fetched.download_all(tmp_path)
            assert len(paths) == 4
            assert (tmp_path / "1" / "report.txt").read_text() == "report of 2.0"
            assert await svc.get_batch_executions() == [started.execution_id]

    asyncio.run(main())


def test_the_records_route_pages_a_batchs_inputs_with_their_ids(client, server, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=add_one, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    rows = [{"car": f"car-{i}", "x": float(i)} for i in range(5)]
    batch = svc.batch(rows, id_column="car").start()
    token = httpx.post(
        f"{server.url}/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["access_token"]
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as http:
        page = http.get(f"{batch.api}/records", params={"start": 3, "limit": 10}).json()
        past = http.get(f"{batch.api}/records", params={"start": 5}).json()
        refused = http.get(f"{batch.api}/records", params={"limit": 0})

    assert page == {
        "start": 3,
        "limit": 10,
        "next_start": None,
        "records": [
            {"index": 3, "id": "car-3", "inputs": {"x": 3.0}},
            {"index": 4, "id": "car-4", "inputs": {"x": 4.0}},
        ],
    }
    assert past["records"] == []
    assert refused.status_code == 422
    batch.wait(timeout=120)
