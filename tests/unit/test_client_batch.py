"""Services and batch executions through the SDK, against a scripted server."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from batchserve import BatchResponse, BatchState, Client
from batchserve.errors import NotFoundError, UsageError, WaitTimeout

SERVICE = {
    "name": "mtService",
    "version": "v1.0.0",
    "description": "",
    "alias": "manual_transmission",
    "mode": "row",
    "inputs": {"hp": "float", "wt": "float"},
    "outputs": {"answer": "float"},
    "artifacts": ["Histogram.png"],
    "bundle_kind": "callable",
    "published_by": "admin",
    "created_at": "2026-11-23T09:30:00Z",
}
BATCHES = "/v1/services/mtService/v1.0.0/batches"


def batch_info(state: str = "running", total: int = 2, completed: int = 1, **more) -> dict:
    return {
        "id": "b1",
        "service": {"name": "mtService", "version": "v1.0.0"},
        "state": state,
        "parallel_count": 10,
        "chunk_size": 4,
        "total_item_count": total,
        "completed_item_count": completed,
        "succeeded_item_count": completed,
        "failed_item_count": 0,
        "cancelled_item_count": 0,
        **more,
    }


def record(index: int, answer: float = 0.5, artifacts: list[str] | None = None) -> dict:
    return {
        "index": index,
        "status": "succeeded",
        "outputs": {"answer": answer},
        "error": None,
        "error_type": None,
        "console_output": "",
        "artifacts": artifacts or [],
        "duration_ms": 1.5,
        "attempts": 1,
    }


Answer = httpx.Response | tuple[int, object] | Callable[[httpx.Request], object]


class Server:
    """Answers (method, path) from a table; a callable answer is called with the request."""

    def __init__(self, routes: dict[tuple[str, str], Answer] | None = None) -> None:
        self.routes: dict[tuple[str, str], Answer] = {
            ("GET", "/v1/services/mtService/latest"): (200, SERVICE),
            **(routes or {}),
        }
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path)
        if key not in self.routes:
            return httpx.Response(404, json={"error": {"code": "not_found", "message": str(key)}})
        answer = self.routes[key]
        if callable(answer):
            answer = answer(request)
        if isinstance(answer, httpx.Response):
            return answer
        status, body = answer
        return httpx.Response(status, json=body)

    def service(self):
        client = Client("http://testserver", token="t", transport=httpx.MockTransport(self))
        svc = client.get_service("mtService")
        self.requests.clear()
        return svc

    def started_batch(self, info: dict | None = None):
        self.routes[("POST", BATCHES)] = (201, info or batch_info("pending"))
        batch = self.service().batch([{"hp": 1.0, "wt": 2.0}, {"hp": 3.0, "wt": 4.0}]).start()
        self.requests.clear()
        return batch


# -- creating and starting ----------------------------------------------------------------------


def test_batch_creates_nothing_on_the_server_until_start():
    server = Server()
    batch = server.service().batch([{"hp": 1.0, "wt": 2.0}])
    assert server.requests == []
    assert batch.execution_id is None
    assert batch.state is None


def test_start_streams_the_records_with_the_batch_options():
    server = Server({("POST", BATCHES): (201, batch_info("pending"))})
    batch = server.service().batch([{"hp": 1.0, "wt": 2.0}, {"hp": 3.0, "wt": 4.0}], 3).start()
    (sent,) = server.requests
    assert dict(sent.url.params) == {"parallel_count": "3", "start": "true", "record_count": "2"}
    assert sent.headers["Content-Type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(sent.content).read_all()
    assert table.to_pydict() == {"hp": [1.0, 3.0], "wt": [2.0, 4.0]}
    assert batch.execution_id == "b1"
    assert batch.state is BatchState.PENDING


def test_start_sends_the_chunk_size_when_one_is_given():
    server = Server({("POST", BATCHES): (201, batch_info("pending"))})
    server.service().batch({"hp": [1.0], "wt": [2.0]}, chunk_size=50).start()
    assert server.requests[0].url.params["chunk_size"] == "50"


def test_starting_a_started_batch_sends_nothing():
    server = Server()
    batch = server.started_batch()
    assert batch.start() is batch
    assert server.requests == []


def test_csv_batch_is_uploaded_as_text_csv_with_a_row_count_hint(tmp_path: Path):
    path = tmp_path / "cars.csv"
    path.write_text("hp,wt\n1,2\n")
    server = Server({("POST", BATCHES): (201, batch_info("pending"))})
    server.service().batch(path).start()
    sent = server.requests[0]
    assert sent.headers["Content-Type"] == "text/csv"
    assert sent.url.params["record_count"] == "1"
    assert sent.content == path.read_bytes()


@pytest.mark.parametrize("options", [{"parallel_count": 0}, {"chunk_size": -1}])
def test_batch_options_out_of_range_are_refused(options):
    with pytest.raises(UsageError):
        Server().service().batch([{"hp": 1.0, "wt": 2.0}], **options)


@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.results(),
        lambda b: b.wait(),
        lambda b: b.cancel(),
        lambda b: b.refresh(),
        lambda b: b.list_artifacts(0),
        lambda b: b.artifact(0, "x.png"),
        lambda b: b.download(0),
    ],
)
def test_a_batch_that_was_not_started_says_so(call):
    batch = Server().service().batch([{"hp": 1.0, "wt": 2.0}])
    with pytest.raises(UsageError, match="not been started"):
        call(batch)


# -- following it -------------------------------------------------------------------------------


def test_results_is_a_snapshot_of_state_and_counts():
    server = Server()
    batch = server.started_batch()
    server.routes[("GET", "/v1/batches/b1")] = (200, batch_info("running", total=32, completed=12))
    resp = batch.results()
    assert isinstance(resp, BatchResponse)
    assert resp.state is BatchState.RUNNING
    assert resp.state == "running"
    assert (resp.completed_item_count, resp.total_item_count) == (12, 32)
    assert resp.execution_id == "b1"


def test_refresh_reads_the_current_state():
    server = Server()
    batch = server.started_batch()
    server.routes[("GET", "/v1/batches/b1")] = (200, batch_info("completed"))
    assert batch.refresh().state is BatchState.COMPLETED


def test_wait_polls_until_the_batch_is_finished():
    server = Server()
    batch = server.started_batch()
    states = iter(["pending", "running", "completed"])
    server.routes[("GET", "/v1/batches/b1")] = lambda r: (200, batch_info(next(states)))
    final = batch.wait(poll_interval=0)
    assert final.state is BatchState.COMPLETED
    assert len(server.requests) == 3


def test_wait_past_its_timeout_raises_wait_timeout():
    server = Server()
    batch = server.started_batch()
    server.routes[("GET", "/v1/batches/b1")] = (200, batch_info("running", total=32, completed=5))
    with pytest.raises(WaitTimeout, match="5 of 32") as info:
        batch.wait(timeout=0)
    assert isinstance(info.value, TimeoutError)
    assert info.value.state == "running"


def test_cancel_returns_the_new_state():
    server = Server({("POST", "/v1/batches/b1/cancel"): (200, batch_info("cancelling"))})
    batch = server.started_batch()
    assert batch.cancel().state is BatchState.CANCELLING
    assert batch.state is BatchState.CANCELLING


@pytest.mark.parametrize(
    ("call", "method", "path"),
    [
        (lambda b: b.cancel(if_match='"4"'), "POST", "/v1/batches/b1/cancel"),
        (lambda b: b.terminate("late", if_match='"4"'), "POST", "/v1/batches/b1/terminate"),
        (lambda b: b.disable("wait", if_match='"4"'), "POST", "/v1/batches/b1/disable"),
        (lambda b: b.enable(if_match='"4"'), "POST", "/v1/batches/b1/enable"),
        (lambda b: b.update(priority=2, if_match='"4"'), "PATCH", "/v1/batches/b1"),
        (lambda b: b.close(if_match='"4"'), "POST", "/v1/batches/b1/close"),
    ],
)
def test_every_change_sends_if_match_and_returns_the_batch_refreshed(call, method, path):
    server = Server({(method, path): (200, batch_info("pending", etag='"5"'))})
    batch = server.started_batch()
    assert call(batch) is batch
    assert batch.etag == '"5"'
    assert server.requests[-1].headers["If-Match"] == '"4"'


def test_a_change_without_if_match_is_unconditional():
    server = Server({("POST", "/v1/batches/b1/cancel"): (200, batch_info("cancelling"))})
    server.started_batch().cancel()
    assert "If-Match" not in server.requests[-1].headers


def test_add_sends_the_records_and_returns_their_indices():
    added = {"first_index": 2, "count": 3, "batch": batch_info("running", total=5)}
    server = Server({("POST", "/v1/batches/b1/records"): (200, added)})
    batch = server.started_batch()
    assert batch.add([{"hp": 1.0, "wt": 2.0}] * 3) == range(2, 5)
    sent = server.requests[-1]
    assert sent.headers["Content-Type"] == "application/vnd.apache.arrow.stream"
    assert batch.data["total_item_count"] == 5


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_a_parallel_count_that_is_not_at_least_1_or_minus_1_is_refused(bad):
    with pytest.raises(UsageError, match="-1 for no limit"):
        Server().service().batch([{"hp": 1.0, "wt": 2.0}], parallel_count=bad)
    with pytest.raises(UsageError, match="-1 for no limit"):
        Server().started_batch().update(parallel_count=bad)


def test_get_batch_reads_the_batch_and_list_batch_executions_lists_ids():
    server = Server(
        {
            ("GET", "/v1/batches/b1"): (200, batch_info("completed")),
            ("GET", BATCHES): (200, {"batches": [batch_info(), {**batch_info(), "id": "b0"}]}),
        }
    )
    svc = server.service()
    batch = svc.get_batch("b1")
    assert (batch.execution_id, batch.state) == ("b1", BatchState.COMPLETED)
    assert svc.list_batch_executions() == ["b1", "b0"]


# -- reading results ----------------------------------------------------------------------------


def paged_server(total: int, finished: set[int]) -> Server:
    def page(request: httpx.Request) -> tuple[int, object]:
        start, limit = int(request.url.params["start"]), int(request.url.params["limit"])
        rows = [record(i) for i in range(start, min(start + limit, total)) if i in finished]
        return 200, {"batch": batch_info(), "start": start, "limit": limit, "results": rows}

    server = Server({("GET", "/v1/batches/b1/results"): page})
    server.routes[("GET", "/v1/batches/b1")] = (
        200,
        batch_info("running", total=total, completed=len(finished)),
    )
    return server


def test_execution_reads_results_a_page_at_a_time_and_keeps_each_page():
    server = paged_server(2500, set(range(2500)))
    resp = server.started_batch().results()
    assert resp.execution(1500).index == 1500
    assert resp.execution(1999).output("answer") == 0.5
    assert resp.execution(0).status == "succeeded"
    pages = [r for r in server.requests if r.url.path.endswith("/results")]
    assert [dict(r.url.params) for r in pages] == [
        {"start": "1000", "limit": "1000"},
        {"start": "0", "limit": "1000"},
    ]


@pytest.mark.parametrize("index", [2, 10, -1])
def test_execution_outside_the_batch_raises_not_found(index):
    resp = paged_server(2, {0, 1}).started_batch().results()
    with pytest.raises(NotFoundError, match="indexes 0 to 1"):
        resp.execution(index)


def test_execution_of_a_record_without_a_result_yet_raises_not_found():
    resp = paged_server(3, {0}).started_batch().results()
    with pytest.raises(NotFoundError, match=r"Record 2 .* no final result yet"):
        resp.execution(2)


def test_without_partial_results_a_running_batch_shows_no_records():
    resp = paged_server(3, {0}).started_batch().results(show_partial_results=False)
    with pytest.raises(NotFoundError, match="only when the batch is finished"):
        resp.execution(0)
    with pytest.raises(NotFoundError, match="only when the batch is finished"):
        resp.to_pandas()


def test_unknown_output_name_raises_not_found_rather_than_key_error():
    resp = paged_server(1, {0}).started_batch().results()
    with pytest.raises(NotFoundError, match="no output 'score'"):
        resp.execution(0).output("score")


def test_to_pandas_orders_columns_index_status_outputs_then_details():
    table = pa.table(
        {
            "index": [0, 1],
            "status": ["succeeded", "failed"],
            "error": [None, "boom"],
            "error_type": [None, "ValueError"],
            "console_output": ["", ""],
            "duration_ms": [1.0, 2.0],
            "attempts": [1, 1],
            "answer": [0.5, None],
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    server = paged_server(2, {0, 1})
    server.routes[("GET", "/v1/batches/b1/results")] = httpx.Response(
        200,
        content=sink.getvalue().to_pybytes(),
        headers={"Content-Type": "application/vnd.apache.arrow.stream"},
    )
    df = server.started_batch().results().to_pandas()
    assert list(df.columns) == [
        "index",
        "status",
        "answer",
        "error",
        "error_type",
        "console_output",
        "duration_ms",
        "attempts",
    ]
    assert df["answer"].tolist()[0] == 0.5
    assert server.requests[-1].url.params["format"] == "arrow"


# -- artifacts ----------------------------------------------------------------------------------


def artifact_server() -> Server:
    return Server(
        {
            ("GET", "/v1/batches/b1/results/3/artifacts"): (200, {"artifacts": ["a.png", "b.txt"]}),
            ("GET", "/v1/batches/b1/results/3/artifacts/a.png"): httpx.Response(
                200, content=b"PNG"
            ),
            ("GET", "/v1/batches/b1/results/3/artifacts/b.txt"): httpx.Response(200, content=b"hi"),
        }
    )


def test_download_writes_every_artifact_of_the_record(tmp_path: Path):
    paths = artifact_server().started_batch().download(3, destination=tmp_path)
    assert paths == [str(tmp_path / "a.png"), str(tmp_path / "b.txt")]
    assert (tmp_path / "a.png").read_bytes() == b"PNG"
    assert (tmp_path / "b.txt").read_bytes() == b"hi"


def test_download_of_one_named_artifact(tmp_path: Path):
    paths = artifact_server().started_batch().download(3, "b.txt", tmp_path)
    assert paths == [str(tmp_path / "b.txt")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]


def test_download_to_a_missing_destination_is_refused(tmp_path: Path):
    with pytest.raises(UsageError, match="does not exist"):
        artifact_server().started_batch().download(3, destination=tmp_path / "nope")


def test_a_failed_download_leaves_no_file(tmp_path: Path):
    with pytest.raises(NotFoundError):
        artifact_server().started_batch().download(3, "missing.png", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_list_artifacts_and_artifact_read_one_record():
    batch = artifact_server().started_batch()
    assert batch.list_artifacts(3) == ["a.png", "b.txt"]
    assert batch.artifact(3, "a.png") == b"PNG"


def test_artifact_of_a_batch_record_result_is_fetched_by_its_record_index():
    server = artifact_server()
    server.routes[("GET", "/v1/batches/b1/results")] = (
        200,
        {
            "batch": batch_info(),
            "start": 0,
            "limit": 1000,
            "results": [record(3, artifacts=["a.png"])],
        },
    )
    server.routes[("GET", "/v1/batches/b1")] = (200, batch_info("completed", total=5, completed=5))
    result = server.started_batch().results().execution(3)
    assert result.artifacts == ["a.png"]
    assert result.artifact("a.png") == b"PNG"
    with pytest.raises(NotFoundError, match=r"no artifact 'c\.png'"):
        result.artifact("c.png")


def test_consume_artifact_bytes_come_inline():
    result = {
        **record(0, artifacts=["Histogram.png"]),
        "artifact_data": {"Histogram.png": base64.b64encode(b"PNG").decode()},
    }
    server = Server({("POST", "/v1/services/mtService/v1.0.0/consume"): (200, result)})
    res = server.service().manual_transmission(120, 2.8)
    assert res.artifact("Histogram.png") == b"PNG"
    assert server.requests[-1].url.path.endswith("/consume")
    assert len(server.requests) == 1


# -- services -----------------------------------------------------------------------------------


def test_list_and_delete_services():
    server = Server(
        {
            ("GET", "/v1/services"): (200, {"services": [SERVICE]}),
            ("DELETE", "/v1/services/mtService/v1.0.0"): httpx.Response(204),
        }
    )
    c = Client("http://testserver", token="t", transport=httpx.MockTransport(server))
    (svc,) = c.list_services(name="mtService")
    assert (svc.name, svc.version) == ("mtService", "v1.0.0")
    assert server.requests[-1].url.params["name"] == "mtService"
    assert c.delete_service("mtService", version="v1.0.0") is None
    with pytest.raises(UsageError, match="needs the version"):
        c.delete_service("mtService", "")


def test_an_unknown_batch_raises_not_found():
    with pytest.raises(NotFoundError):
        Server().service().get_batch("unknown")
