"""Integrity of services and fair use of workers, against a real server: a service name belongs
to its first publisher, deleting a service never silently takes other users' batches, only owners
set high priorities, users at one priority take turns on the workers, and a batch's environment
is checked before any record runs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from batchserve import Client, errors

from .cli_helpers import Cli
from .conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.e2e

PASSWORD = "pw-integrity-123456"


def double(x: float) -> float:
    return 2 * x


def stamp(x: float) -> float:
    """When the record started (the worker's clock), after which it naps a moment."""
    import time

    started = time.time()
    time.sleep(0.25)
    return started


@pytest.fixture
def admin_http(server) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    token = httpx.post(
        f"{server.url}/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).json()["access_token"]
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as http:
        yield http


@pytest.fixture
def user(server, admin_http, unique_name) -> Iterator[Callable[[str, str], Client]]:  # type: ignore[no-untyped-def]
    """``user(label, role)``: a new user of that role, created by the admin, logged in."""
    clients: list[Client] = []

    def make(label: str, role: str) -> Client:
        username = f"{label}{unique_name}"
        resp = admin_http.post(
            "/v1/users", json={"username": username, "password": PASSWORD, "role": role}
        )
        assert resp.status_code == 201, resp.text
        client = Client(server.url, username=username, password=PASSWORD)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def publish(client: Client, name: str, version: str, code=double):  # type: ignore[no-untyped-def]
    return client.publish_service(
        name, code=code, inputs={"x": float}, outputs={"y": float}, version=version
    )


def username(client: Client) -> str:
    return str(client.whoami()["username"])


# --- a service name belongs to its first publisher ----------------------------------------------


def test_only_a_names_first_publisher_adds_versions_to_it(client, user, unique_name):  # type: ignore[no-untyped-def]
    ann, bob = user("ann", "contributor"), user("bob", "contributor")
    publish(ann, unique_name, "v1")
    with pytest.raises(errors.PermissionDeniedError) as refused:
        publish(bob, unique_name, "v9")
    assert refused.value.status_code == 403
    assert repr(username(ann)) in refused.value.message
    assert "grant" in refused.value.message
    assert refused.value.details["owner"] == username(ann)
    # "latest" is still the publisher's code.
    latest = client.get_service(unique_name)
    assert (latest.version, latest.published_by) == ("v1", username(ann))
    # The name's owner publishes on; so does an owner, without a grant.
    publish(ann, unique_name, "v2")
    publish(client, unique_name, "v3")
    assert [s.version for s in client.list_services(unique_name)] == ["v1", "v2", "v3"]
    assert client.service_publishers(unique_name) == {
        "name": unique_name,
        "owner": username(ann),
        "granted": [],
    }


def test_the_names_owner_grants_and_revokes_publishing_under_it(server, client, user, unique_name):  # type: ignore[no-untyped-def]
    ann, bob, cy = (user(n, "contributor") for n in ("ann", "bob", "cy"))
    reader = user("rita", "reader")
    publish(ann, unique_name, "v1")
    granted = ann.grant_publisher(unique_name, username(bob))
    assert granted["owner"] == username(ann)
    assert [(g["username"], g["granted_by"]) for g in granted["granted"]] == [
        (username(bob), username(ann))
    ]
    assert ann.grant_publisher(unique_name, username(bob)) == granted  # granting again: no change
    publish(bob, unique_name, "v2")
    assert client.get_service(unique_name).published_by == username(bob)
    # A grantee may publish, not grant; nor may a reader; and a reader cannot be granted.
    for other in (bob, reader, cy):
        with pytest.raises(errors.PermissionDeniedError, match="only the name's owner"):
            other.grant_publisher(unique_name, username(cy))
    with pytest.raises(errors.BadRequestError, match="reader"):
        ann.grant_publisher(unique_name, username(reader))
    with pytest.raises(errors.NotFoundError, match="no-such-user"):
        ann.grant_publisher(unique_name, "no-such-user")
    with pytest.raises(errors.NotFoundError):
        ann.grant_publisher(f"{unique_name}-never-published", username(bob))
    # An owner grants any name too.
    client.grant_publisher(unique_name, username(cy))
    publish(cy, unique_name, "v3")
    revoked = ann.revoke_publisher(unique_name, username(bob))
    assert [g["username"] for g in revoked["granted"]] == [username(cy)]
    with pytest.raises(errors.PermissionDeniedError):
        publish(bob, unique_name, "v4")
    with pytest.raises(errors.NotFoundError, match="was not granted"):
        ann.revoke_publisher(unique_name, username(bob))
    with pytest.raises(errors.BadRequestError, match="owns the service name"):
        client.revoke_publisher(unique_name, username(ann))
    # What bob published stays, but he may no longer put new code behind it; the name's owner
    # may delete it.
    redeploy = httpx.patch(
        f"{server.url}/services/{unique_name}/v2",
        json={"code": "y = 0"},
        headers={"Authorization": f"Bearer {bob.token}"},
        timeout=60,
    )
    assert redeploy.status_code == 403, redeploy.text
    assert "may no longer change" in redeploy.json()["message"]
    ann.delete_service(unique_name, "v2")
    with pytest.raises(errors.PermissionDeniedError, match="only its publisher or an owner"):
        cy.delete_service(unique_name, "v1")


def test_the_command_line_shows_grants_and_revokes_publishers(server, user, unique_name, tmp_path):  # type: ignore[no-untyped-def]
    ann, bob = user("ann", "contributor"), user("bob", "contributor")
    publish(ann, unique_name, "v1")
    cli = Cli(tmp_path / "config.json", tmp_path)
    cli("login", server.url, "--username", username(ann), "--password", PASSWORD)
    shown = json.loads(cli("services", "grant", unique_name, username(bob), "--json").stdout)
    assert shown["owner"] == username(ann)
    assert [g["username"] for g in shown["granted"]] == [username(bob)]
    listed = cli("services", "publishers", unique_name).stdout
    assert f"{unique_name} belongs to {username(ann)}." in listed
    assert username(bob) in listed
    cli("services", "revoke", unique_name, username(bob))
    assert client_names(bob.service_publishers(unique_name)) == []
    refused = cli.error("services", "delete", f"{unique_name}:v1", "--force")
    assert "only owners may force" in refused


def client_names(found: dict[str, Any]) -> list[str]:
    return [g["username"] for g in found["granted"]]


def test_publishers_is_not_a_version(client, unique_name):  # type: ignore[no-untyped-def]
    with pytest.raises(errors.BadRequestError, match="reserved"):
        publish(client, unique_name, "publishers")


def test_the_ml_server_face_keeps_a_name_to_its_first_publisher(server, user, unique_name):  # type: ignore[no-untyped-def]
    ann, bob = user("ann", "contributor"), user("bob", "contributor")
    publish(ann, unique_name, "v1")
    body = {
        "code": "y = 0",
        "inputParameterDefinitions": [{"name": "x", "type": "numeric"}],
        "outputParameterDefinitions": [{"name": "y", "type": "numeric"}],
    }
    headers = {"Authorization": f"Bearer {bob.token}"}
    for path in (f"/services/{unique_name}/v9", f"/services/{unique_name}"):
        resp = httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60)
        assert resp.status_code == 403, resp.text
        assert resp.json()["code"] == "Forbidden"
        assert repr(username(ann)) in resp.json()["message"]
    assert [s.version for s in ann.list_services(unique_name)] == ["v1"]
    ann.grant_publisher(unique_name, username(bob))
    resp = httpx.post(
        f"{server.url}/services/{unique_name}/v9", json=body, headers=headers, timeout=60
    )
    assert resp.status_code == 201, resp.text


# --- deleting a service never silently deletes other users' batches ----------------------------


def test_deleting_a_service_with_other_users_batches_is_refused_unless_an_owner_forces_it(
    client, user, unique_name
):  # type: ignore[no-untyped-def]
    ann, rita = user("ann", "contributor"), user("rita", "reader")
    publish(ann, unique_name, "v1")
    theirs = [rita.get_service(unique_name, "v1").batch({"x": [1.0, 2.0]}).start() for _ in "ab"]
    for batch in theirs:
        batch.wait(timeout=120)
    mine = ann.get_service(unique_name, "v1").batch({"x": [3.0]}).start()
    mine.wait(timeout=120)
    with pytest.raises(errors.ConflictError) as refused:
        ann.delete_service(unique_name, "v1")
    assert refused.value.status_code == 409
    assert f"2 batches of other users ({username(rita)}: 2)" in refused.value.message
    assert "force=true" in refused.value.message
    assert refused.value.details["batches"] == {username(rita): 2}
    # Nothing was deleted: the reader's results are still there.
    assert theirs[0].results().to_pandas()["y"].tolist() == [2.0, 4.0]
    with pytest.raises(errors.PermissionDeniedError, match="only owners may force"):
        ann.delete_service(unique_name, "v1", force=True)
    # An owner is refused too (the batches are neither theirs), unless it forces.
    with pytest.raises(errors.ConflictError, match=r"3 batches of other users"):
        client.delete_service(unique_name, "v1")
    client.delete_service(unique_name, "v1", force=True)
    with pytest.raises(errors.NotFoundError):
        rita.get_service(unique_name, "v1")
    with pytest.raises(errors.NotFoundError):
        theirs[0].info()


def test_a_publisher_deletes_a_service_that_only_it_ran(user, unique_name):  # type: ignore[no-untyped-def]
    ann = user("ann", "contributor")
    svc = publish(ann, unique_name, "v1")
    svc.batch({"x": [1.0]}).start().wait(timeout=120)
    ann.delete_service(unique_name, "v1")
    assert ann.list_services(unique_name) == []


# --- priority -----------------------------------------------------------------------------------


def test_only_owners_set_a_priority_above_the_ceiling(client, user, unique_name):  # type: ignore[no-untyped-def]
    ann = user("ann", "contributor")
    svc = publish(ann, unique_name, "v1", code=stamp)
    with pytest.raises(errors.PermissionDeniedError) as refused:
        svc.batch({"x": [1.0]}, priority=1000).start()
    assert refused.value.status_code == 403
    assert "above 0, the highest that a contributor may set" in refused.value.message
    assert refused.value.details["max_user_priority"] == 0
    assert list(ann.list_batches(service=unique_name)) == []
    # At or below the ceiling: allowed, on create and on update.
    batch = svc.batch({"x": [1.0] * 40}, chunk_size=1, priority=-5).start()
    batch.disable()
    with pytest.raises(errors.PermissionDeniedError, match="only owners set higher"):
        batch.update(priority=1)
    batch.update(priority=0)
    assert batch.refresh().data["priority"] == 0
    # An owner may use the whole range, on its own batches and on others'.
    client.get_service(unique_name, "v1")  # the owner sees the batch too
    theirs = next(b for b in client.list_batches(service=unique_name))
    theirs.update(priority=900)
    assert batch.refresh().data["priority"] == 900
    batch.cancel()
    high = client.get_service(unique_name, "v1").batch({"x": [1.0]}, priority=1000).start()
    assert high.refresh().data["priority"] == 1000
    high.wait(timeout=120)


def test_workers_take_turns_between_two_users_at_the_same_priority(client, user, unique_name):  # type: ignore[no-untyped-def]
    ann, bob = user("ann", "contributor"), user("bob", "reader")
    svc = publish(ann, unique_name, "v1", code=stamp)
    # An owner's batch holds the workers while both users' batches are created, then steps back.
    blocker = client.get_service(unique_name, "v1").batch(
        {"x": [0.0] * 200}, chunk_size=1, priority=10
    )
    blocker.start()
    first = svc.batch({"x": [1.0] * 16}, chunk_size=1).start()
    second = bob.get_service(unique_name, "v1").batch({"x": [2.0] * 4}, chunk_size=1).start()
    blocker.update(priority=-10)
    try:
        starts = sorted(
            [(t, "ann") for t in first.wait(timeout=180).to_pandas()["y"]]
            + [(t, "bob") for t in second.wait(timeout=180).to_pandas()["y"]]
        )
    finally:
        blocker.cancel()
    order = [who for _, who in starts]
    # The older batch does not take the workers until it is done: the other user's records
    # start a turn each (ideally 2nd, 4th, 6th and 8th; a worker that frees up a moment before
    # the scheduler hears of it may give a turn away), and are all done long before the older
    # batch. First come first, they would be 17th to 20th.
    bobs = [i for i, who in enumerate(order) if who == "bob"]
    assert bobs[0] <= 2 and bobs[-1] <= 10, " ".join(order)
    assert order[bobs[-1] :].count("ann") >= 8, " ".join(order)


# --- environment --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"A=B": "1"}, "'A=B' is not valid"),
        ({"": "1"}, "'' is not valid"),
        ({"1ST": "1"}, "'1ST' is not valid"),
        ({"WITH SPACE": "1"}, "'WITH SPACE' is not valid"),
        ({"NUL": "a\x00b"}, "NUL character"),
        ({f"V{i}": "1" for i in range(101)}, "at most 100"),
    ],
)
def test_an_environment_that_cannot_be_set_is_a_400(user, unique_name, environment, message):  # type: ignore[no-untyped-def]
    ann = user("ann", "contributor")
    svc = publish(ann, unique_name, "v1")
    with pytest.raises(errors.BadRequestError) as refused:
        svc.batch({"x": [1.0]}, environment=environment).start()
    assert refused.value.status_code == 400
    assert message in refused.value.message
    assert [b.execution_id for b in ann.list_batches(service=unique_name)] == []


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("LD_PRELOAD", "dynamic loader"),
        ("LD_LIBRARY_PATH", "dynamic loader"),
        ("ld_audit", "dynamic loader"),
        ("PYTHONPATH", "Python interpreter"),
        ("PYTHONSTARTUP", "Python interpreter"),
        ("PYTHONHOME", "Python interpreter"),
        ("BASH_ENV", "shells"),
        ("BATCHSERVE_ADMIN_PASSWORD", "server's own configuration"),
    ],
)
def test_variables_that_change_what_code_runs_are_refused_to_non_owners(
    user, unique_name, name, why
):  # type: ignore[no-untyped-def]
    rita = user("rita", "reader")
    publish(user("ann", "contributor"), unique_name, "v1")
    svc = rita.get_service(unique_name, "v1")
    with pytest.raises(errors.PermissionDeniedError) as refused:
        svc.batch({"x": [1.0]}, environment={name: "/tmp/x"}).start()
    assert refused.value.status_code == 403
    assert f"The environment variable {name} may not be set: it " in refused.value.message
    assert why in refused.value.message
    assert "Only owners may set it" in refused.value.message


def test_an_owner_may_set_a_refused_variable_and_anyone_a_harmless_one(client, user, unique_name):  # type: ignore[no-untyped-def]
    ann = user("ann", "contributor")
    svc = publish(ann, unique_name, "v1")
    mine = svc.batch({"x": [1.0]}, environment={"PYTHONUNBUFFERED": "1", "MODE_X": "a=b"})
    assert mine.start().wait(timeout=120).completed_item_count == 1
    owners = client.get_service(unique_name, "v1").batch(
        {"x": [1.0]}, environment={"PYTHONPATH": "/nonexistent"}
    )
    done = owners.start().wait(timeout=120)
    assert (done.completed_item_count, done.to_pandas()["y"].tolist()) == (1, [2.0])
