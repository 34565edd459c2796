"""What each worker of a service needs (``resources``), set at publish through the SDK, the REST
API and the command line, read back from each, and refused clearly when it cannot be."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from batchserve import errors
from batchserve.client import _publish
from batchserve.client._publish import prepare_publication

from .cli_helpers import Cli
from .conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = pytest.mark.e2e

GiB = 1024**3
DEFAULTS = {"num_cpus": 1, "num_gpus": 0, "memory": None}


def square(n: int) -> int:
    return n * n


# -- the SDK -----------------------------------------------------------------------------------


def test_resources_set_in_the_sdk_are_read_back_and_the_service_runs(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name,
        square,
        outputs={"sq": int},
        version="v1",
        resources={"num_cpus": 0.5, "memory": "256MiB"},
    )
    wanted = {"num_cpus": 0.5, "num_gpus": 0, "memory": 256 * 1024**2}
    assert svc.resources == wanted
    assert client.get_service(unique_name, "v1").resources == wanted
    assert [s.resources for s in client.list_services(unique_name)] == [wanted]
    assert svc.consume(n=7).output("sq") == 49


def test_a_service_published_without_resources_has_the_defaults(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(unique_name, square, outputs={"sq": int}, version="v1")
    assert svc.resources == DEFAULTS
    assert client.get_service(unique_name).info["resources"] == DEFAULTS


@pytest.mark.parametrize(
    ("resources", "words"),
    [
        ({"cpus": 2}, "unknown key(s) 'cpus'"),
        ({"num_cpus": 0}, "more than 0"),
        ({"num_gpus": -1}, "0 or more"),
        ({"memory": "a lot"}, "'2GiB'"),
    ],
)
def test_bad_resources_in_the_sdk_are_refused_and_nothing_is_published(  # type: ignore[no-untyped-def]
    client, unique_name, resources, words
):
    with pytest.raises(errors.UsageError) as refused:
        client.publish_service(unique_name, square, outputs={"sq": int}, resources=resources)
    assert words in str(refused.value)
    with pytest.raises(errors.NotFoundError):
        client.get_service(unique_name)


# -- the REST API ------------------------------------------------------------------------------


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    token = httpx.post(
        f"{server.url}/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    ).raise_for_status()
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as c:
        yield c


def post_service(http: httpx.Client, name: str, metadata_text: str) -> httpx.Response:
    bundle = prepare_publication(name, square, outputs={"sq": int}).bundle
    return http.post(
        "/v1/services", data={"metadata": metadata_text}, files={"bundle": ("bundle", bundle)}
    )


def metadata(name: str, **more: object) -> str:
    return json.dumps(
        {"name": name, "version": "v1", "inputs": {"n": "int"}, "outputs": {"sq": "int"}, **more}
    )


def test_resources_posted_to_the_api_are_in_every_answer_about_the_service(  # type: ignore[no-untyped-def]
    http, unique_name
):
    created = post_service(
        http, unique_name, metadata(unique_name, resources={"num_gpus": 0.5, "memory": "1GiB"})
    )
    assert created.status_code == 201, created.text
    wanted = {"num_cpus": 1, "num_gpus": 0.5, "memory": GiB}
    assert created.json()["resources"] == wanted
    assert http.get(f"/v1/services/{unique_name}/v1").json()["resources"] == wanted
    assert http.get(f"/v1/services/{unique_name}/latest").json()["resources"] == wanted
    listed = http.get("/v1/services", params={"name": unique_name}).json()["services"]
    assert [s["resources"] for s in listed] == [wanted]
    versions = http.get(f"/v1/services/{unique_name}").json()["services"]
    assert [s["resources"] for s in versions] == [wanted]


def test_a_service_posted_without_resources_answers_the_defaults(http, unique_name):  # type: ignore[no-untyped-def]
    created = post_service(http, unique_name, metadata(unique_name))
    assert created.status_code == 201, created.text
    assert created.json()["resources"] == DEFAULTS
    null = post_service(http, f"{unique_name}n", metadata(f"{unique_name}n", resources=None))
    assert null.json()["resources"] == DEFAULTS


@pytest.mark.parametrize(
    ("resources", "words"),
    [
        ([2], "must be an object"),
        ("2 CPUs", "must be an object"),
        ({"num_cpus": 1, "disk": "1GiB"}, "Unknown resource 'disk'"),
        ({"num_cpus": 0}, "more than 0"),
        ({"num_cpus": -0.5}, "more than 0"),
        ({"num_gpus": -1}, "0 or more"),
        ({"num_cpus": "2"}, "must be a number"),
        ({"num_gpus": True}, "must be a number"),
        ({"num_cpus": 0.00001}, "finer than 0.0001"),
        ({"num_cpus": 10**30}, "more than any machine"),
        ({"memory": -1}, "negative"),
        ({"memory": "2 gigs"}, "'2GiB'"),
        ({"memory": 0.5}, "not a number of bytes"),
        ({"memory": {"GiB": 2}}, "not a number of bytes"),
    ],
)
def test_bad_resources_posted_to_the_api_are_a_422_saying_why(  # type: ignore[no-untyped-def]
    http, unique_name, resources, words
):
    resp = post_service(http, unique_name, metadata(unique_name, resources=resources))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "validation_error"
    assert words in error["message"], error["message"]
    assert isinstance(error["details"], dict)
    assert http.get(f"/v1/services/{unique_name}/v1").status_code == 404


def test_numbers_too_long_to_read_are_a_400_not_a_server_error(http, unique_name):  # type: ignore[no-untyped-def]
    text = metadata(unique_name, resources={"num_cpus": 1}).replace(
        '"num_cpus": 1', '"num_cpus": ' + "9" * 5000
    )
    resp = post_service(http, unique_name, text)
    assert resp.status_code == 400, resp.text
    assert "too long" in resp.json()["error"]["message"]


def test_the_servers_refusal_reaches_the_sdk_as_a_validation_error(  # type: ignore[no-untyped-def]
    client, unique_name, monkeypatch
):
    # Resources the SDK would refuse itself, sent past its check as they are.
    monkeypatch.setattr(_publish, "worker_resources", dict)
    with pytest.raises(errors.ValidationError, match="num_cpus is -1"):
        client.publish_service(unique_name, square, outputs={"sq": int}, resources={"num_cpus": -1})


# -- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    workdir = tmp_path_factory.mktemp("resources-cli")
    (workdir / "model.py").write_text("def double(x: float) -> float:\n    return 2 * x\n")
    cli = Cli(workdir / "config.json", workdir)
    cli("login", server.url, "--username", "admin", "--password", ADMIN_PASSWORD)
    return cli


def test_resources_set_on_the_command_line_are_shown(cli: Cli, unique_name: str) -> None:
    published = cli(
        "publish", "model.py:double", "--name", unique_name, "--version", "v1",
        "--output", "y=float", "--num-cpus", "2", "--num-gpus", "0", "--memory", "4GiB",
    )  # fmt: skip
    assert "each worker: 2 CPU, 4 GiB" in published.stdout
    info = json.loads(cli("services", "show", f"{unique_name}:v1", "--json").stdout)
    assert info["resources"] == {"num_cpus": 2, "num_gpus": 0, "memory": 4 * GiB}
    shown = dict(
        line.split("\t", 1) for line in cli("services", "show", unique_name).stdout.splitlines()
    )
    assert shown["resources"] == "2 CPU, 4 GiB"
    header, row = cli("services", "list", unique_name).stdout.splitlines()
    assert dict(zip(header.split("\t"), row.split("\t"), strict=True))["resources"] == (
        "2 CPU, 4 GiB"
    )
    assert cli("consume", unique_name, "x=4").stdout.strip() == "y\t8"


def test_resources_left_out_on_the_command_line_take_the_defaults(
    cli: Cli, unique_name: str
) -> None:
    some = cli(
        "publish", "model.py:double", "--name", unique_name, "--output", "y=float",
        "--num-gpus", "0.5", "--json",
    )  # fmt: skip
    assert json.loads(some.stdout)["resources"] == {"num_cpus": 1, "num_gpus": 0.5, "memory": None}
    none = f"{unique_name}none"
    cli("publish", "model.py:double", "--name", none, "--output", "y=float")
    shown = dict(line.split("\t", 1) for line in cli("services", "show", none).stdout.splitlines())
    assert shown["resources"] == "1 CPU"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--num-cpus", "two"], "--num-cpus 'two' is not a number"),
        (["--num-gpus", "lots"], "--num-gpus 'lots' is not a number"),
        (["--num-cpus", "0"], "num_cpus is 0; it must be more than 0"),
        (["--num-cpus", "-1"], "num_cpus is -1"),
        (["--num-gpus", "-1"], "num_gpus is -1; it must be 0 or more"),
        (["--num-cpus", "nan"], "num_cpus must be a number"),
        (["--memory", "-2GiB"], "negative"),
        (["--memory", "plenty"], "'2GiB'"),
    ],
)
def test_bad_resources_on_the_command_line_are_one_clear_line(
    cli: Cli, unique_name: str, options: list[str], words: str
) -> None:
    message = cli.error(
        "publish", "model.py:double", "--name", unique_name, "--output", "y=float", *options
    )
    assert words in message, message
    listed = cli("services", "list", "--json").stdout.splitlines()
    assert unique_name not in {json.loads(line)["name"] for line in listed}


def test_the_publish_help_names_the_resource_options(cli: Cli) -> None:
    shown = cli("publish", "--help").stdout
    for option in ("--num-cpus", "--num-gpus", "--memory"):
        assert option in shown
