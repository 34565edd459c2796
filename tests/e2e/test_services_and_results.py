"""Service management, roles, partial results and the record formats, against a real server."""

from __future__ import annotations

import time

import httpx
import pandas as pd
import pytest

from batchserve import BatchState, Client, errors

from .conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.e2e


def slow_square(n: int) -> int:
    import time

    time.sleep(0.05)
    print(f"squaring {n}")
    return n * n


def code_string_service() -> str:
    return "total = a + b\nlabel = 'sum'\n"


def test_partial_results_are_readable_while_the_batch_runs(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=slow_square, inputs={"n": int}, outputs={"sq": int}, version="v1"
    )
    batch = svc.batch({"n": list(range(120))}, parallel_count=2, chunk_size=4).start()
    deadline = time.monotonic() + 60
    while True:
        resp = batch.results(show_partial_results=True)
        if 0 < resp.completed_item_count < resp.total_item_count:
            break
        assert resp.state is not BatchState.COMPLETED, "finished before a partial result was seen"
        if time.monotonic() > deadline:
            pytest.fail("no partial result was seen within a minute")
        time.sleep(0.05)
    assert resp.state is BatchState.RUNNING
    frame = resp.to_pandas()
    assert 0 < len(frame) < 120
    first = resp.execution(int(frame["index"].iloc[0]))
    assert first.output("sq") == first.index**2
    assert first.console_output == f"squaring {first.index}\n"
    hidden = batch.results(show_partial_results=False)
    if not hidden.state.is_final:
        with pytest.raises(errors.NotFoundError):
            hidden.execution(0)
    final = batch.wait(timeout=120)
    assert final.completed_item_count == 120
    assert final.to_pandas()["sq"].tolist() == [n * n for n in range(120)]


def test_services_are_listed_fetched_by_latest_version_and_deleted(client, unique_name):  # type: ignore[no-untyped-def]
    for version in ("v1", "v2"):
        client.publish_service(
            unique_name,
            code=slow_square,
            inputs={"n": int},
            outputs={"sq": int},
            version=version,
            description=version,
        )
    assert [s.version for s in client.list_services(unique_name)] == ["v1", "v2"]
    assert client.get_service(unique_name).version == "v2"
    assert unique_name in {s.name for s in client.list_services()}
    client.delete_service(unique_name, version="v2")
    assert client.get_service(unique_name).version == "v1"
    with pytest.raises(errors.NotFoundError):
        client.delete_service(unique_name, version="v2")


def test_a_version_is_generated_when_none_is_given(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=slow_square, inputs={"n": int}, outputs={"sq": int}
    )
    assert svc.version
    assert client.get_service(unique_name, version=svc.version).name == unique_name


def test_a_code_string_service_binds_inputs_and_reads_outputs_back(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name,
        code=code_string_service(),
        inputs={"a": float, "b": float},
        outputs={"total": float, "label": str},
        version="v1",
    )
    res = svc.consume(a=1.5, b=2.0)
    assert res.outputs == {"total": 3.5, "label": "sum"}
    resp = svc.batch(pd.DataFrame({"b": [1.0, 2.0], "a": [10.0, 20.0]})).start().wait(60)
    assert resp.to_pandas()["total"].tolist() == [11.0, 22.0]


def test_tsv_and_dict_of_columns_inputs_give_the_same_results(client, unique_name, tmp_path):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=slow_square, inputs={"n": int}, outputs={"sq": int}, version="v1"
    )
    path = tmp_path / "records.tsv"
    path.write_text("n\tnote\n3\ta, b\n4\tc\n")
    from_tsv = svc.batch(str(path)).start().wait(60).to_pandas()["sq"].tolist()
    from_dict = svc.batch({"n": [3, 4]}).start().wait(60).to_pandas()["sq"].tolist()
    assert from_tsv == from_dict == [9, 16]


def test_a_reader_may_consume_but_not_publish_or_delete(client, server, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=slow_square, inputs={"n": int}, outputs={"sq": int}, version="v1"
    )
    headers = {"Authorization": f"Bearer {client.token}"}
    reader = f"reader{unique_name}"
    r = httpx.post(
        f"{server.url}/v1/users",
        headers=headers,
        json={"username": reader, "password": "pw-reader", "role": "reader"},
    )
    assert r.status_code == 201
    with Client(server.url, username=reader, password="pw-reader") as as_reader:
        assert as_reader.get_service(unique_name, version="v1").consume(n=3).output("sq") == 9
        with pytest.raises(errors.PermissionDeniedError) as info:
            as_reader.publish_service(
                f"{unique_name}x",
                code=slow_square,
                inputs={"n": int},
                outputs={"sq": int},
                version="v1",
            )
        assert "reader" in str(info.value)
        with pytest.raises(errors.PermissionDeniedError):
            as_reader.delete_service(unique_name, version="v1")
        # A batch is visible to its creator and to owners only.
        mine = as_reader.get_service(unique_name, version="v1").batch({"n": [1]}).start()
        mine.wait(60)
    assert svc.get_batch(mine.execution_id).results().completed_item_count == 1
    theirs = svc.batch({"n": [2]}).start()
    with (
        Client(server.url, username=reader, password="pw-reader") as as_reader,
        pytest.raises(errors.NotFoundError),
    ):
        as_reader.get_service(unique_name, version="v1").get_batch(theirs.execution_id)


def test_a_generated_admin_password_is_in_a_file_only_its_owner_can_read(fresh_server):  # type: ignore[no-untyped-def]
    fresh_server.start(admin_password=None)
    pw_file = fresh_server.home / "admin-password"
    assert pw_file.stat().st_mode & 0o777 == 0o600
    password = pw_file.read_text().strip()
    with Client(fresh_server.url, username="admin", password=password) as c:
        assert c.whoami()["role"] == "owner"
    with pytest.raises(errors.AuthenticationError):
        Client(fresh_server.url, username="admin", password=ADMIN_PASSWORD)
