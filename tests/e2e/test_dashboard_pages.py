"""The dashboard over plain HTTP, as a browser reads it: a real batch's results sorted by a column
over the whole batch, page after page, with records that have no value last; and a form too
large for the server refused with a page, not the API's JSON."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import httpx
import pytest

from batchserve import BatchState

from .conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = pytest.mark.e2e

N = 130  # three pages of 50


def scrambled(x: float) -> float:
    if int(x) % 40 == 7:
        raise ValueError(f"no value for {x}")
    return float((int(x) * 37) % N)


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as session:
        form = re.search(r'name="csrf_token" value="([^"]+)"', session.get("/ui/login").text)
        assert form is not None
        answer = session.post(
            "/ui/login",
            data={"csrf_token": form.group(1), "username": "admin", "password": ADMIN_PASSWORD},
        )
        assert answer.status_code == 303, answer.text
        yield session


def shown(http: httpx.Client, batch_id: str, **query: object) -> tuple[list[int], str]:
    page = http.get(f"/ui/batches/{batch_id}", params=query)
    assert page.status_code == 200, page.text
    return [int(i) for i in re.findall(r'<tr data-record="(\d+)">', page.text)], page.text


def test_results_sort_by_a_column_over_the_whole_batch(client, unique_name, http):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name, code=scrambled, inputs={"x": float}, outputs={"y": float}, version="v1"
    )
    batch = svc.batch([{"x": float(i)} for i in range(N)], chunk_size=20).start()
    assert batch.wait(timeout=120).state is BatchState.COMPLETED
    failed = [i for i in range(N) if i % 40 == 7]
    by_y = sorted((i for i in range(N) if i not in failed), key=lambda i: (i * 37) % N)

    pages = [shown(http, batch.execution_id, sort="output:y", start=s) for s in (0, 50, 100)]
    assert [i for ids, _ in pages for i in ids] == by_y + failed  # no value: last
    assert all("Sorted within this page only" not in text for _, text in pages)
    top, _ = shown(http, batch.execution_id, sort="output:y", desc=1, limit=5)
    assert top == by_y[::-1][:5]
    bottom, _ = shown(http, batch.execution_id, sort="output:y", desc=1, start=N - 5, limit=5)
    assert bottom == by_y[:1] + failed  # descending too, the records without a value come last
    newest, _ = shown(http, batch.execution_id, sort="index", desc=1, limit=3)
    assert newest == [N - 1, N - 2, N - 3]
    by_status, _ = shown(http, batch.execution_id, sort="status", limit=len(failed))
    assert by_status == failed  # "failed" orders before "succeeded"
    answer = http.get(f"/ui/batches/{batch.execution_id}", params={"sort": "output:nope"})
    assert answer.status_code == 400
    assert "cannot be sorted by 'output:nope'" in html.unescape(answer.text)


def test_a_form_too_large_is_refused_with_a_page(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as session:
        answer = session.post(
            "/ui/login",
            data={"csrf_token": "x", "username": "admin", "password": "p" * 100_000},
        )
    assert answer.status_code == 413
    assert answer.headers["content-type"].startswith("text/html")
    text = html.unescape(answer.text)
    assert "<h1>Too large</h1>" in text and "65536 bytes" in text, text



def test_a_change_of_role_is_confirmed_first_and_a_wrong_one_explained(  # type: ignore[no-untyped-def]
    server, client, unique_name, http
):
    name = f"u{unique_name[:20]}"
    added = httpx.post(
        f"{server.url}/v1/users",
        json={"username": name, "password": "a-long-password", "role": "reader"},
        headers={"Authorization": f"Bearer {client.token}"},
    )
    assert added.status_code == 201, added.text

    asked = http.get(f"/ui/users/{name}/confirm/role", params={"role": "contributor"})
    assert asked.status_code == 200, asked.text
    assert f"Change the role of {name}?" in html.unescape(asked.text)
    assert "is a <strong>reader</strong> now" in asked.text
    roles = {u["username"]: u["role"] for u in client_users(server, client)}
    assert roles[name] == "reader"  # asking changes nothing

    csrf = re.search(r'name="csrf_token" value="([^"]+)"', asked.text)
    assert csrf is not None
    done = http.post(
        f"/ui/users/{name}/role", data={"csrf_token": csrf.group(1), "role": "contributor"}
    )
    assert done.status_code == 303
    roles = {u["username"]: u["role"] for u in client_users(server, client)}
    assert roles[name] == "contributor"

    nobody = http.get("/ui/users/no-such-user/confirm/deactivate")
    assert nobody.status_code == 404 and "no-such-user" in nobody.text
    odd = http.get(f"/ui/users/{name}/confirm/promote")
    assert odd.status_code == 400 and "role and deactivate" in html.unescape(odd.text)
    no_role = http.get(f"/ui/users/{name}/confirm/role", params={"role": "king"})
    assert no_role.status_code == 400 and "owner, contributor, reader" in no_role.text
    assert "<html" in no_role.text.lower()  # a page, not JSON


def client_users(server, client):  # type: ignore[no-untyped-def]
    listed = httpx.get(
        f"{server.url}/v1/users", headers={"Authorization": f"Bearer {client.token}"}
    )
    assert listed.status_code == 200, listed.text
    return listed.json()
