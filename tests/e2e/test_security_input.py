"""Hostile and malformed input against a real server: each is a clear 4xx in the face's error
shape, never a 500, the connection stays open for the next request, and the server logs no
traceback for any of them."""

from __future__ import annotations

import io
import math
import socket
import time
from collections.abc import Iterator

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.e2e.conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = pytest.mark.e2e

DEEP = "[" * 50_000 + "]" * 50_000
JSONL = {"Content-Type": "application/jsonl"}
JSON = {"Content-Type": "application/json"}
CSV = {"Content-Type": "text/csv"}
PASSWORD = "pw-123456-long"

# Says what its float input is: the service sees NaN and Infinity as IEEE values.
KIND = "kind = 'nan' if x != x else 'inf' if abs(x) == float('inf') else 'finite'\ny = x * 2"


def login(url: str, username: str, password: str) -> httpx.Client:
    token = httpx.post(f"{url}/login", json={"username": username, "password": password})
    token.raise_for_status()
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    return httpx.Client(base_url=url, headers=headers, timeout=120)


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with login(server.url, "admin", ADMIN_PASSWORD) as c:
        yield c


@pytest.fixture
def as_role(server: ServerProcess, http: httpx.Client, unique_name: str) -> Iterator[object]:
    """``as_role("reader")``: a client logged in as a new user of that role."""
    clients: list[httpx.Client] = []

    def make(role: str) -> httpx.Client:
        name = f"{role}{unique_name}{len(clients)}".lower()
        made = http.post("/v1/users", json={"username": name, "password": PASSWORD, "role": role})
        assert made.status_code == 201, made.text
        clients.append(login(server.url, name, PASSWORD))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


def ml_publish(http: httpx.Client, name: str, code: str, **more: object) -> httpx.Response:
    body = {
        "code": code,
        "runtimeType": "Python",
        "inputParameterDefinitions": [{"name": "x", "type": "numeric"}],
        "outputParameterDefinitions": [
            {"name": "y", "type": "numeric"},
            {"name": "kind", "type": "character"},
        ],
        **more,
    }
    return http.post(f"/services/{name}/v1", json=body)


@pytest.fixture
def doubler(http: httpx.Client, unique_name: str) -> str:
    """An ML-published service ``x (float) -> y = 2x, kind``; its name."""
    assert ml_publish(http, unique_name, KIND).status_code == 201
    return unique_name


def refused(resp: httpx.Response, status: int, *words: str) -> str:
    """The message of a refusal in either face's error shape, checked for ``words``."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    message = str(body["error"]["message"] if "error" in body else body["message"])
    for word in words:
        assert word in message, message
    return message


def still_open(http: httpx.Client) -> None:
    """The connection the refusal came on serves the next request (a 500 used to close it)."""
    assert http.get("/health").status_code == 200


def wait_done(http: httpx.Client, batch_id: str) -> list[dict]:
    state = http.get(f"/v1/batches/{batch_id}", params={"wait": 60}).json()["state"]
    assert state == "completed"
    return list(http.get(f"/v1/batches/{batch_id}/results").json()["results"])


# --- nesting -------------------------------------------------------------------------------


def test_json_lines_nested_50000_deep_are_a_400(http: httpx.Client, doubler: str) -> None:
    body = f'{{"x": 1}}\n{{"x": 1, "extra": {DEEP}}}\n'.encode()
    resp = http.post(f"/v1/services/{doubler}/v1/batches", content=body, headers=JSONL)
    refused(resp, 400, "Line 2", "64 levels")
    still_open(http)


def test_an_ml_server_batch_body_nested_50000_deep_is_a_400(
    http: httpx.Client, doubler: str
) -> None:
    resp = http.post(f"/api/{doubler}/v1/batch", content=DEEP, headers=JSON)
    assert resp.json()["code"] == "BadRequest"
    refused(resp, 400, "64 levels")
    still_open(http)


def test_publish_metadata_nested_50000_deep_is_a_400(http: httpx.Client) -> None:
    metadata = '{"name": "deep", "inputs": ' + DEEP + "}"
    resp = http.post("/v1/services", data={"metadata": metadata}, files={"bundle": ("b", b"x")})
    refused(resp, 400, "metadata", "64 levels")
    still_open(http)


def test_consume_inputs_nested_deep_are_a_400_on_both_faces(
    http: httpx.Client, doubler: str
) -> None:
    """Deep enough to be refused (and to break what walks the inputs recursively), yet within
    what Python's parser reads; and far deeper, which it cannot read."""
    for depth in (900, 50_000):
        deep = "[" * depth + "]" * depth
        ml = http.post(f"/api/{doubler}/v1", content=f'{{"x": {deep}}}', headers=JSON)
        assert ml.json()["code"] == "BadRequest"
        refused(ml, 400, "nest")
        native = http.post(
            f"/v1/services/{doubler}/v1/consume",
            content=f'{{"inputs": {{"x": {deep}}}}}',
            headers=JSON,
        )
        refused(native, 400)
    still_open(http)


def test_batch_metadata_nested_deep_is_a_400(http: httpx.Client, doubler: str) -> None:
    resp = http.post(
        f"/v1/services/{doubler}/v1/batches",
        params={"metadata": "[" * 5000 + "]" * 5000},
        content=b"x\n1\n",
        headers=CSV,
    )
    refused(resp, 400, "metadata", "64 levels")


# --- ML Server code --------------------------------------------------------------------------

LONG_EXPRESSION = "y = " + "1+" * 100_000 + "1"  # 200 KB, one level of nesting per operator


def test_a_reader_sending_code_is_refused_before_it_is_compiled(
    as_role: object, doubler: str
) -> None:
    reader = as_role("reader")  # type: ignore[operator]
    refused(ml_publish(reader, "readerscode", LONG_EXPRESSION), 403, "reader")
    resp = reader.patch(f"/services/{doubler}/v1", json={"code": LONG_EXPRESSION})
    refused(resp, 403, "reader")


def test_code_too_deep_to_compile_is_a_400(http: httpx.Client, unique_name: str) -> None:
    refused(ml_publish(http, unique_name, LONG_EXPRESSION), 400, "code", "nests")
    refused(ml_publish(http, unique_name, "y = 1", initCode="-" * 200_000 + "1"), 400, "initCode")
    still_open(http)


def test_code_over_the_size_limit_is_a_413(http: httpx.Client, unique_name: str) -> None:
    code = "y = 1\n" + "# padding\n" * 120_000
    refused(ml_publish(http, unique_name, code), 413, "code", "characters long")


def test_only_the_publisher_and_owners_see_a_services_code(
    http: httpx.Client, as_role: object, unique_name: str
) -> None:
    author = as_role("contributor")  # type: ignore[operator]
    assert ml_publish(author, unique_name, KIND, initCode="secret = 1").status_code == 201
    for who, shown in [
        (author, True),
        (http, True),
        (as_role("reader"), False),  # type: ignore[operator]
        (as_role("contributor"), False),  # type: ignore[operator]
    ]:
        for path in (f"/services/{unique_name}/v1", f"/services/{unique_name}", "/services"):
            meta = next(m for m in who.get(path).json() if m["name"] == unique_name)
            assert (meta["code"], meta["initCode"]) == (
                (KIND, "secret = 1") if shown else (None, None)
            )


# --- columns and lines ---------------------------------------------------------------------


def parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def arrow(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


@pytest.mark.parametrize(
    "column",
    [pa.array([{"a": 1.0}]), pa.array([[1.0]]), pa.array([b"\x01"])],
    ids=["struct", "list", "binary"],
)
@pytest.mark.parametrize(
    ("content_type", "encode"),
    [("application/vnd.apache.parquet", parquet), ("application/vnd.apache.arrow.stream", arrow)],
    ids=["parquet", "arrow"],
)
def test_struct_list_and_binary_columns_are_a_400_naming_the_column(
    http: httpx.Client, doubler: str, column: pa.Array, content_type: str, encode: object
) -> None:
    data = encode(pa.table({"x": column}))  # type: ignore[operator]
    resp = http.post(
        f"/v1/services/{doubler}/v1/batches",
        content=data,
        headers={"Content-Type": content_type},
    )
    refused(resp, 400, "'x'", "single values", "integers, floating point numbers")
    still_open(http)


def test_a_csv_header_field_over_128_kib_is_a_400(http: httpx.Client, doubler: str) -> None:
    body = b"x," + b"h" * (200 << 10) + b"\n1,2\n"
    resp = http.post(f"/v1/services/{doubler}/v1/batches", content=body, headers=CSV)
    refused(resp, 400, "header row")
    still_open(http)


def test_a_csv_field_of_10_mb_is_read(http: httpx.Client, doubler: str) -> None:
    body = b"x,note\n1," + b"n" * (10 << 20) + b"\n2,short\n"
    resp = http.post(f"/v1/services/{doubler}/v1/batches", content=body, headers=CSV)
    assert resp.status_code == 201, resp.text
    assert [r["outputs"]["y"] for r in wait_done(http, resp.json()["id"])] == [2.0, 4.0]


def test_a_json_line_without_end_is_refused_once_it_passes_the_line_limit(
    server: ServerProcess, http: httpx.Client, doubler: str
) -> None:
    """300 MB in one line: the answer comes while the body is still being sent, after about the
    64 MiB limit, and the server never holds the rest."""
    token = http.headers["Authorization"]
    size = 300 * 1024 * 1024
    head = (
        f"POST /v1/services/{doubler}/v1/batches HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {token}\r\nContent-Type: application/jsonl\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    piece = b"a" * (1 << 20)
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head + b'{"x": "')
        deadline = time.monotonic() + 120
        while sent < size and time.monotonic() < deadline and not _waiting(sock):
            sock.settimeout(5)  # a server that stopped reading: stop sending
            try:
                sock.sendall(piece)
            except OSError:
                break
            sent += len(piece)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"longer than the limit" in answer
    # Refused once the line passes 64 MiB, with what the server reads ahead of the parser (a
    # queue of pieces of the body) and the sockets' buffers on top: far from the line's end.
    assert sent < 200 * 1024 * 1024


def _waiting(sock: socket.socket) -> bool:
    """Whether the server has sent something (its answer) on ``sock``."""
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)


def _answer(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection or pauses for 2 s."""
    sock.settimeout(2)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except OSError:
        pass
    return answer


# --- numbers and parameters ----------------------------------------------------------------


def test_integer_query_parameters_past_the_bounds_are_a_422(
    http: httpx.Client, doubler: str
) -> None:
    made = http.post(f"/v1/services/{doubler}/v1/batches", content=b"x\n1\n", headers=CSV)
    batch_id = made.json()["id"]
    huge = "9223372036854775808"
    refused(http.get(f"/v1/batches/{batch_id}/results", params={"start": huge}), 422, "start")
    refused(http.get(f"/v1/batches/{batch_id}/results/{huge}"), 422, "index")
    refused(http.get(f"/v1/batches/{batch_id}/results/{huge}/artifacts"), 422, "index")
    api = f"/api/{doubler}/v1/batch/{batch_id}"
    refused(http.get(api, params={"start": huge}), 400, "start")
    refused(http.get(f"{api}/{huge}/files"), 400, "index")
    resp = http.post(
        f"/v1/services/{doubler}/v1/batches",
        params={"record_count": huge},
        content=b"x\n1\n",
        headers=CSV,
    )
    refused(resp, 422, "record_count")
    still_open(http)


def test_an_unknown_query_parameter_on_a_mutating_route_is_a_400(
    http: httpx.Client, doubler: str
) -> None:
    resp = http.post(
        f"/v1/services/{doubler}/v1/batches",
        params={"paralel_count": "3"},
        content=b"x\n1\n",
        headers=CSV,
    )
    message = refused(resp, 400, "'paralel_count'", "parallel_count", "priority")
    assert resp.json()["error"]["details"]["unknown"] == ["paralel_count"]
    assert "parallel_count" in resp.json()["error"]["details"]["accepted"]
    assert "parallel_count" in message
    refused(http.post(f"/api/{doubler}/v1/batch?parallelcount=2", json=[]), 400, "parallelCount")
    refused(http.post("/v1/batches/nope/cancel", params={"force": "1"}), 400, "no query")
    # Reads stay lenient: a cache buster on a GET changes nothing.
    assert http.get("/v1/batches", params={"_": "123"}).status_code == 200


def test_nan_and_infinity_reach_a_float_input_as_ieee_values(
    http: httpx.Client, doubler: str
) -> None:
    """NaN and Infinity are accepted in every format; a JSON answer writes a non-finite output
    as null (JSON has no such number), a CSV export writes it as it is."""
    uploads = [
        (b"x\nNaN\ninf\n-Infinity\n1.5\n", CSV),
        (b'{"x": NaN}\n{"x": Infinity}\n{"x": -Infinity}\n{"x": 1.5}\n', JSONL),
        (arrow(pa.table({"x": [math.nan, math.inf, -math.inf, 1.5]})), None),
    ]
    for body, headers in uploads:
        made = http.post(
            f"/v1/services/{doubler}/v1/batches",
            content=body,
            headers=headers or {"Content-Type": "application/vnd.apache.arrow.stream"},
        )
        assert made.status_code == 201, made.text
        rows = wait_done(http, made.json()["id"])
        assert [r["outputs"] for r in rows] == [
            {"y": None, "kind": "nan"},
            {"y": None, "kind": "inf"},
            {"y": None, "kind": "inf"},
            {"y": 3.0, "kind": "finite"},
        ]
        exported = http.get(f"/v1/batches/{made.json()['id']}/results", params={"format": "csv"})
        assert [line.split(",")[2] for line in exported.text.splitlines()[1:]] == [
            "nan",
            "inf",
            "-inf",
            "3",
        ]
    consumed = http.post(f"/api/{doubler}/v1", content=b'{"x": Infinity}', headers=JSON)
    assert consumed.json()["outputParameters"] == {"y": None, "kind": "inf"}
    started = http.post(f"/api/{doubler}/v1/batch", content=b'[{"x": NaN}]', headers=JSON)
    assert started.status_code == 202, started.text


# --- ML Server results, a page at a time ---------------------------------------------------


def test_ml_server_batch_results_come_a_page_at_a_time(http: httpx.Client, doubler: str) -> None:
    count = 10_050  # past the default limit of 10,000 results an answer
    records = "".join(f'{{"x": {i}}}\n' for i in range(count)).encode()
    made = http.post(f"/v1/services/{doubler}/v1/batches", content=records, headers=JSONL)
    batch_id = made.json()["id"]
    assert http.get(f"/v1/batches/{batch_id}", params={"wait": 60}).json()["state"] == "completed"
    api = f"/api/{doubler}/v1/batch/{batch_id}"

    first = http.get(api, params={"showPartialResults": "true"})
    body = first.json()
    assert (body["state"], body["totalItemCount"]) == ("complete", count)
    assert len(body["batchExecutionResults"]) == 10_000
    assert body["batchExecutionResults"][9_999]["outputParameters"]["y"] == 19_998.0
    next_page = first.headers["Link"]
    assert "start=10000" in next_page and 'rel="next"' in next_page

    rest = http.get(next_page.split(";")[0].strip("<>")).json()["batchExecutionResults"]
    assert [r["outputParameters"]["y"] for r in rest] == [2.0 * i for i in range(10_000, count)]
    page = http.get(api, params={"start": 5, "limit": 3}).json()["batchExecutionResults"]
    assert [r["outputParameters"]["y"] for r in page] == [10.0, 12.0, 14.0]


# --- the log -------------------------------------------------------------------------------


def _deep(depth: int) -> dict[str, object]:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return {"x": value}


def test_the_log_has_no_traceback_for_refused_requests(tmp_path: object) -> None:
    proc = ServerProcess(tmp_path / "home", workers=1).start()  # type: ignore[operator]
    try:
        with login(proc.url, "admin", ADMIN_PASSWORD) as c:
            assert ml_publish(c, "logged", KIND).status_code == 201
            answers = [
                c.post("/v1/services/logged/v1/batches", content=DEEP.encode(), headers=JSONL),
                c.post("/api/logged/v1/batch", content=DEEP, headers=JSON),
                ml_publish(c, "logged2", LONG_EXPRESSION),
                c.post(
                    "/v1/services/logged/v1/batches",
                    content=parquet(pa.table({"x": pa.array([[1.0]])})),
                    headers={"Content-Type": "application/vnd.apache.parquet"},
                ),
                c.post(
                    "/v1/services/logged/v1/batches",
                    content=b"x," + b"h" * (200 << 10) + b"\n1,2\n",
                    headers=CSV,
                ),
                c.get("/v1/batches/x/results", params={"start": "9223372036854775808"}),
                c.post("/v1/services/logged/v1/batches?paralel_count=1", content=b"x\n1\n"),
                c.post("/v1/services", data={"metadata": "{"}, files={"bundle": ("b", b"x")}),
                c.post("/api/logged/v1", content=b"{not json", headers=JSON),
                c.post("/api/logged/v1", json=_deep(900)),
                c.get("/v1/batches/nope"),
                httpx.get(f"{proc.url}/v1/batches"),
            ]
        assert all(400 <= a.status_code < 500 for a in answers), [a.status_code for a in answers]
    finally:
        proc.stop()
    assert proc.log is not None
    log = proc.log.read_text()
    assert "Traceback" not in log, log
