"""The SDK's public surface, its runners, authentication, and the service alias method."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import batchserve
from batchserve import BatchState, Client, Service
from batchserve.client import _ops
from batchserve.client._client import ClientBase
from batchserve.client._records import records_body
from batchserve.client._runner import AsyncRunner, Session
from batchserve.errors import AuthenticationError

SERVICE = {
    "name": "mtService",
    "version": "v1.0.0",
    "description": "",
    "alias": "manual_transmission",
    "mode": "row",
    "inputs": {"hp": "float", "wt": "float"},
    "outputs": {"answer": "float"},
    "artifacts": [],
    "bundle_kind": "callable",
    "published_by": "admin",
    "created_at": "2026-11-23T09:30:00Z",
}
RESULT = {
    "index": 0,
    "status": "succeeded",
    "outputs": {"answer": 0.64},
    "error": None,
    "error_type": None,
    "console_output": "",
    "artifacts": [],
    "duration_ms": 1.0,
    "attempts": 1,
    "artifact_data": {},
}


class FakeServer:
    """Answers from a table of (method, path) -> (status, JSON) and records what it was sent."""

    def __init__(self, routes: dict[tuple[str, str], tuple[int, object]]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, body = self.routes[(request.method, request.url.raw_path.decode().split("?")[0])]
        return httpx.Response(status, json=body)

    def client(self) -> Client:
        return Client("http://testserver", token="tok", transport=httpx.MockTransport(self))


# -- the public surface -------------------------------------------------------------------------


def test_all_is_exactly_the_public_api():
    assert sorted(batchserve.__all__) == sorted(
        [
            "Client",
            "BatchState",
            "Service",
            "Batch",
            "BatchResponse",
            "ServiceResponse",
            "errors",
            "__version__",
            # the asyncio client and its batch-task operations
            "AsyncBatch",
            "AsyncBatchExecution",
            "AsyncBatchResponse",
            "AsyncBatchTaskOperation",
            "AsyncBatchTaskResult",
            "AsyncClient",
            "AsyncService",
            "AsyncServiceResponse",
            "BatchTaskErrorsInfo",
            "BatchTaskInfo",
            "BatchTaskOperation",
            "BatchTaskResult",
            "BatchTaskStatus",
            "BatchTasks",
            "ChunkErrorInfo",
            "LineErrorInfo",
            "ServiceRef",
        ]
    )
    assert batchserve.__version__ == "0.1.0"


def test_every_name_in_all_exists():
    for name in batchserve.__all__:
        assert getattr(batchserve, name) is not None
    for name in batchserve.client.__all__:
        assert getattr(batchserve.client, name) is getattr(batchserve, name)
    for name in batchserve.errors.__all__:
        assert hasattr(batchserve.errors, name)


def test_batch_state_is_the_shared_enum_with_ml_server_spellings():
    assert batchserve.Batch.STATE is BatchState
    assert BatchState.complete == "completed"


def test_importing_batchserve_loads_no_server_or_data_modules():
    code = (
        "import sys, batchserve; "
        "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'uvicorn', 'pyarrow', 'pandas') "
        "if m in sys.modules))"
    )
    src = str(Path(batchserve.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- one operation, two runners ------------------------------------------------------------------


def test_an_operation_runs_unchanged_through_the_async_runner():
    server = FakeServer({("GET", "/v1/services/mtService/latest"): (200, SERVICE)})

    async def main() -> dict:
        async with httpx.AsyncClient(
            base_url="http://testserver", transport=httpx.MockTransport(server)
        ) as http:
            runner = AsyncRunner(Session(token="tok"), http)
            return await runner.run(_ops.get_service("mtService", None))

    assert asyncio.run(main()) == SERVICE
    assert server.requests[0].headers["Authorization"] == "Bearer tok"


def test_the_async_runner_streams_a_records_upload():
    created = {"id": "b1", "state": "pending"}
    server = FakeServer({("POST", "/v1/services/mtService/v1.0.0/batches"): (201, created)})
    body = records_body([{"hp": 1.0, "wt": 2.0}], ["hp", "wt"])

    async def main() -> dict:
        async with httpx.AsyncClient(
            base_url="http://testserver", transport=httpx.MockTransport(server)
        ) as http:
            runner = AsyncRunner(Session(token="tok"), http)
            op = _ops.create_batch("mtService", "v1.0.0", body, parallel_count=3, chunk_size=None)
            return await runner.run(op)

    assert asyncio.run(main()) == created
    sent = server.requests[0]
    assert sent.headers["Content-Type"] == "application/vnd.apache.arrow.stream"
    assert sent.content == b"".join(body.pieces())


class AsyncFacade(ClientBase):
    """The client's operations over the asyncio runner, as an asyncio client would hold them."""

    def __init__(self, http: httpx.AsyncClient, token: str) -> None:
        self._runner = AsyncRunner(Session(token=token), http)


def test_client_operations_and_service_methods_are_awaitable_over_the_async_runner():
    server = FakeServer(
        {
            ("GET", "/v1/services/mtService/latest"): (200, SERVICE),
            ("POST", "/v1/services/mtService/v1.0.0/consume"): (200, RESULT),
        }
    )

    async def main() -> float:
        async with httpx.AsyncClient(
            base_url="http://testserver", transport=httpx.MockTransport(server)
        ) as http:
            client = AsyncFacade(http, token="tok")
            svc = await client.get_service("mtService")
            result = await svc.manual_transmission(120, 2.8)
            return result.output("answer")

    assert asyncio.run(main()) == 0.64


# -- the service's alias method -----------------------------------------------------------------


def consume_server() -> FakeServer:
    return FakeServer(
        {
            ("GET", "/v1/services/mtService/v1.0.0"): (200, SERVICE),
            ("POST", "/v1/services/mtService/v1.0.0/consume"): (200, RESULT),
        }
    )


def test_alias_method_takes_inputs_positionally_in_declared_order():
    server = consume_server()
    svc = server.client().get_service("mtService", version="v1.0.0")
    result = svc.manual_transmission(120, 2.8)
    assert json.loads(server.requests[-1].content) == {"inputs": {"hp": 120, "wt": 2.8}}
    assert result.output("answer") == 0.64


def test_alias_method_takes_inputs_by_name():
    server = consume_server()
    svc = server.client().get_service("mtService", version="v1.0.0")
    svc.manual_transmission(wt=2.8, hp=120)
    assert json.loads(server.requests[-1].content) == {"inputs": {"hp": 120, "wt": 2.8}}


def test_consume_takes_inputs_the_same_way_as_the_alias_method():
    server = consume_server()
    svc = server.client().get_service("mtService", version="v1.0.0")
    svc.consume(120, wt=2.8)
    assert json.loads(server.requests[-1].content) == {"inputs": {"hp": 120, "wt": 2.8}}


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1, 2, 3), {}, "takes 2 inputs"),
        ((1,), {"hp": 2}, "multiple values for input 'hp'"),
        ((1,), {}, "missing input"),
        ((1, 2), {"speed": 3}, "unexpected input 'speed'"),
    ],
)
def test_alias_method_refuses_arguments_that_do_not_match_the_inputs(args, kwargs, message):
    svc = consume_server().client().get_service("mtService", version="v1.0.0")
    with pytest.raises(TypeError, match=message):
        svc.manual_transmission(*args, **kwargs)


def test_alias_method_shows_the_inputs_as_its_parameters():
    import inspect

    svc = consume_server().client().get_service("mtService", version="v1.0.0")
    assert list(inspect.signature(svc.manual_transmission).parameters) == ["hp", "wt"]
    assert type(svc).__name__ == "MtServiceService"
    assert isinstance(svc, Service)


def test_alias_that_would_hide_a_service_method_adds_no_method():
    info = {**SERVICE, "alias": "batch"}
    server = FakeServer({("GET", "/v1/services/mtService/v1.0.0"): (200, info)})
    svc = server.client().get_service("mtService", version="v1.0.0")
    assert svc.batch.__func__ is Service.batch


def test_numpy_inputs_are_sent_as_plain_numbers():
    import numpy as np

    server = consume_server()
    svc = server.client().get_service("mtService", version="v1.0.0")
    svc.consume(np.float64(120.0), np.int64(3))
    assert json.loads(server.requests[-1].content) == {"inputs": {"hp": 120.0, "wt": 3}}


# -- authentication and URLs --------------------------------------------------------------------


def test_login_keeps_the_bearer_token_and_forgets_the_password():
    server = FakeServer(
        {
            ("POST", "/login"): (200, {"access_token": "a1", "refresh_token": "r1"}),
            ("GET", "/v1/me"): (200, {"username": "admin", "role": "owner"}),
        }
    )
    client = Client(
        "http://testserver", username="admin", password="pw", transport=httpx.MockTransport(server)
    )
    assert client.whoami() == {"username": "admin", "role": "owner"}
    login, me = server.requests
    assert json.loads(login.content) == {"username": "admin", "password": "pw"}
    assert "Authorization" not in login.headers
    assert me.headers["Authorization"] == "Bearer a1"
    assert not client._session.has_credentials


def test_refused_token_is_refreshed_once_and_the_request_sent_again():
    me_calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/login":
            return httpx.Response(200, json={"access_token": "old", "refresh_token": "r1"})
        if request.url.path == "/login/refreshToken":
            assert json.loads(request.content) == {"refreshToken": "r1"}
            return httpx.Response(200, json={"access_token": "new", "refresh_token": "r2"})
        me_calls.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer new":
            return httpx.Response(200, json={"username": "admin", "role": "owner"})
        return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "expired"}})

    client = Client(
        "http://testserver", username="admin", password="pw", transport=httpx.MockTransport(handler)
    )
    assert client.whoami()["username"] == "admin"
    assert me_calls == ["Bearer old", "Bearer new"]
    assert client._session.refresh_token == "r2"


def test_token_that_cannot_be_refreshed_raises_authentication_error():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/login":
            return httpx.Response(200, json={"access_token": "a", "refresh_token": "r"})
        return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "expired"}})

    client = Client(
        "http://testserver", username="admin", password="pw", transport=httpx.MockTransport(handler)
    )
    with pytest.raises(AuthenticationError, match="renewing it failed"):
        client.whoami()


def test_given_token_is_used_as_it_is_and_a_401_is_not_retried():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "bad"}})

    client = Client("http://testserver", token="mine", transport=httpx.MockTransport(handler))
    with pytest.raises(AuthenticationError):
        client.whoami()
    assert len(calls) == 1
    assert calls[0].headers["Authorization"] == "Bearer mine"


def test_path_parts_are_percent_quoted():
    server = FakeServer({("GET", "/v1/services/a%2Fb%20c/v%3F1"): (200, SERVICE)})
    server.client().get_service("a/b c", version="v?1")
    assert server.requests[0].url.raw_path == b"/v1/services/a%2Fb%20c/v%3F1"


def test_base_url_path_prefix_is_kept():
    server = FakeServer({("GET", "/prefix/v1/services/x/latest"): (200, SERVICE)})
    Client(
        "http://testserver/prefix/", token="t", transport=httpx.MockTransport(server)
    ).get_service("x")
    assert server.requests[0].url.path == "/prefix/v1/services/x/latest"


def test_client_is_a_context_manager_that_closes_its_connections():
    with consume_server().client() as client:
        pass
    assert client._http.is_closed
