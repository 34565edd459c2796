"""What a service asks each of its workers for: checked the same way by the SDK (before anything
is sent) and by the engine (at publish), stored with the service, and carried to the workers in
its task spec."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from batchserve import Client
from batchserve.blobs import LocalBlobStore
from batchserve.client._publish import worker_resources
from batchserve.engine.errors import BadRequest
from batchserve.engine.scheduler import WarmService, service_spec
from batchserve.engine.services import InvalidResources, ServiceOps
from batchserve.engine.tasks import ChunkTask, ConsumeTask, LoadTask, task_from_wire, task_to_wire
from batchserve.errors import UsageError
from batchserve.resources import DEFAULT_RESOURCES, ResourceError, normalize_resources
from batchserve.server.schemas import ServicePublic
from batchserve.store import Store, upgrade

GiB = 1024**3

# (what is asked, what each worker is given)
ACCEPTED = [
    ({}, {"num_cpus": 1, "num_gpus": 0, "memory": None}),
    ({"num_cpus": 2}, {"num_cpus": 2, "num_gpus": 0, "memory": None}),
    ({"num_cpus": 2.0, "num_gpus": 1.0}, {"num_cpus": 2, "num_gpus": 1, "memory": None}),
    ({"num_cpus": 0.5, "num_gpus": 0.25}, {"num_cpus": 0.5, "num_gpus": 0.25, "memory": None}),
    ({"num_gpus": 1.5}, {"num_cpus": 1, "num_gpus": 1.5, "memory": None}),
    ({"num_cpus": 0.0001}, {"num_cpus": 0.0001, "num_gpus": 0, "memory": None}),
    ({"memory": "2GiB"}, {"num_cpus": 1, "num_gpus": 0, "memory": 2 * GiB}),
    ({"memory": "512MB"}, {"num_cpus": 1, "num_gpus": 0, "memory": 512_000_000}),
    ({"memory": 1_000_000}, {"num_cpus": 1, "num_gpus": 0, "memory": 1_000_000}),
    ({"memory": 2e9}, {"num_cpus": 1, "num_gpus": 0, "memory": 2_000_000_000}),
    ({"memory": 0}, {"num_cpus": 1, "num_gpus": 0, "memory": None}),
    ({"memory": None, "num_cpus": None}, {"num_cpus": 1, "num_gpus": 0, "memory": None}),
    ({"memory": "none"}, {"num_cpus": 1, "num_gpus": 0, "memory": None}),
]

# (what is asked, words the refusal says)
REFUSED = [
    ([1, 2], ["must be", "num_cpus"]),
    ("2 cpus", ["must be", "num_cpus"]),
    ({"cpus": 2}, ["'cpus'", "num_cpus, num_gpus and memory"]),
    ({"num_cpus": 0}, ["num_cpus", "more than 0"]),
    ({"num_cpus": -1}, ["num_cpus", "more than 0"]),
    ({"num_gpus": -0.5}, ["num_gpus", "0 or more"]),
    ({"num_cpus": "2"}, ["num_cpus", "must be a number"]),
    ({"num_gpus": True}, ["num_gpus", "must be a number"]),
    ({"num_cpus": float("nan")}, ["num_cpus", "must be a number"]),
    ({"num_cpus": float("inf")}, ["num_cpus", "must be a number"]),
    ({"num_cpus": 0.00001}, ["num_cpus", "finer than 0.0001"]),
    ({"num_cpus": 10**400}, ["num_cpus", "more than any machine"]),
    ({"memory": -1}, ["memory", "negative"]),
    ({"memory": "-1GiB"}, ["memory", "negative"]),
    ({"memory": "lots"}, ["memory", "'2GiB'"]),
    ({"memory": "infGiB"}, ["memory", "'2GiB'"]),
    ({"memory": 1.5}, ["memory", "not a number of bytes"]),
    ({"memory": [1]}, ["memory", "not a number of bytes"]),
    ({"memory": 10**400}, ["memory", "more than any machine"]),
]


@pytest.mark.parametrize(("asked", "given"), ACCEPTED)
def test_the_sdk_and_the_engine_give_workers_the_same_resources(asked, given):  # type: ignore[no-untyped-def]
    assert worker_resources(asked) == given
    assert normalize_resources(asked) == given
    # Sent as the SDK sends it, the engine reads it back unchanged.
    assert normalize_resources(json.loads(json.dumps(worker_resources(asked)))) == given


@pytest.mark.parametrize(("asked", "words"), REFUSED)
def test_the_sdk_and_the_engine_refuse_the_same_resources_saying_why(asked, words):  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError) as sdk:
        worker_resources(asked)
    with pytest.raises(ResourceError) as engine:
        normalize_resources(asked)
    for word in words:
        assert word in str(sdk.value), str(sdk.value)
        assert word in str(engine.value), str(engine.value)
    # Long values are quoted briefly.
    assert len(str(sdk.value)) < 300 and len(str(engine.value)) < 300


def test_a_refusal_is_spelled_for_python_in_the_sdk_and_for_json_in_the_api():
    with pytest.raises(UsageError) as sdk:
        worker_resources({"memory": 1.5})
    with pytest.raises(ResourceError) as api:
        normalize_resources({"memory": 1.5})
    assert str(sdk.value).startswith("resources memory 1.5 ")
    assert "(an int)" in str(sdk.value) and "0 or None" in str(sdk.value)
    assert str(api.value).startswith("memory 1.5 ")
    assert "(an integer)" in str(api.value) and "0 or null" in str(api.value)
    assert api.value.details == {"key": "memory"}


def test_resources_left_out_are_the_defaults():
    assert normalize_resources(None) == DEFAULT_RESOURCES
    assert normalize_resources(None) is not DEFAULT_RESOURCES


# -- the SDK: nothing is sent ------------------------------------------------------------------


def square(n: int) -> int:
    return n * n


class Recorder:
    def __init__(self) -> None:
        self.metadata: list[dict] = []  # type: ignore[type-arg]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        content = request.read()
        start = content.index(b'name="metadata"') + len(b'name="metadata"\r\n\r\n')
        metadata = json.loads(content[start : content.index(b"\r\n--", start)])
        self.metadata.append(metadata)
        info = {"version": "v1", **metadata, "bundle_kind": "callable"}
        info.setdefault("resources", DEFAULT_RESOURCES)
        return httpx.Response(201, json=info)

    def client(self) -> Client:
        return Client("http://testserver", token="t", transport=httpx.MockTransport(self))


def test_publish_sends_the_resources_checked_with_memory_in_bytes():
    server = Recorder()
    svc = server.client().publish_service(
        "sq", square, outputs={"sq": int}, resources={"num_cpus": 2, "memory": "4GiB"}
    )
    assert server.metadata[0]["resources"] == {"num_cpus": 2, "num_gpus": 0, "memory": 4 * GiB}
    assert svc.resources == {"num_cpus": 2, "num_gpus": 0, "memory": 4 * GiB}


def test_publish_without_resources_sends_none_and_reads_the_defaults():
    server = Recorder()
    svc = server.client().publish_service("sq", square, outputs={"sq": int})
    assert "resources" not in server.metadata[0]
    assert svc.resources == DEFAULT_RESOURCES


def test_a_service_from_a_server_without_resources_reads_the_defaults():
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"name": "sq", "version": "v1", "inputs": {}})

    client = Client("http://testserver", token="t", transport=httpx.MockTransport(answer))
    assert client.get_service("sq", "v1").resources == DEFAULT_RESOURCES


@pytest.mark.parametrize(("asked", "words"), REFUSED[2:])
def test_publish_refuses_bad_resources_before_sending_anything(asked, words):  # type: ignore[no-untyped-def]
    server = Recorder()
    with pytest.raises(UsageError, match=words[0]):
        server.client().publish_service("sq", square, outputs={"sq": int}, resources=asked)
    assert server.metadata == []


def test_publish_refuses_resources_that_are_not_a_dict():
    server = Recorder()
    with pytest.raises(UsageError, match="must be a dict like"):
        server.client().publish_service("sq", square, outputs={"sq": int}, resources=[2])  # type: ignore[arg-type]
    assert server.metadata == []


# -- the engine: stored at publish, refused when no worker can have them -----------------------


class Posted:
    """A scheduler that keeps what is posted to it."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def post(self, event: object) -> None:
        self.events.append(event)


def publish(ops: ServiceOps, who, name: str = "sq", **more):  # type: ignore[no-untyped-def]
    return ops.publish(
        who,
        name=name,
        version="v1",
        bundle=b"bundle",
        bundle_kind="callable",
        inputs={"n": "int"},
        outputs={"sq": "int"},
        **more,
    )


@pytest.fixture
def scheduler() -> Posted:
    return Posted()


@pytest.fixture
def blobs(tmp_path) -> LocalBlobStore:  # type: ignore[no-untyped-def]
    return LocalBlobStore(tmp_path / "blobs")


def test_publish_stores_the_resources_and_warms_workers_with_them(store, who, blobs, scheduler):  # type: ignore[no-untyped-def]
    ops = ServiceOps(store, blobs, scheduler)  # type: ignore[arg-type]
    svc = publish(ops, who, resources={"num_cpus": 0.5, "num_gpus": 1, "memory": "1GiB"})
    wanted = {"num_cpus": 0.5, "num_gpus": 1, "memory": GiB}
    assert store.get_service("sq", "v1").resources == wanted
    assert store.find_service("sq", None).resources == wanted
    assert [s.resources for s in store.list_services("sq")] == [wanted]
    (warm,) = scheduler.events
    assert isinstance(warm, WarmService) and warm.service.resources == wanted
    assert service_spec(svc).resources == wanted


def test_publish_without_resources_stores_the_defaults(store, who, blobs, scheduler):  # type: ignore[no-untyped-def]
    ops = ServiceOps(store, blobs, scheduler)  # type: ignore[arg-type]
    publish(ops, who)
    assert store.get_service("sq", "v1").resources == DEFAULT_RESOURCES


def test_check_resources_refusing_fails_publish_with_its_message(store, who, blobs, scheduler):  # type: ignore[no-untyped-def]
    asked: list[dict] = []  # type: ignore[type-arg]

    def largest_node(resources):  # type: ignore[no-untyped-def]
        asked.append(resources)
        if resources["num_gpus"] > 1:
            return "the largest node has 1 GPU; ask for at most 1"
        return None

    ops = ServiceOps(store, blobs, scheduler, check_resources=largest_node)  # type: ignore[arg-type]
    with pytest.raises(InvalidResources) as refused:
        publish(ops, who, resources={"num_gpus": 2, "memory": "1GiB"})
    assert "the largest node has 1 GPU; ask for at most 1" in refused.value.message
    assert refused.value.code == "validation_error"
    # It was asked about what the workers would be given, defaults and bytes included.
    assert asked == [{"num_cpus": 1, "num_gpus": 2, "memory": GiB}]
    # Nothing is left of the refused publication: no version, no bundle, no claimed name.
    assert store.get_service("sq", "v1") is None
    assert [p for p in blobs.root.rglob("*") if p.is_file()] == []
    assert scheduler.events == []
    assert store.get_service_name("sq") is None
    # What it accepts is published.
    assert publish(ops, who, resources={"num_gpus": 1}).resources["num_gpus"] == 1


def test_a_refused_resource_is_a_validation_error_of_the_api(store, who, blobs, scheduler):  # type: ignore[no-untyped-def]
    ops = ServiceOps(store, blobs, scheduler)  # type: ignore[arg-type]
    with pytest.raises(ResourceError) as checked:
        normalize_resources({"gpus": 1})
    with pytest.raises(InvalidResources) as caught:
        publish(ops, who, resources={"gpus": 1})
    assert isinstance(caught.value, BadRequest)
    assert caught.value.code == "validation_error"  # 422 on the native API
    assert caught.value.message == str(checked.value)
    assert caught.value.details == {"unknown": ["gpus"]}


def test_bad_resources_fail_publish_before_anything_is_stored(store, who, blobs, scheduler):  # type: ignore[no-untyped-def]
    ops = ServiceOps(store, blobs, scheduler)  # type: ignore[arg-type]
    with pytest.raises(InvalidResources, match="num_cpus"):
        publish(ops, who, resources={"num_cpus": -2})
    assert store.get_service("sq", "v1") is None
    assert store.get_service_name("sq") is None


def test_a_service_without_resources_shows_the_defaults(store, who, squares):  # type: ignore[no-untyped-def]
    assert squares.resources == {}
    shown = ServicePublic.of(squares, "ann").model_dump()["resources"]
    assert shown == {"num_cpus": 1, "num_gpus": 0, "memory": None}
    assert service_spec(squares).resources == {}


# -- the task spec -----------------------------------------------------------------------------


def test_tasks_carry_the_resources_to_workers_and_back(store, who, blobs, scheduler):  # type: ignore[no-untyped-def]
    ops = ServiceOps(store, blobs, scheduler)  # type: ignore[arg-type]
    spec = service_spec(publish(ops, who, resources={"num_cpus": 2, "memory": "512MiB"}))
    tasks = [
        LoadTask("t1", spec),
        ConsumeTask("t2", {"n": 3}, spec),
        ChunkTask("t3", "b", 0, 0, 4, 1, (), "results/0", spec),
    ]
    for task in tasks:
        # As they cross to a worker process: JSON text.
        back = task_from_wire(json.loads(json.dumps(task_to_wire(task))))
        assert back == task
        assert back.service.resources == {"num_cpus": 2, "num_gpus": 0, "memory": 512 * 1024**2}


# -- services stored before resources existed --------------------------------------------------


def test_services_published_before_resources_keep_the_defaults(tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    upgrade(url, "0007")
    with sqlite3.connect(tmp_path / "meta.db") as db:
        db.execute(
            "INSERT INTO users (id, username, username_key, password_hash, role, created_at) "
            "VALUES (1, 'ann', 'ann', 'h', 'owner', '2026-11-01 00:00:00')"
        )
        db.execute(
            "INSERT INTO services (id, name, version, description, alias, mode, inputs, outputs,"
            " artifacts, bundle_key, bundle_kind, runtime, extra, owner_id, created_at) VALUES "
            "(1, 's', 'v1', '', 's', 'row', '{}', '{}', '[]', 'k', 'callable', 'python', '{}', 1,"
            " '2026-11-01 00:00:00')"
        )
    upgrade(url)
    store = Store(url)
    try:
        old = store.get_service("s", "v1")
        assert old.resources == {}
        assert ServicePublic.of(old, "ann").resources.model_dump() == DEFAULT_RESOURCES
    finally:
        store.close()
