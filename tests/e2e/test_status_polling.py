"""Status polling and bearer tokens on a real server: answers follow the batch as it runs, many
concurrent pollers all get right answers, and token or role changes apply to the next request."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import ADMIN_PASSWORD

from batchserve.errors import NotFoundError
from batchserve.server.schemas import BatchPublic

pytestmark = pytest.mark.e2e


def nap(x: float) -> float:
    import time

    time.sleep(0.02)
    return x + 1.0


def login(url: str, username: str, password: str) -> tuple[httpx.Client, dict[str, Any]]:
    tokens = httpx.post(f"{url}/login", json={"username": username, "password": password})
    tokens.raise_for_status()
    body = tokens.json()
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    return httpx.Client(base_url=url, headers=headers, timeout=60), body


@pytest.fixture
def admin(server):  # type: ignore[no-untyped-def]
    http, _ = login(server.url, "admin", ADMIN_PASSWORD)
    with http:
        yield http


def add_user(admin: httpx.Client, name: str, role: str) -> None:
    admin.post(
        "/v1/users", json={"username": name, "password": "pw-123456", "role": role}
    ).raise_for_status()


def test_a_revoked_token_is_refused_on_the_request_right_after_it_was_used(
    server, admin, unique_name
):  # type: ignore[no-untyped-def]
    add_user(admin, unique_name, "reader")
    http, tokens = login(server.url, unique_name, "pw-123456")
    with http:
        for _ in range(3):  # used, and used again within the cache's lifetime
            assert http.get("/v1/me").status_code == 200
        revoked = httpx.delete(
            f"{server.url}/login/refreshToken", params={"refreshToken": tokens["refresh_token"]}
        )
        assert revoked.status_code == 204
        refused = http.get("/v1/me")
        assert refused.status_code == 401
        assert "log in again" in refused.json()["error"]["message"]


def test_a_changed_role_applies_to_the_next_request_of_a_token_in_use(server, admin, unique_name):  # type: ignore[no-untyped-def]
    add_user(admin, unique_name, "reader")
    http, _ = login(server.url, unique_name, "pw-123456")
    with http:
        assert http.get("/v1/me").json()["role"] == "reader"
        assert http.get("/v1/users").status_code == 403
        admin.put(
            f"/v1/users/{unique_name}/role", json={"username": unique_name, "role": "owner"}
        ).raise_for_status()
        assert http.get("/v1/me").json()["role"] == "owner"
        assert http.get("/v1/users").status_code == 200


def test_a_removed_users_token_in_use_is_refused_at_once(server, admin, unique_name):  # type: ignore[no-untyped-def]
    add_user(admin, unique_name, "reader")
    http, _ = login(server.url, unique_name, "pw-123456")
    with http:
        assert http.get("/v1/me").status_code == 200
        admin.delete(f"/v1/users/{unique_name}").raise_for_status()
        assert http.get("/v1/me").status_code == 401


@pytest.fixture
def running_batch(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=nap, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    batch = svc.batch({"x": [float(i) for i in range(200)]}, parallel_count=2).start()
    yield batch
    with contextlib.suppress(NotFoundError):  # deleted by the test
        if not batch.refresh().state.is_final:
            batch.cancel()


def test_the_status_of_a_running_batch_follows_its_progress(admin, running_batch):  # type: ignore[no-untyped-def]
    path = f"/v1/batches/{running_batch.execution_id}"
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while True:
        answer = admin.get(path)
        assert answer.status_code == 200
        body = BatchPublic.model_validate(answer.json())
        if not seen or body.completed_item_count != seen[-1]:
            seen.append(body.completed_item_count)
        if body.state == "completed":
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the batch did not complete; completed counts seen: {seen}")
        time.sleep(0.05)
    assert seen == sorted(seen)
    assert len(seen) >= 3, f"the status did not follow the batch, only {seen} were seen"
    assert seen[-1] == body.total_item_count == body.succeeded_item_count == 200
    assert body.statistics.succeeded_records == 200
    assert body.chunk_count >= 1
    assert body.created_by == "admin"


def test_thirty_two_concurrent_pollers_all_get_the_right_answer(server, running_batch, unique_name):  # type: ignore[no-untyped-def]
    batch_id = str(running_batch.execution_id)
    _, tokens = login(server.url, "admin", ADMIN_PASSWORD)

    async def poller() -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as http:
            answers = []
            for _ in range(10):
                response = await http.get(f"/v1/batches/{batch_id}")
                assert response.status_code == 200, response.text
                answers.append(response.json())
            return answers

    async def all_pollers() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(*(poller() for _ in range(32)))

    every = asyncio.run(all_pollers())
    assert len(every) == 32
    for answers in every:
        completed = [a["completed_item_count"] for a in answers]
        assert completed == sorted(completed)  # one client never sees the batch go back
        for a in answers:
            body = BatchPublic.model_validate(a)
            assert body.id == batch_id
            assert body.total_item_count == 200
            assert body.service.name == unique_name
            assert body.succeeded_item_count + body.failed_item_count == body.completed_item_count
            assert 0 <= body.completed_item_count <= 200


def test_a_batch_of_another_user_or_none_at_all_is_a_404(
    server, admin, client, unique_name, running_batch
):  # type: ignore[no-untyped-def]
    add_user(admin, unique_name, "contributor")
    other, _ = login(server.url, unique_name, "pw-123456")
    with other:
        theirs = other.get(f"/v1/batches/{running_batch.execution_id}")
        assert theirs.status_code == 404
        assert "not yours to see" in theirs.json()["error"]["message"]
        assert other.get("/v1/batches/no-such-batch").status_code == 404
    assert admin.get(f"/v1/batches/{running_batch.execution_id}").status_code == 200


def test_a_long_poll_answers_with_the_finished_batch(admin, running_batch):  # type: ignore[no-untyped-def]
    path = f"/v1/batches/{running_batch.execution_id}"
    deadline = time.monotonic() + 120
    while True:
        body = admin.get(path, params={"wait": 30}).json()
        if body["state"] == "completed":
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the batch did not complete; last state {body['state']}")
    assert body["completed_item_count"] == 200
    assert body["end_time"] is not None


def test_a_long_poll_answers_once_the_batch_is_cancelled_or_deleted(admin, running_batch):  # type: ignore[no-untyped-def]
    path = f"/v1/batches/{running_batch.execution_id}"
    answers: list[httpx.Response] = []

    def long_poll() -> None:
        answers.append(admin.get(path, params={"wait": 60}))

    waiting = threading.Thread(target=long_poll)
    waiting.start()
    running_batch.cancel()
    waiting.join(timeout=120)
    assert not waiting.is_alive(), "the long poll did not answer after the cancel"
    assert answers[0].json()["state"] == "cancelled"  # it holds on through 'cancelling'
    assert admin.get(path, params={"wait": 60}).json()["state"] == "cancelled"  # final: at once
    running_batch.delete()
    assert admin.get(path, params={"wait": 60}).status_code == 404
