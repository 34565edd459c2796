"""Listing batches: filters, cursor paging that stays stable while batches are added, visibility,
and the SDK's lazy iterators over it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest

from batchserve import Batch, BatchState, Client, errors

from .conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.e2e


def triple(x: int) -> int:
    return 3 * x


def login(server, username: str, password: str) -> httpx.Client:  # type: ignore[no-untyped-def]
    token = httpx.post(
        f"{server.url}/login", json={"username": username, "password": password}
    ).json()["access_token"]
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def http(server):  # type: ignore[no-untyped-def]
    with login(server, "admin", ADMIN_PASSWORD) as c:
        yield c


def create(http: httpx.Client, name: str, *, start: bool = False, **params: str) -> str:
    """A batch of three records, made through the REST API (not started unless ``start``)."""
    resp = http.post(
        f"/v1/services/{name}/v1/batches",
        params={"start": "true" if start else "false", **params},
        content=b"x\n1\n2\n3\n",
        headers={"Content-Type": "text/csv"},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def pages(http: httpx.Client, path: str, **params: object) -> list[list[str]]:
    """The ids of every page of a listing, following next_cursor to the end."""
    out: list[list[str]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        body = http.get(path, params=query).raise_for_status().json()
        out.append([b["id"] for b in body["batches"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return out
        if len(out) > 100:
            pytest.fail("the listing never ended")


def flat(pages: list[list[str]]) -> list[str]:
    return [batch_id for page in pages for batch_id in page]


@pytest.fixture
def svc(client, unique_name):  # type: ignore[no-untyped-def]
    return client.publish_service(
        unique_name, code=triple, inputs={"x": int}, outputs={"y": int}, version="v1"
    )


def test_cursor_paging_gives_every_batch_once_newest_first(http, svc):  # type: ignore[no-untyped-def]
    made = [create(http, svc.name) for _ in range(7)]
    got = pages(http, f"/v1/services/{svc.name}/v1/batches", limit=3)
    assert [len(p) for p in got] == [3, 3, 1]
    assert flat(got) == list(reversed(made))
    # The global listing pages the same way, filtered to the service.
    assert flat(pages(http, "/v1/batches", service=svc.name, limit=2)) == list(reversed(made))


def test_a_page_that_ends_exactly_at_the_last_batch_has_no_next_cursor(http, svc):  # type: ignore[no-untyped-def]
    made = [create(http, svc.name) for _ in range(4)]
    got = pages(http, f"/v1/services/{svc.name}/v1/batches", limit=2)
    assert got == [list(reversed(made))[:2], list(reversed(made))[2:]]


def test_batches_added_while_paging_neither_repeat_nor_shift_the_pages(http, svc):  # type: ignore[no-untyped-def]
    made = [create(http, svc.name) for _ in range(5)]
    path = f"/v1/services/{svc.name}/v1/batches"
    first = http.get(path, params={"limit": 2}).json()
    added = create(http, svc.name)  # newer than the first page: it sorts before it
    rest = pages(http, path, limit=2, cursor=first["next_cursor"])
    seen = [b["id"] for b in first["batches"]] + flat(rest)
    assert seen == list(reversed(made))
    assert added not in seen
    assert pages(http, path, limit=100)[0][0] == added  # a fresh listing shows it first


def test_state_filter_takes_repeated_and_comma_separated_names(http, svc):  # type: ignore[no-untyped-def]
    created = create(http, svc.name)
    cancelled = create(http, svc.name)
    http.post(f"/v1/batches/{cancelled}/cancel").raise_for_status()
    done = create(http, svc.name, start=True)
    http.get(f"/v1/batches/{done}", params={"wait": 30}).raise_for_status()
    path = f"/v1/services/{svc.name}/v1/batches"

    def ids(**params: object) -> list[str]:
        return [b["id"] for b in http.get(path, params=params).raise_for_status().json()["batches"]]

    assert ids(state="created") == [created]
    assert ids(state="completed") == [done]
    assert ids(state="created,cancelled") == [cancelled, created]
    assert ids(state=["completed", "cancelled"]) == [done, cancelled]
    assert ids(state=" Completed , created ") == [done, created]
    assert ids(state="running") == []


@pytest.mark.parametrize("path", ["/v1/batches", "/v1/services/{name}/v1/batches"])
def test_an_unknown_state_is_a_400_that_lists_the_states(http, svc, path):  # type: ignore[no-untyped-def]
    resp = http.get(path.format(name=svc.name), params={"state": ["completed", "complete,done"]})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "bad_request"
    assert "'complete', 'done'" in error["message"]
    for state in BatchState:
        assert state.value in error["message"]
    assert error["details"]["unknown"] == ["complete", "done"]


def test_metadata_filters_must_all_match(http, svc):  # type: ignore[no-untyped-def]
    eu = create(http, svc.name, metadata='{"team": "risk", "region": "eu"}')
    us = create(http, svc.name, metadata='{"team": "risk", "region": "us", "url": "a:b"}')
    create(http, svc.name, metadata='{"team": "ops", "region": "eu"}')
    create(http, svc.name)
    path = f"/v1/services/{svc.name}/v1/batches"

    def ids(*pairs: str) -> list[str]:
        resp = http.get(path, params={"metadata": list(pairs)}).raise_for_status()
        return [b["id"] for b in resp.json()["batches"]]

    assert ids("team:risk") == [us, eu]
    assert ids("team:risk", "region:eu") == [eu]
    assert ids("url:a:b") == [us]  # the value is everything after the first colon
    assert ids("team:nobody") == []
    listed = http.get(path, params={"metadata": "region:eu", "limit": 1}).json()
    assert listed["batches"][0]["metadata"] == {"team": "ops", "region": "eu"}
    assert listed["next_cursor"] is not None


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"metadata": "team"}, 400, "key:value"),
        ({"metadata": ":risk"}, 400, "key:value"),
        ({"metadata": ["team:a", "team:b"]}, 400, "twice"),
        ({"cursor": "not-a-cursor"}, 400, "next_cursor"),
        ({"cursor": "W10"}, 400, "next_cursor"),  # base64 of "[]"
        ({"limit": 1001}, 422, "limit"),
        ({"limit": 0}, 422, "limit"),
        ({"created_after": "yesterday"}, 422, "created_after"),
        ({"version": "v1"}, 400, "service="),
    ],
)
def test_bad_listing_parameters_are_clear_4xx_errors(http, params, status, words):  # type: ignore[no-untyped-def]
    resp = http.get("/v1/batches", params=params)
    assert resp.status_code == status, resp.text
    assert words in str(resp.json()["error"])


def test_created_after_and_before_bound_the_listing(http, svc):  # type: ignore[no-untyped-def]
    old = create(http, svc.name)
    time.sleep(0.01)
    cut = datetime.now(UTC)
    time.sleep(0.01)
    new = create(http, svc.name)
    path = f"/v1/services/{svc.name}/v1/batches"
    after = http.get(path, params={"created_after": cut.isoformat()}).json()["batches"]
    before = http.get(path, params={"created_before": cut.isoformat()}).json()["batches"]
    assert [b["id"] for b in after] == [new]
    assert [b["id"] for b in before] == [old]
    # A time without a zone is UTC, the zone the batches' times are given in.
    naive = cut.replace(tzinfo=None).isoformat()
    assert [b["id"] for b in http.get(path, params={"created_after": naive}).json()["batches"]] == [
        new
    ]


def test_users_see_their_own_batches_and_owners_see_all(server, http, svc, unique_name):  # type: ignore[no-untyped-def]
    for who in ("ann", "bob"):
        http.post(
            "/v1/users",
            json={
                "username": f"{who}{unique_name}",
                "password": "pw-123456",
                "role": "contributor",
            },
        ).raise_for_status()
    mine = create(http, svc.name)
    with (
        login(server, f"ann{unique_name}", "pw-123456") as ann,
        login(server, f"bob{unique_name}", "pw-123456") as bob,
    ):
        anns = create(ann, svc.name)
        path = f"/v1/services/{svc.name}/v1/batches"
        assert flat(pages(ann, path)) == [anns]
        assert flat(pages(bob, path)) == []
        assert flat(pages(ann, "/v1/batches", limit=1)) == [anns]
        listed = http.get(path).json()["batches"]
    assert [b["id"] for b in listed] == [anns, mine]
    assert [b["created_by"] for b in listed] == [f"ann{unique_name}", "admin"]


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)


def test_the_sdk_iterates_lazily_page_by_page_with_filters(server, http, svc):  # type: ignore[no-untyped-def]
    tagged = [create(http, svc.name, metadata=f'{{"run": "{svc.name}"}}') for _ in range(5)]
    create(http, svc.name)  # untagged
    transport = CountingTransport()
    with Client(
        server.url, username="admin", password=ADMIN_PASSWORD, transport=transport
    ) as client:
        listing = client.list_batches(metadata={"run": svc.name}, state=["created"], page_size=2)
        assert not [p for p in transport.paths if p == "/v1/batches"]  # nothing read yet
        first = next(listing)
        assert isinstance(first, Batch)
        assert first.execution_id == tagged[-1]
        assert first.service.name == svc.name and first.service.outputs == {"y": "int"}
        assert transport.paths.count("/v1/batches") == 1
        rest = list(listing)
        assert [first.execution_id] + [b.execution_id for b in rest] == list(reversed(tagged))
        assert transport.paths.count("/v1/batches") == 3  # pages of 2, 2 and 1
        # Listed batches are usable batches: start one and read its results.
        result = rest[-1].start().wait(timeout=60)
        assert result.state is BatchState.COMPLETED
        assert list(result.to_pandas()["y"]) == [3, 6, 9]

        same = client.get_service(svc.name, "v1")
        by_service = list(same.list_batches(metadata={"run": svc.name}, page_size=1000))
        assert [b.execution_id for b in by_service] == list(reversed(tagged))
        completed = list(same.list_batches(state=BatchState.COMPLETED))
        assert [b.execution_id for b in completed] == [tagged[0]]
        assert same.list_batch_executions()[: len(tagged) + 1][1:] == list(reversed(tagged))


def test_the_sdk_checks_listing_arguments_before_sending(client):  # type: ignore[no-untyped-def]
    with pytest.raises(errors.UsageError, match="page_size"):
        next(client.list_batches(page_size=5000))
    with pytest.raises(errors.UsageError, match="service="):
        next(client.list_batches(version="v1"))
    with pytest.raises(errors.BadRequestError, match="'finished'"):
        next(client.list_batches(state="finished"))


def test_the_sdk_lists_every_batch_past_one_page(client, http, svc):  # type: ignore[no-untyped-def]
    made = [create(http, svc.name) for _ in range(3)]
    listed = [b.execution_id for b in client.list_batches(service=svc.name, page_size=1)]
    assert listed == list(reversed(made))
