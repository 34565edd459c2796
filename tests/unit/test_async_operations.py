"""The asyncio client's batch-task operations over an in-process server double: paging, request
timeouts, waiting, results and errors (the end-to-end tests run them against a real server)."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pyarrow as pa
import pytest

from batchserve import AsyncClient, BatchTaskInfo, BatchTaskStatus, errors
from batchserve.client._taskinfo import errors_info, task_info

Handler = Callable[[httpx.Request], httpx.Response]


def batch(batch_id: str, state: str = "running", **fields: Any) -> dict[str, Any]:
    data = {
        "id": batch_id,
        "service": {"name": "svc", "version": "v1"},
        "state": state,
        "creation_time": "2026-11-23T09:30:00Z",
        "start_time": "2026-11-23T09:30:01Z",
        "end_time": None,
        "created_by": "admin",
        "metadata": {"team": "risk"},
        "display_name": None,
        "chunk_size": 10,
        "total_item_count": 30,
        "completed_item_count": 0,
        "failed_item_count": 0,
        "error": None,
    }
    data.update(fields)
    return data


def run(handler: Handler, main: Callable[[AsyncClient], Any]) -> Any:
    async def go() -> Any:
        transport = httpx.MockTransport(handler)
        async with AsyncClient("http://testserver", token="tok", transport=transport) as client:
            return await main(client)

    return asyncio.run(go())


async def collect(iterator: Any) -> list[Any]:
    return [item async for item in iterator]


# -- listing ------------------------------------------------------------------------------------

IDS = [f"b{i}" for i in range(7)]  # newest first


def paging_server(seen: list[httpx.Request]) -> Handler:
    """A server that pages with a cursor: the cursor is the index of the next batch."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        limit = int(request.url.params["limit"])
        start = int(request.url.params.get("cursor", "0"))
        page = IDS[start : start + limit]
        nxt = str(start + limit) if start + limit < len(IDS) else None
        return httpx.Response(200, json={"batches": [batch(i) for i in page], "next_cursor": nxt})

    return handle


def test_listing_follows_next_cursor_page_by_page():
    seen: list[httpx.Request] = []

    async def main(client: AsyncClient) -> list[str]:
        return [op.id async for op in client.batch.list_operations(page_size=3)]

    assert run(paging_server(seen), main) == IDS
    assert [r.url.params.get("cursor") for r in seen] == [None, "3", "6"]
    assert {r.url.params["limit"] for r in seen} == {"3"}


def test_listing_sends_the_states_of_the_status_filter():
    seen: list[httpx.Request] = []

    async def main(client: AsyncClient) -> None:
        await collect(client.batch.list_operations(status="canceled"))

    run(paging_server(seen), main)
    assert sorted(seen[0].url.params.get_list("state")) == ["cancelled", "cancelling"]


def test_listing_reads_only_as_many_pages_as_the_iteration_needs():
    seen: list[httpx.Request] = []

    async def main(client: AsyncClient) -> str:
        async for op in client.batch.list_operations(page_size=2):
            return op.id
        raise AssertionError("nothing listed")

    assert run(paging_server(seen), main) == "b0"
    assert len(seen) == 1


def test_listing_a_server_without_cursors_asks_for_more_and_hands_each_batch_out_once():
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        limit = int(request.url.params["limit"])
        return httpx.Response(200, json={"batches": [batch(i) for i in IDS[:limit]]})

    async def main(client: AsyncClient) -> list[str]:
        return [info.task_id async for info in client.batch.list_info(page_size=3)]

    assert run(handle, main) == IDS
    assert [int(r.url.params["limit"]) for r in seen] == [3, 6, 9]


def test_listing_arguments_are_checked_when_the_listing_is_asked_for():
    async def main(client: AsyncClient) -> None:
        with pytest.raises(ValueError, match="not a batch task status"):
            client.batch.list_operations(status="sleeping")
        with pytest.raises(ValueError, match="page_size"):
            client.batch.list_info(page_size=5000)
        with pytest.raises(ValueError, match="timeout"):
            client.batch.list_info(timeout=0)

    run(paging_server([]), main)


# -- one batch ----------------------------------------------------------------------------------


def test_each_call_sends_its_timeout_as_the_request_timeout():
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=batch("b1"))

    async def main(client: AsyncClient) -> BatchTaskStatus:
        op = await client.batch.get("b1", timeout=7)
        return await op.get_status(timeout=2.5)

    assert run(handle, main) is BatchTaskStatus.IN_PROGRESS
    assert seen[0].extensions["timeout"]["read"] == 7
    assert seen[1].extensions["timeout"]["read"] == 2.5


def test_calls_without_a_timeout_use_the_clients():
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=batch("b1"))

    async def main(client: AsyncClient) -> None:
        op = await client.batch.get("b1")
        await op.get_status(timeout=None)

    run(handle, main)
    assert seen[0].extensions["timeout"]["read"] == 60
    assert seen[1].extensions["timeout"]["read"] == 60


def test_wait_past_poll_timeout_raises_asyncio_timeout_error_naming_the_batch_and_the_wait():
    polls: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        polls.append(request)
        return httpx.Response(200, json=batch("b1", "running", completed_item_count=4))

    async def main(client: AsyncClient) -> None:
        op = await client.batch.get("b1")
        with pytest.raises(asyncio.TimeoutError) as raised:
            await op.wait(poll_timeout=0.3, poll_interval=0.05)
        message = str(raised.value)
        assert "Batch b1 did not finish within poll_timeout=0.3 s" in message
        assert re.search(r"\(waited \d+\.\d s\)", message)
        assert "IN_PROGRESS" in message and "4 of 30 records finished" in message
        assert isinstance(raised.value, errors.WaitTimeout)
        assert (raised.value.execution_id, raised.value.timeout) == ("b1", 0.3)

    run(handle, main)
    # Each poll asks the server to hold its answer for the poll interval at most, and the last
    # one for no longer than the time left.
    waits = [float(r.url.params.get("wait", 0)) for r in polls[1:]]
    assert waits and all(w <= 0.05 for w in waits)
    assert waits[0] == 0.05


def test_wait_polls_while_running_then_a_failed_batch_raises_runtime_error():
    states = iter(["pending", "paused", "running", "pausing", "failed"])

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=batch("b1", next(states), error="too many failed records"))

    async def main(client: AsyncClient) -> None:
        op = await client.batch.get("b1")
        with pytest.raises(RuntimeError, match="failed: too many failed records"):
            await op.wait(poll_interval=0.01)

    run(handle, main)


def test_a_batch_not_finished_has_no_result_yet():
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=batch("b1", "running"))

    async def main(client: AsyncClient) -> None:
        op = await client.batch.get("b1")
        with pytest.raises(RuntimeError, match="no result yet"):
            await op.get_result()

    run(handle, main)


def test_get_of_a_task_info_sends_nothing():
    def handle(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request {request.url}")

    info = task_info(batch("b9", "completed"), errors_info(None, [], 1))

    async def main(client: AsyncClient) -> str:
        return (await client.batch.get(info)).task_id

    assert run(handle, main) == "b9"


def arrow_results(rows: list[dict[str, Any]]) -> bytes:
    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def test_task_info_reports_failed_records_and_failed_chunks():
    rows = [
        {"index": 0, "status": "succeeded", "error": None, "error_type": None},
        {"index": 3, "status": "failed", "error": "bad hp", "error_type": "ValueError"},
        {"index": 5, "status": "cancelled", "error": "cancelled", "error_type": None},
        {"index": 11, "status": "succeeded", "error": None, "error_type": None},
    ] + [
        {"index": i, "status": "failed", "error": "worker lost", "error_type": "ChunkFailed"}
        for i in range(12, 20)
    ]
    data = batch(
        "b1",
        "completed",
        failed_item_count=9,
        end_time="2026-11-23T09:31:00Z",
        metadata={"team": "risk"},
    )

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/results"):
            return httpx.Response(200, content=arrow_results(rows))
        return httpx.Response(200, json=data)

    async def main(client: AsyncClient) -> BatchTaskInfo:
        op = await client.batch.get("b1")
        return await op.get_task_info()

    info = run(handle, main)
    assert info.status is BatchTaskStatus.COMPLETED
    assert info.labels == {"team": "risk"}
    assert (info.service.name, info.service.version) == ("svc", "v1")
    assert info.finished_at is not None and info.finished_at.minute == 31
    assert [(e.index, e.message) for e in info.errors.line_errors] == [(3, "bad hp")]
    assert [
        (c.chunk_number, c.first_index, c.last_index, c.message) for c in info.errors.chunk_errors
    ] == [(1, 12, 19, "worker lost")]


def test_task_info_of_a_batch_without_failed_records_reads_no_results():
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json=batch("b1", "cancelled", error=None))

    async def main(client: AsyncClient) -> BatchTaskInfo:
        return await (await client.batch.get("b1")).get_task_info()

    info = run(handle, main)
    assert info.status is BatchTaskStatus.CANCELED
    assert not info.errors
    assert all(not p.endswith("/results") for p in seen)


def test_the_client_logs_in_on_entering_and_sends_the_token():
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/login":
            assert json.loads(request.content) == {"username": "ann", "password": "pw"}
            return httpx.Response(200, json={"access_token": "t1", "refresh_token": "r1"})
        return httpx.Response(200, json=batch("b1"))

    async def main() -> str | None:
        transport = httpx.MockTransport(handle)
        async with AsyncClient(
            "http://testserver", username="ann", password="pw", transport=transport
        ) as client:
            token = client.token
            await client.batch.get("b1")
        return token

    assert asyncio.run(main()) == "t1"
    assert seen[1].headers["Authorization"] == "Bearer t1"


def test_wait_polls_well_inside_the_clients_timeout_when_the_call_gives_none():
    polls: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        polls.append(request)
        return httpx.Response(200, json=batch("b1", "completed" if len(polls) > 2 else "running"))

    async def main() -> None:
        transport = httpx.MockTransport(handle)
        async with AsyncClient(
            "http://testserver", token="tok", timeout=4, transport=transport
        ) as client:
            op = await client.batch.get("b1")
            await op.wait(timeout=None, poll_interval=0.01)
            await op.wait(timeout=None)

    asyncio.run(main())
    assert float(polls[1].url.params["wait"]) == 0.01
    assert float(polls[-1].url.params["wait"]) == 2.0
