"""The HTTP transport against a real server: no client can stall or exhaust it.

Bodies are refused before they are read (no token, over their limit, too many uploads at once),
clients that stop sending are cut off (headers and body read timeouts), uploads and consumes
cannot take the threads that health, log-in and status reads use, a stopping server does not
wait for stalled uploads, and every answer says ``nosniff``. The sockets here are raw: these
clients misbehave on purpose. Every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = pytest.mark.e2e

BODY_TIMEOUT = 4  # seconds, on the module's server
HEADER_TIMEOUT = 2
UPLOADS_PER_USER = 45
STALLED = 45  # connections that send a few bytes of a declared 100 MB body and stop

GUARDED_ENV = {
    "BATCHSERVE_BODY_TIMEOUT": str(BODY_TIMEOUT),
    "BATCHSERVE_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "BATCHSERVE_MAX_UPLOADS_PER_USER": str(UPLOADS_PER_USER),
    "BATCHSERVE_MAX_JSON_BYTES": str(64 * 1024),
    "BATCHSERVE_MAX_JSON_BATCH_BYTES": str(64 * 1024),
    "BATCHSERVE_MAX_BUNDLE_BYTES": str(512 * 1024),
    "BATCHSERVE_MAX_UPLOAD_BYTES": str(120 * 1024**2),
}


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ, which a ServerProcess passes on to the server it starts."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def double(x: int) -> int:
    return 2 * x


def publish_doubler(server: ServerProcess) -> None:
    from batchserve import Client

    with Client(server.url, username="admin", password=ADMIN_PASSWORD) as c:
        c.publish_service(
            "doubler", code=double, inputs={"x": int}, outputs={"y": int}, version="v"
        )


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of this module's own: short read timeouts and small body limits."""
    with environment(GUARDED_ENV):
        proc = ServerProcess(tmp_path_factory.mktemp("guarded") / "home").start()
    publish_doubler(proc)
    yield proc
    proc.stop()


def token(url: str, username: str = "admin", password: str = ADMIN_PASSWORD) -> str:
    answer = httpx.post(f"{url}/login", json={"username": username, "password": password})
    answer.raise_for_status()
    return str(answer.json()["access_token"])


@pytest.fixture(scope="module")
def admin_token(guarded: ServerProcess) -> str:
    return token(guarded.url)


# --- raw HTTP ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)  # type: ignore[no-any-return]


def send_head(
    server: ServerProcess,
    method: str,
    path: str,
    headers: dict[str, str],
    first_bytes: bytes = b"",
) -> socket.socket:
    """A connection that has sent a request's head and ``first_bytes`` of its body."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(head.encode() + b"\r\n" + first_bytes)
    return sock


def read_answer(sock: socket.socket, timeout: float = 15) -> Answer | None:
    """The answer on a connection (None if it closes without one), within ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                return None
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(body) < length:
            piece = sock.recv(65536)
            if not piece:
                break
            body += piece
    except ConnectionResetError:
        return None
    return Answer(int(lines[0].split()[1]), headers, body)


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes the connection within ``timeout`` seconds (answers that
    come before are read and dropped)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def ask(
    server: ServerProcess,
    method: str,
    path: str,
    headers: dict[str, str],
    first_bytes: bytes = b"",
) -> Answer:
    with send_head(server, method, path, headers, first_bytes) as sock:
        answer = read_answer(sock)
    assert answer is not None, f"{method} {path}: the connection closed without an answer"
    return answer


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def log_of(server: ServerProcess) -> str:
    assert server.log is not None
    return server.log.read_text()


# --- bodies are refused before they are read ------------------------------------------------------


def test_an_anonymous_publish_is_refused_before_its_400_mb_are_sent(guarded):  # type: ignore[no-untyped-def]
    answer = ask(
        guarded,
        "POST",
        "/v1/services",
        {
            "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": str(400 * 1024**2),
        },
        b"--b\r\n",
    )
    assert answer.status == 401
    assert answer.headers["connection"] == "close"
    assert "POST /login" in answer.json()["error"]["message"]


def test_a_reader_is_refused_a_publish_before_its_bundle_is_sent(guarded, admin_token):  # type: ignore[no-untyped-def]
    httpx.post(
        f"{guarded.url}/v1/users",
        json={"username": "bundlereader", "password": "reader-password-1", "role": "reader"},
        headers=bearer(admin_token),
    ).raise_for_status()
    reader = token(guarded.url, "bundlereader", "reader-password-1")
    answer = ask(
        guarded,
        "POST",
        "/v1/services",
        {
            **bearer(reader),
            "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": str(100 * 1024**2),
        },
        b"--b\r\n",
    )
    assert answer.status == 403
    assert "contributor" in answer.json()["error"]["message"]


JSON = "application/json"
MULTIPART = "multipart/form-data; boundary=b"


@pytest.mark.parametrize(
    ("path", "content_type", "setting"),
    [
        ("/login", JSON, "BATCHSERVE_MAX_LOGIN_BYTES"),
        ("/login/refreshToken", JSON, "BATCHSERVE_MAX_LOGIN_BYTES"),
        ("/v1/services/doubler/v/consume", JSON, "BATCHSERVE_MAX_JSON_BYTES"),
        ("/v1/services", MULTIPART, "BATCHSERVE_MAX_BUNDLE_BYTES"),
        ("/v1/services/doubler/v/batches", "text/csv", "BATCHSERVE_MAX_UPLOAD_BYTES"),
    ],
)
def test_a_declared_150_mb_body_is_refused_at_once_naming_the_limit(  # type: ignore[no-untyped-def]
    guarded, admin_token, path, content_type, setting
):
    answer = ask(
        guarded,
        "POST",
        path,
        {
            **bearer(admin_token),
            "Content-Type": content_type,
            "Content-Length": str(150 * 1024**2),
        },
        b"{",
    )
    assert answer.status == 413
    error = answer.json()["error"]
    assert error["code"] == "payload_too_large"
    assert setting in error["message"]
    assert error["details"]["limit"] < 150 * 1024**2
    assert answer.headers["connection"] == "close"


def test_a_body_without_a_length_is_cut_off_once_it_passes_the_limit(guarded, admin_token):  # type: ignore[no-untyped-def]
    # 1 MiB of JSON, sent chunked: the server cannot know its size before it counts it.
    piece = b'{"inputs": {"x": "' + b"a" * (1024 * 1024) + b'"}}'
    chunked = f"{len(piece):x}\r\n".encode() + piece + b"\r\n0\r\n\r\n"
    for path in ("/login", "/v1/services/doubler/v/consume"):
        answer = ask(
            guarded,
            "POST",
            path,
            {
                **bearer(admin_token),
                "Content-Type": "application/json",
                "Transfer-Encoding": "chunked",
            },
            chunked,
        )
        assert answer.status == 413, path
        assert answer.json()["error"]["code"] == "payload_too_large"


def test_the_ml_server_face_refuses_large_bodies_in_its_own_error_shape(guarded, admin_token):  # type: ignore[no-untyped-def]
    for path in (
        "/api/doubler/v",
        "/api/doubler/v/batch",
        "/services/anything/1",
        "/sessions/" + "0" * 32 + "/workspace/model",
    ):
        answer = ask(
            guarded,
            "POST",
            path,
            {**bearer(admin_token), "Content-Type": "application/json", "Content-Length": "9" * 9},
        )
        assert answer.status == 413, path
        body = answer.json()
        assert body["code"] == "PayloadTooLarge", path
        assert "BATCHSERVE_MAX_" in body["message"]
    anonymous = ask(guarded, "POST", "/api/doubler/v", {"Content-Length": "9" * 9})
    assert anonymous.status == 401
    assert anonymous.json()["code"] == "Unauthorized"


def test_a_too_large_bundle_sent_whole_is_refused_with_what_to_do(guarded, admin_token):  # type: ignore[no-untyped-def]
    meta = {"name": "toolarge", "version": "1", "inputs": {}, "outputs": {}}
    answer = httpx.post(
        f"{guarded.url}/v1/services",
        headers=bearer(admin_token),
        data={"metadata": json.dumps(meta)},
        files={"bundle": ("bundle", b"\0" * (600 * 1024))},
        timeout=30,
    )
    assert answer.status_code == 413
    assert "BATCHSERVE_MAX_BUNDLE_BYTES" in answer.json()["error"]["message"]


def test_every_route_that_takes_a_body_refuses_one_over_its_limit(guarded, admin_token):  # type: ignore[no-untyped-def]
    """Every mutating operation of the OpenAPI document, sent a declared terabyte: 413 from
    each that reads a body, a 4xx without reading it from the others, 401 to anonymous callers
    of routes that need a token; never a 5xx, never a wait for the body."""
    doc = httpx.get(f"{guarded.url}/openapi.json").json()
    values = {"name": "doubler", "version": "v", "index": "0", "session_id": "0" * 32}
    checked = 0
    for path, operations in doc["paths"].items():
        concrete = re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "x"), path)
        for method, operation in operations.items():
            if method not in ("post", "put", "patch"):
                continue
            content_type = next(iter(operation.get("requestBody", {}).get("content", {JSON: 0})))
            if content_type.startswith("multipart/"):
                content_type = MULTIPART
            declared = {"Content-Type": content_type, "Content-Length": str(1024**4)}
            who = f"{method.upper()} {path}"
            answer = ask(guarded, method.upper(), concrete, {**bearer(admin_token), **declared})
            if "requestBody" in operation:
                assert answer.status == 413, who
            else:
                assert 400 <= answer.status < 500, who
            anonymous = ask(guarded, method.upper(), concrete, declared)
            if operation.get("security"):
                assert anonymous.status == 401, who
            else:
                assert anonymous.status in (404, 413), who
            checked += 1
    assert checked > 20
    assert "Traceback" not in log_of(guarded)


# --- clients that stop sending ------------------------------------------------------------------


def test_stalled_uploads_hold_no_thread_that_health_login_and_status_need(guarded, admin_token):  # type: ignore[no-untyped-def]
    client = httpx.Client(base_url=guarded.url, headers=bearer(admin_token), timeout=10)
    created = client.post(
        "/v1/services/doubler/v/batches",
        content=b"x\n1\n2\n",
        headers={"Content-Type": "text/csv"},
    )
    assert created.status_code == 201
    batch_id = created.json()["id"]
    upload = {
        **bearer(admin_token),
        "Content-Type": "text/csv",
        "Content-Length": str(100 * 1024**2),
    }
    stalled = [
        send_head(guarded, "POST", "/v1/services/doubler/v/batches", upload, b"x\n1")
        for _ in range(STALLED)
    ]
    try:
        time.sleep(1)
        # The user's uploads in progress are at the cap: the next one is refused at once.
        one_more = ask(guarded, "POST", "/v1/services/doubler/v/batches", upload, b"x\n")
        assert one_more.status == 429
        assert int(one_more.headers["retry-after"]) > 0
        assert "BATCHSERVE_MAX_UPLOADS_PER_USER" in one_more.json()["error"]["message"]
        # ...while health, log-in and status reads answer as usual.
        assert httpx.get(f"{guarded.url}/health", timeout=5).status_code == 200
        assert token(guarded.url)
        assert client.get(f"/v1/batches/{batch_id}", timeout=5).status_code == 200
        assert client.get("/v1/batches", timeout=5).status_code == 200
        # Past the body timeout every stalled upload is answered 408 and closed.
        answers = [read_answer(sock, timeout=BODY_TIMEOUT + 20) for sock in stalled]
        assert [a.status if a else None for a in answers] == [408] * STALLED
        assert "BATCHSERVE_BODY_TIMEOUT" in answers[0].json()["error"]["message"]  # type: ignore[union-attr]
        assert all(closed_within(sock, 10) for sock in stalled)
    finally:
        for sock in stalled:
            sock.close()
    # Their upload slots are free again.
    again = client.post(
        "/v1/services/doubler/v/batches", content=b"x\n3\n", headers={"Content-Type": "text/csv"}
    )
    assert again.status_code == 201
    client.close()
    assert "Traceback" not in log_of(guarded)


def test_a_body_sent_slowly_but_steadily_is_not_cut_off(guarded, admin_token):  # type: ignore[no-untyped-def]
    rows = b"".join(b"%d\n" % i for i in range(400))
    pieces = [b"x\n" + rows[:400], rows[400:800], rows[800:1200], rows[1200:]]
    body = b"".join(pieces)
    headers = {**bearer(admin_token), "Content-Type": "text/csv", "Content-Length": str(len(body))}
    with send_head(guarded, "POST", "/v1/services/doubler/v/batches", headers) as sock:
        # Longer in all than the body timeout, never silent for as long as it.
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(BODY_TIMEOUT * 0.4)
        answer = read_answer(sock)
    assert answer is not None
    assert answer.status == 201, answer.body
    assert answer.json()["total_item_count"] == 400


def test_a_consume_whose_body_stops_is_answered_408_and_closed(guarded, admin_token):  # type: ignore[no-untyped-def]
    headers = {**bearer(admin_token), "Content-Type": "application/json", "Content-Length": "200"}
    with send_head(guarded, "POST", "/api/doubler/v", headers, b'{"x": ') as sock:
        answer = read_answer(sock, timeout=BODY_TIMEOUT + 20)
        assert answer is not None
        assert answer.status == 408
        assert answer.json()["error"]["code"] == "request_timeout"
        assert closed_within(sock, 10)


def test_headers_sent_too_slowly_are_answered_408_and_closed(guarded):  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        for _ in range(HEADER_TIMEOUT * 4):  # a byte now and then does not restart the clock
            time.sleep(0.5)
            with contextlib.suppress(OSError):
                sock.sendall(b"a")
        answer = read_answer(sock, timeout=HEADER_TIMEOUT + 20)
    assert answer is not None
    assert answer.status == 408
    assert "BATCHSERVE_HEADER_TIMEOUT" in answer.json()["error"]["message"]


def test_a_connection_that_never_asks_anything_is_closed(guarded):  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=30) as sock:
        assert closed_within(sock, HEADER_TIMEOUT + 20)


def test_a_kept_alive_connection_may_wait_between_requests_longer_than_the_header_timeout(  # type: ignore[no-untyped-def]
    guarded,
):
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=30) as sock:
        for _ in range(2):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = read_answer(sock)
            assert answer is not None
            assert answer.status == 200
            time.sleep(HEADER_TIMEOUT + 1)  # uvicorn's keep-alive timeout (5 s) is longer


def test_a_stopping_server_answers_503_to_what_it_cannot_wait_for(fresh_server):  # type: ignore[no-untyped-def]
    """Stalled uploads and a long poll do not hold the exit: past the shutdown timeout each is
    answered 503, and the log has no traceback."""
    with environment({"BATCHSERVE_SHUTDOWN_TIMEOUT": "2", "BATCHSERVE_BODY_TIMEOUT": "600"}):
        fresh_server.start()
    publish_doubler(fresh_server)
    admin = bearer(token(fresh_server.url))
    created = httpx.post(
        f"{fresh_server.url}/v1/services/doubler/v/batches?start=false",
        content=b"x\n1\n",
        headers={**admin, "Content-Type": "text/csv"},
    )
    assert created.status_code == 201
    # A long poll of a batch that will not end: it would wait 60 s.
    poll = send_head(fresh_server, "GET", f"/v1/batches/{created.json()['id']}?wait=60", admin)
    upload = {**admin, "Content-Type": "text/csv", "Content-Length": str(100 * 1024**2)}
    stalled = [
        send_head(fresh_server, "POST", "/v1/services/doubler/v/batches", upload, b"x\n1")
        for _ in range(3)
    ]
    time.sleep(1)
    assert fresh_server.process is not None
    fresh_server.process.terminate()
    fresh_server.process.wait(timeout=60)  # without the bound, until the body timeout (600 s)
    answers = [read_answer(sock, timeout=5) for sock in [*stalled, poll]]
    assert [a.status if a else None for a in answers] == [503] * 4
    for sock in [*stalled, poll]:
        sock.close()
    assert "Traceback" not in log_of(fresh_server)


# --- headers and the docs -----------------------------------------------------------------------


def test_every_answer_says_nosniff(guarded):  # type: ignore[no-untyped-def]
    answers = [
        httpx.get(f"{guarded.url}/health"),
        httpx.get(f"{guarded.url}/v1/batches"),  # 401
        httpx.get(f"{guarded.url}/no/such/route"),  # 404
        httpx.get(f"{guarded.url}/docs"),
        httpx.get(f"{guarded.url}/openapi.json"),
        httpx.post(f"{guarded.url}/login", json={"username": "nobody", "password": "wrong-1234"}),
    ]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff", answer.url


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_load_their_scripts_and_styles_from_the_server_itself(guarded, page):  # type: ignore[no-untyped-def]
    html = httpx.get(f"{guarded.url}{page}").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets
    assert all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    assert "http://" not in html and "https://" not in html
    for asset in assets:
        answer = httpx.get(f"{guarded.url}{asset}")
        assert answer.status_code == 200, asset
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_the_server_log_has_no_traceback(guarded):  # type: ignore[no-untyped-def]
    assert Path(str(guarded.log)).exists()
    assert "Traceback" not in log_of(guarded)
