"""Who may call which route: every route and method of the server's OpenAPI document, called
anonymously and as a reader, a contributor and an owner, against the one table below.

A route missing from the table fails the test, so a new route cannot ship without someone
saying who may call it. Routes whose role check comes after the request's body is read get a
body valid enough to reach that check, made from the document's schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = pytest.mark.e2e

ROLES = ("anonymous", "reader", "contributor", "owner")

# Who may act on a route, over the resources an owner made (their service, batch, session):
PUBLIC = "public"  # anyone, without a token
USER = "user"  # any user with a token
CONTRIBUTOR = "contributor"  # contributors and owners; readers get 403
OWNER = "owner"  # owners only; others get 403
PUBLISHER = "publisher"  # the service's publisher (or its name's owner) and owners; others 403
CREATOR = "creator"  # what its creator made, and owners; others get 404: it is hidden from them
AUTHOR = "author"  # as CREATOR, and readers, who cannot have made it, get 403 at once

PERMISSIONS: dict[tuple[str, str], str] = {
    ("GET", "/health"): PUBLIC,
    ("POST", "/login"): PUBLIC,
    ("POST", "/login/refreshToken"): PUBLIC,
    ("DELETE", "/login/refreshToken"): PUBLIC,
    ("GET", "/v1/me"): USER,
    ("POST", "/v1/me/password"): USER,
    ("GET", "/v1/users"): OWNER,
    ("POST", "/v1/users"): OWNER,
    ("PUT", "/v1/users/{username}/role"): OWNER,
    ("PUT", "/v1/users/{username}/password"): OWNER,
    ("PUT", "/v1/users/{username}/active"): OWNER,
    ("DELETE", "/v1/users/{username}"): OWNER,
    ("GET", "/v1/workers"): OWNER,
    ("GET", "/v1/nodes"): OWNER,
    ("GET", "/metrics"): OWNER,
    # native services
    ("POST", "/v1/services"): CONTRIBUTOR,
    ("GET", "/v1/services"): USER,
    ("GET", "/v1/services/{name}"): USER,
    ("GET", "/v1/services/{name}/publishers"): USER,
    ("PUT", "/v1/services/{name}/publishers/{username}"): PUBLISHER,
    ("DELETE", "/v1/services/{name}/publishers/{username}"): PUBLISHER,
    ("GET", "/v1/services/{name}/{version}"): USER,
    ("DELETE", "/v1/services/{name}/{version}"): PUBLISHER,
    ("POST", "/v1/services/{name}/{version}/consume"): USER,
    # native batches
    ("POST", "/v1/services/{name}/{version}/batches"): USER,
    ("GET", "/v1/services/{name}/{version}/batches"): USER,
    ("GET", "/v1/batches"): USER,
    ("GET", "/v1/batches/{batch_id}"): CREATOR,
    ("PATCH", "/v1/batches/{batch_id}"): CREATOR,
    ("DELETE", "/v1/batches/{batch_id}"): CREATOR,
    ("POST", "/v1/batches/{batch_id}/start"): CREATOR,
    ("POST", "/v1/batches/{batch_id}/cancel"): CREATOR,
    ("POST", "/v1/batches/{batch_id}/disable"): CREATOR,
    ("POST", "/v1/batches/{batch_id}/enable"): CREATOR,
    ("POST", "/v1/batches/{batch_id}/terminate"): CREATOR,
    ("POST", "/v1/batches/{batch_id}/close"): CREATOR,
    ("POST", "/v1/batches/{batch_id}/records"): CREATOR,
    ("PUT", "/v1/batches/{batch_id}/{kind}"): AUTHOR,
    ("GET", "/v1/batches/{batch_id}/results"): CREATOR,
    ("GET", "/v1/batches/{batch_id}/records"): CREATOR,
    ("GET", "/v1/batches/{batch_id}/results/{index}"): CREATOR,
    ("GET", "/v1/batches/{batch_id}/results/{index}/artifacts"): CREATOR,
    ("GET", "/v1/batches/{batch_id}/results/{index}/artifacts/{name}"): CREATOR,
    # the ML Server face
    ("POST", "/sessions"): CONTRIBUTOR,
    ("DELETE", "/sessions/{session_id}"): CREATOR,
    ("POST", "/sessions/{session_id}/workspace/{object_name}"): AUTHOR,
    ("POST", "/sessions/{session_id}/snapshot"): CREATOR,
    ("DELETE", "/snapshots/{snapshot_id}"): CREATOR,
    ("GET", "/services"): USER,
    ("POST", "/services/{name}"): CONTRIBUTOR,
    ("GET", "/services/{name}"): USER,
    ("POST", "/services/{name}/{version}"): CONTRIBUTOR,
    ("PATCH", "/services/{name}/{version}"): PUBLISHER,
    ("GET", "/services/{name}/{version}"): USER,
    ("DELETE", "/services/{name}/{version}"): PUBLISHER,
    ("POST", "/api/{name}/{version}"): USER,
    ("GET", "/api/{name}/{version}/swagger.json"): USER,
    ("POST", "/api/{name}/{version}/batch"): USER,
    ("GET", "/api/{name}/{version}/batch"): USER,
    ("GET", "/api/{name}/{version}/batch/{execution_id}"): CREATOR,
    ("DELETE", "/api/{name}/{version}/batch/{execution_id}"): CREATOR,
    ("GET", "/api/{name}/{version}/batch/{execution_id}/{index}/files"): CREATOR,
    ("GET", "/api/{name}/{version}/batch/{execution_id}/{index}/files/{file_name}"): CREATOR,
}

ALLOWED = "allowed"  # neither 401 nor 403 (nor a server error)
#: What each role gets, by level. Roles that may act are sent to resources that do not exist
#: (so that nothing is changed); the others to the owner's real ones, with a valid body.
EXPECTED: dict[str, dict[str, int | str]] = {
    PUBLIC: dict.fromkeys(ROLES, ALLOWED),
    USER: {"anonymous": 401, "reader": ALLOWED, "contributor": ALLOWED, "owner": ALLOWED},
    CONTRIBUTOR: {"anonymous": 401, "reader": 403, "contributor": ALLOWED, "owner": ALLOWED},
    OWNER: {"anonymous": 401, "reader": 403, "contributor": 403, "owner": ALLOWED},
    PUBLISHER: {"anonymous": 401, "reader": 403, "contributor": 403, "owner": ALLOWED},
    CREATOR: {"anonymous": 401, "reader": 404, "contributor": 404, "owner": ALLOWED},
    AUTHOR: {"anonymous": 401, "reader": 403, "contributor": 404, "owner": ALLOWED},
}

#: Bodies the schema cannot describe well enough to reach the role check.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/services"): {
        "data": {"metadata": json.dumps({"name": "matrixdenied", "inputs": {"x": "float"}})},
        "files": {"bundle": ("bundle", b"not run")},
    },
}

#: Path parameters of resources that do not exist.
MISSING = {
    "name": "nosuchservice",
    "version": "v0",
    "batch_id": "0" * 32,
    "execution_id": "0" * 32,
    "session_id": "0" * 32,
    "snapshot_id": "0" * 32,
    "username": "nosuchuser",
    "index": "0",
    "object_name": "thing",
    "file_name": "out.txt",
    "kind": "preparation",
}


@dataclass
class World:
    url: str
    schema: dict[str, Any]
    tokens: dict[str, str | None]
    real: dict[str, str]  # path parameters of the owner's resources


def _login(url: str, username: str, password: str) -> str:
    answer = httpx.post(f"{url}/login", json={"username": username, "password": password})
    answer.raise_for_status()
    return str(answer.json()["access_token"])


@pytest.fixture(scope="module")
def world(server: ServerProcess) -> Iterator[World]:
    admin = _login(server.url, "admin", ADMIN_PASSWORD)
    tokens: dict[str, str | None] = {"anonymous": None, "owner": admin}
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {admin}"}, timeout=60
    ) as http:
        for role in ("reader", "contributor", "target"):
            made = http.post(
                "/v1/users",
                json={
                    "username": f"matrix{role}",
                    "password": "matrix-password-1",
                    "role": "reader" if role == "target" else role,
                },
            )
            assert made.status_code == 201, made.text
            if role != "target":
                tokens[role] = _login(server.url, f"matrix{role}", "matrix-password-1")
        published = http.post(
            "/services/matrixsvc/v1",
            json={
                "code": "y = x",
                "inputParameterDefinitions": [{"name": "x", "type": "numeric"}],
                "outputParameterDefinitions": [{"name": "y", "type": "numeric"}],
            },
        )
        assert published.status_code == 201, published.text
        batch = http.post(
            "/v1/services/matrixsvc/v1/batches",
            content=b"x\n1\n",
            headers={"Content-Type": "text/csv"},
        ).json()["id"]
        session = http.post("/sessions", json={"runtimeType": "Python"}).json()["sessionId"]
        snapshot = http.post(f"/sessions/{session}/snapshot", json={}).json()["snapshotId"]
        schema = http.get("/openapi.json").json()
    real = {
        **MISSING,
        "name": "matrixsvc",
        "version": "v1",
        "batch_id": batch,
        "execution_id": batch,
        "session_id": session,
        "snapshot_id": snapshot,
        "username": "matrixtarget",
    }
    yield World(server.url, schema, tokens, real)


def operations(schema: dict[str, Any]) -> list[tuple[str, str]]:
    methods = ("get", "put", "post", "patch", "delete")
    return [
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in methods
    ]


def test_every_route_has_its_permissions_in_the_table(world: World) -> None:
    routes = set(operations(world.schema))
    unknown = sorted(routes - set(PERMISSIONS))
    assert not unknown, f"routes with no permissions in the table: {unknown}; add them"
    stale = sorted(set(PERMISSIONS) - routes)
    assert not stale, f"routes in the table that the server does not have: {stale}"


def test_every_integer_parameter_is_bounded(world: World) -> None:
    """An integer past what the store holds (2^63) was a 500; every integer in a path or a
    query now has a maximum, so it is refused before a route sees it."""
    unbounded = []
    for path, item in world.schema["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                node = parameter.get("schema", {})
                kinds = [node, *node.get("anyOf", [])]
                if any(k.get("type") == "integer" for k in kinds) and not any(
                    "maximum" in k for k in kinds
                ):
                    unbounded.append(f"{method.upper()} {path} {parameter['name']}")
    assert not unbounded, f"integer parameters without a maximum: {unbounded}"


def test_the_docs_need_no_token(server: ServerProcess) -> None:
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert httpx.get(server.url + path).status_code == 200


@pytest.mark.parametrize("role", ROLES)
def test_each_role_is_allowed_or_refused_as_the_table_says(world: World, role: str) -> None:
    wrong = []
    for method, path in operations(world.schema):
        level = PERMISSIONS.get((method, path))
        if level is None:
            continue  # reported by the test above
        expected = EXPECTED[level][role]
        params = MISSING if expected == ALLOWED else world.real
        body = _body(world.schema, method, path) if expected in (403, 404) else {}
        headers = dict(body.pop("headers", {}))
        if world.tokens[role] is not None:
            headers["Authorization"] = f"Bearer {world.tokens[role]}"
        answer = httpx.request(
            method, world.url + path.format(**params), headers=headers, timeout=60, **body
        )
        status = answer.status_code
        if (expected == ALLOWED and (status in (401, 403) or status >= 500)) or (
            expected != ALLOWED and status != expected
        ):
            wrong.append(f"{method} {path}: {status} (expected {expected}) {answer.text[:200]}")
    assert not wrong, f"as {role}:\n" + "\n".join(wrong)


def _body(schema: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """httpx arguments for a body that passes validation, so the role check is reached."""
    if (method, path) in BODIES:
        return dict(BODIES[(method, path)])
    request = schema["paths"][path][method.lower()].get("requestBody")
    if not request:
        return {}
    media, content = next(iter(request["content"].items()))
    if media == "application/json":
        return {"json": _example(schema, content.get("schema", {}))}
    if media == "multipart/form-data":
        fields = _example(schema, content["schema"])
        return {
            "files": {k: ("f", v if isinstance(v, bytes) else str(v)) for k, v in fields.items()}
        }
    return {"content": b"x\n1\n", "headers": {"Content-Type": media}}


def _example(schema: dict[str, Any], node: dict[str, Any]) -> Any:
    """A value of the JSON schema ``node``: required properties only, placeholders."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return _example(schema, schema["components"]["schemas"][name])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node:
            options = [o for o in node[key] if o.get("type") != "null"]
            return _example(schema, options[0])
    if "enum" in node:
        return node["enum"][0]
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties", {})
        return {k: _example(schema, props[k]) for k in node.get("required", [])}
    if kind == "array":
        return []
    if kind == "integer" or kind == "number":
        return node.get("minimum", 0)
    if kind == "boolean":
        return False
    if node.get("format") == "binary":
        return b"placeholder"
    return "Matrix-placeholder-1"[: node.get("maxLength", 20)]
