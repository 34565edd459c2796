"""The batch as an Azure Batch job: conditional changes and reads, the job model's shape, and
what the control methods return."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from batchserve import Batch, BatchState, errors

pytestmark = pytest.mark.e2e


def nap(x: float) -> float:
    import time

    time.sleep(0.05)
    return x


@pytest.fixture
def napper(client, unique_name):  # type: ignore[no-untyped-def]
    return client.publish_service(
        unique_name, code=nap, inputs={"x": float}, outputs={"y": float}, version="v1"
    )


def until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def auth(client: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.token}"}


def unstarted(client: Any, server: Any, service: Any) -> dict[str, Any]:
    """A batch created without starting it (through REST): nothing changes it by itself."""
    created = httpx.post(
        f"{server.url}/v1/services/{service.name}/{service.version}/batches",
        params={"start": "false"},
        content=b"x\n1\n2\n",
        headers={**auth(client), "Content-Type": "text/csv"},
    )
    assert created.status_code == 201, created.text
    return dict(created.json())


# --- conditional requests -----------------------------------------------------------------------


def test_every_change_with_a_stale_etag_is_a_412_and_changes_nothing(client, napper):  # type: ignore[no-untyped-def]
    batch = napper.batch({"x": [1.0] * 400}, parallel_count=1, chunk_size=5).start()
    # Once running, its etag changes only with a change of its settings or state.
    until("running", lambda: batch.refresh().state is BatchState.RUNNING)
    stale = batch.etag
    batch.update(metadata={"by": "someone else"})
    changes = [
        lambda: batch.disable(if_match=stale),
        lambda: batch.cancel(if_match=stale),
        lambda: batch.terminate("stop", if_match=stale),
        lambda: batch.update(priority=1, if_match=stale),
        lambda: batch.delete(if_match=stale),
    ]
    for change in changes:
        with pytest.raises(errors.PreconditionFailedError, match="etag"):
            change()
    assert batch.refresh().state is BatchState.RUNNING
    assert batch.data["priority"] == 0

    assert batch.disable("wait", if_match=batch.etag) is batch  # the batch itself, refreshed
    until("paused", lambda: batch.refresh().state is BatchState.PAUSED)
    old = batch.etag
    batch.update(priority=2)
    with pytest.raises(errors.PreconditionFailedError):
        batch.enable(if_match=old)
    with pytest.raises(errors.PreconditionFailedError):
        batch.cancel(if_match=old)
    assert batch.refresh().state is BatchState.PAUSED
    # Enabling shows until its chunks are queued again, by the scheduler of a node.
    assert batch.enable(if_match=batch.etag).state is BatchState.ENABLING
    until("enabled", lambda: batch.refresh().state in (BatchState.PENDING, BatchState.RUNNING))
    batch.cancel()
    batch.wait(timeout=60)
    batch.delete(if_match=batch.refresh().etag)
    with pytest.raises(errors.NotFoundError):
        batch.refresh()


def test_if_match_works_on_the_rest_routes_and_a_bad_etag_says_what_to_do(client, server, napper):  # type: ignore[no-untyped-def]
    created = unstarted(client, server, napper)
    url = f"{server.url}/v1/batches/{created['id']}"
    for path, method in [("/disable", "POST"), ("/terminate", "POST"), ("", "DELETE")]:
        r = httpx.request(method, url + path, headers={**auth(client), "If-Match": '"999999"'})
        assert r.status_code == 412, r.text
        assert r.json()["error"]["code"] == "precondition_failed"
        assert "read it again" in r.json()["error"]["message"]
    r = httpx.post(url + "/cancel", headers={**auth(client), "If-Match": "yesterday"})
    assert r.status_code == 412
    assert "not an etag" in r.json()["error"]["message"]
    etag = httpx.get(url, headers=auth(client)).headers["ETag"]
    assert etag == created["etag"]
    r = httpx.post(
        url + "/terminate", json={"reason": "done"}, headers={**auth(client), "If-Match": etag}
    )
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["termination_reason"]) == ("cancelled", "done")
    r = httpx.post(url + "/cancel", headers={**auth(client), "If-Match": "*"})
    assert r.status_code == 200


def test_get_answers_304_when_the_etag_matches_or_nothing_changed_since(client, server, napper):  # type: ignore[no-untyped-def]
    batch = napper.get_batch(unstarted(client, server, napper)["id"])  # its etag stays
    url = f"{server.url}/v1/batches/{batch.execution_id}"
    first = httpx.get(url, headers=auth(client))
    assert first.status_code == 200
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert etag == first.json()["etag"]

    same = httpx.get(url, headers={**auth(client), "If-None-Match": etag})
    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["ETag"] == etag
    assert httpx.get(url, headers={**auth(client), "If-None-Match": '"0"'}).status_code == 200

    assert (
        httpx.get(url, headers={**auth(client), "If-Modified-Since": modified}).status_code == 304
    )
    long_ago = format_datetime(_days_before(modified), usegmt=True)
    assert (
        httpx.get(url, headers={**auth(client), "If-Modified-Since": long_ago}).status_code == 200
    )
    # A date that is not a date is ignored, as HTTP says.
    assert httpx.get(url, headers={**auth(client), "If-Modified-Since": "soon"}).status_code == 200

    batch.update(metadata={"k": "v"})
    changed = httpx.get(url, headers={**auth(client), "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag


def _days_before(http_date: str) -> Any:
    from datetime import timedelta
    from email.utils import parsedate_to_datetime

    return parsedate_to_datetime(http_date) - timedelta(days=1)


# --- what the control methods return ------------------------------------------------------------


def test_control_methods_return_the_batch_refreshed_so_calls_chain(napper):  # type: ignore[no-untyped-def]
    batch = napper.batch({"x": [1.0] * 60}, parallel_count=1, chunk_size=5).start()
    updated = batch.update(priority=3)
    assert updated is batch and isinstance(updated, Batch)
    assert batch.data["priority"] == 3
    disabled = batch.disable("wait")
    assert disabled is batch and disabled.state in (BatchState.PAUSING, BatchState.PAUSED)
    stopped = batch.terminate("enough")
    assert stopped is batch and stopped.state in (BatchState.CANCELLING, BatchState.CANCELLED)
    final = batch.terminate().wait(timeout=60)  # the calls chain onto wait()
    assert final.state is BatchState.CANCELLED
    assert batch.cancel() is batch  # cancelling a stopped batch changes nothing
    assert batch.results().execution_id == batch.execution_id  # the BatchResponse, on request


# --- the job model's shape ----------------------------------------------------------------------


def test_job_info_is_a_mapping_whose_as_dict_is_json(napper):  # type: ignore[no-untyped-def]
    batch = napper.batch(
        {"x": [1.0, 2.0]},
        display_name="scoring",
        metadata={"team": "risk"},
        max_wall_clock_time=600,
    ).start()
    batch.wait(timeout=60)
    job = batch.info()
    plain = job.as_dict()
    text = json.dumps(plain)  # JSON-ready: times as ISO-8601 text, nested parts as dicts
    assert json.loads(text) == plain
    assert plain["creation_time"] == job.creation_time.isoformat()
    assert plain["constraints"]["max_wall_clock_time"] == "PT10M"
    assert plain["metadata"] == [{"name": "team", "value": "risk"}]
    assert isinstance(plain["execution_info"]["start_time"], str)

    assert job["display_name"] == "scoring" == job.get("display_name")
    assert job.get("no such field", "none") == "none"
    assert "etag" in set(job.keys()) and "readonly" not in job
    assert list(job) == list(job.keys())
    assert dict(job.items())["priority"] == 0
    assert job["constraints"]["max_wall_clock_time"] == job.constraints.max_wall_clock_time
    assert job.constraints.get("max_task_retry_count") == 0
    assert job.execution_info.as_dict()["end_time"] == plain["execution_info"]["end_time"]
    assert job.job_statistics["total_records"] == 2
    with pytest.raises(KeyError, match="colour"):
        job["colour"]
    assert "etag" not in job.as_dict(exclude_readonly=True)


# --- settings changed by update -----------------------------------------------------------------


def test_update_changes_the_display_name_and_preemption_and_lifts_the_parallel_limit(  # type: ignore[no-untyped-def]
    client, server, napper
):
    batch = napper.get_batch(unstarted(client, server, napper)["id"])
    batch.update(display_name="nightly scoring", allow_preemption=True, parallel_count=-1)
    job = batch.info()
    assert (job.display_name, job.allow_task_preemption, job.max_parallel_tasks) == (
        "nightly scoring",
        True,
        -1,
    )
    batch.update(display_name="", allow_preemption=False)
    assert (batch.data["display_name"], batch.data["allow_preemption"]) == (None, False)
    for bad in (0, -2):
        with pytest.raises(errors.UsageError, match="-1 for no limit"):
            batch.update(parallel_count=bad)
        r = httpx.patch(
            f"{server.url}/v1/batches/{batch.execution_id}",
            json={"parallel_count": bad},
            headers=auth(client),
        )
        assert r.status_code in (400, 422), r.text
        assert "parallel_count" in r.text
    with pytest.raises(errors.UsageError, match="allow_preemption"):
        batch.update(allow_preemption="yes")
    r = httpx.post(
        f"{server.url}/v1/services/{napper.name}/v1/batches",
        params={"parallel_count": 0},
        content=b"x\n1\n",
        headers={**auth(client), "Content-Type": "text/csv"},
    )
    assert r.status_code == 400
    assert "-1 for no limit" in r.json()["error"]["message"]
    with pytest.raises(errors.UsageError, match="parallel_count"):
        napper.batch({"x": [1.0]}, parallel_count=0)
    unlimited = napper.batch({"x": [1.0, 2.0]}, parallel_count=-1).start()
    assert unlimited.wait(timeout=60).state is BatchState.COMPLETED
    assert unlimited.info().max_parallel_tasks == -1


# --- scheduling errors --------------------------------------------------------------------------


def test_a_batch_failed_by_its_dependency_says_why_in_its_scheduling_error(client, server, napper):  # type: ignore[no-untyped-def]
    first = napper.get_batch(unstarted(client, server, napper)["id"])
    second = napper.batch({"x": [1.0, 2.0]}, depends_on=[first]).start()
    assert second.info().execution_info.scheduling_error is None
    first.cancel()
    assert second.wait(timeout=60).state is BatchState.FAILED
    error = second.info().execution_info.scheduling_error
    assert (error.category, error.code) == ("usererror", "DependencyFailed")
    assert first.execution_id in error.message and "cancelled" in error.message
    assert [(d.name, d.value) for d in error.details] == [
        ("batch_id", first.execution_id),
        ("state", "cancelled"),
    ]
    raw = httpx.get(f"{server.url}/v1/batches/{second.execution_id}", headers=auth(client))
    assert raw.json()["scheduling_error"]["code"] == "DependencyFailed"
    assert second.info().as_dict()["execution_info"]["scheduling_error"]["category"] == "usererror"


# --- open batches -------------------------------------------------------------------------------


def test_an_open_batch_takes_records_while_it_runs_and_completes_only_once_closed(  # type: ignore[no-untyped-def]
    client, server, napper
):
    batch = napper.batch({"x": [0.0, 1.0]}, open=True).start()
    assert batch.info().all_tasks_complete_mode == "noaction"
    assert batch.add({"x": [2.0, 3.0, 4.0]}) == range(2, 5)
    # Its records are done, and it still runs: more may come.
    until("five results", lambda: batch.refresh().data["completed_item_count"] == 5)
    assert batch.refresh().state in (BatchState.PENDING, BatchState.RUNNING)
    r = httpx.post(
        f"{server.url}/v1/batches/{batch.execution_id}/records",
        content=b"x\n5\n6\n",
        headers={**auth(client), "Content-Type": "text/csv"},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["first_index"], r.json()["count"]) == (5, 2)
    closed = batch.close()
    assert closed is batch and batch.data["on_all_tasks_complete"] == "terminatejob"
    final = batch.wait(timeout=60)
    assert final.state is BatchState.COMPLETED
    frame = final.to_pandas().sort_values("index")
    assert frame["index"].tolist() == list(range(7))
    assert frame["y"].tolist() == [float(i) for i in range(7)]
    with pytest.raises(errors.ConflictError, match="open batch"):
        batch.add({"x": [7.0]})


def test_a_fetched_open_batch_keeps_its_id_column_for_the_records_added(  # type: ignore[no-untyped-def]
    client, napper
):
    batch = napper.batch({"x": [0.0], "key": ["a"]}, open=True, id_column="key").start()
    fetched = napper.get_batch(batch.execution_id)
    assert fetched.id_column == "key" and fetched.data["id_column"] == "key"
    assert fetched.add({"x": [1.0, 2.0], "key": ["b", "c"]}) == range(1, 3)
    final = fetched.close().wait(timeout=60)
    frame = final.to_pandas().sort_values("index")
    assert frame["id"].tolist() == ["a", "b", "c"]


def test_records_cannot_be_added_to_a_closed_or_plain_batch_and_update_closes_one(  # type: ignore[no-untyped-def]
    client, server, napper
):
    plain = napper.get_batch(unstarted(client, server, napper)["id"])
    with pytest.raises(errors.ConflictError, match="is not open"):
        plain.add({"x": [1.0]})
    with pytest.raises(errors.ConflictError, match="cannot be opened"):
        plain.update(on_all_tasks_complete="noaction")
    batch = napper.batch({"x": [1.0]}, open=True).start()
    assert batch.add({"x": [2.0]}) == range(1, 2)
    batch.update(on_all_tasks_complete="terminatejob")  # the same as close()
    with pytest.raises(errors.ConflictError, match="was closed"):
        batch.add({"x": [3.0]})
    assert batch.wait(timeout=60).info["total_item_count"] == 2
    r = httpx.post(
        f"{server.url}/v1/batches/{batch.execution_id}/records",
        content=b"x\n5\n",
        headers={**auth(client), "Content-Type": "text/csv"},
    )
    assert r.status_code == 409
    assert "completed" in r.json()["error"]["message"]
    bad = napper.batch({"x": [1.0]}, open=True).start()
    r = httpx.post(
        f"{server.url}/v1/batches/{bad.execution_id}/records",
        content=b"y\n5\n",
        headers={**auth(client), "Content-Type": "text/csv"},
    )
    assert r.status_code == 400, r.text
    assert "x" in r.json()["error"]["message"]
    bad.cancel()
    assert bad.wait(timeout=60).state is BatchState.CANCELLED
