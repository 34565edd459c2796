"""What ``Client.publish_service`` sends: the metadata form field and the cloudpickled bundle."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
from email.parser import BytesParser
from email.policy import HTTP

import httpx
import pytest

from batchserve import Client
from batchserve.errors import UsageError


def manual_transmission(hp, wt):
    return hp / wt


def annotated(hp: float, wt: float, name: str, on: bool, n: int) -> float:
    return hp


class Capture:
    """A server that answers a publication with the service it describes, keeping the parts."""

    def __init__(self) -> None:
        self.metadata: dict = {}
        self.bundle: dict = {}
        self.bundle_bytes = b""
        self.bundle_content_type = ""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/v1/services")
        head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + request.content)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "metadata":
                self.metadata = json.loads(part.get_content())
            elif name == "bundle":
                self.bundle_content_type = part.get_content_type()
                self.bundle_bytes = part.get_payload(decode=True)
                self.bundle = pickle.loads(self.bundle_bytes)
        info = {"version": "generated-1", **self.metadata, "bundle_kind": self.bundle["kind"]}
        return httpx.Response(201, json=info)

    def client(self) -> Client:
        return Client("http://testserver", token="t", transport=httpx.MockTransport(self))


def test_publishing_a_function_sends_metadata_and_a_callable_bundle():
    server = Capture()
    model = {"coef": [1.0, 2.0]}
    svc = server.client().publish_service(
        "mtService",
        code=manual_transmission,
        models={"cars_model": model},
        inputs={"hp": float, "wt": float},
        outputs={"answer": float},
        artifacts=["Histogram.png"],
        version="v1.0.0",
        description="Manual transmission.",
    )
    assert server.metadata == {
        "name": "mtService",
        "version": "v1.0.0",
        "description": "Manual transmission.",
        "alias": "manual_transmission",
        "mode": "row",
        "bundle_kind": "callable",
        "inputs": {"hp": "float", "wt": "float"},
        "outputs": {"answer": "float"},
        "artifacts": ["Histogram.png"],
    }
    assert server.bundle_content_type == "application/octet-stream"
    assert server.bundle["format"] == 1
    assert server.bundle["kind"] == "callable"
    assert server.bundle["code"](120.0, 2.0) == 60.0
    assert server.bundle["init"] is None
    assert server.bundle["models"] == {"cars_model": model}
    assert server.bundle["objects"] == {}
    assert (svc.name, svc.version, svc.alias) == ("mtService", "v1.0.0", "manual_transmission")


def test_code_string_is_sent_as_code_with_consume_as_the_default_alias():
    server = Capture()
    server.client().publish_service(
        "s",
        code="answer = hp * 2",
        init="import math",
        inputs={"hp": "float"},
        outputs={"answer": "float"},
    )
    assert server.bundle["kind"] == "code"
    assert server.bundle["code"] == "answer = hp * 2"
    assert server.bundle["init"] == "import math"
    assert server.metadata["alias"] == "consume"


def test_version_left_out_is_left_to_the_server():
    server = Capture()
    svc = server.client().publish_service(
        "s", code=manual_transmission, inputs={"hp": float, "wt": float}, outputs={"a": float}
    )
    assert "version" not in server.metadata
    assert svc.version == "generated-1"


def test_inputs_are_read_from_simple_annotations_in_parameter_order():
    server = Capture()
    server.client().publish_service("s", code=annotated, outputs={"answer": float})
    assert list(server.metadata["inputs"].items()) == [
        ("hp", "float"),
        ("wt", "float"),
        ("name", "str"),
        ("on", "bool"),
        ("n", "int"),
    ]


def test_inputs_are_required_for_a_function_without_simple_annotations():
    with pytest.raises(UsageError, match="inputs= is required"):
        Capture().client().publish_service("s", code=manual_transmission, outputs={"a": float})


def test_outputs_are_required():
    with pytest.raises(UsageError, match="outputs= is required"):
        Capture().client().publish_service("s", code=annotated)


def test_an_unsupported_input_type_is_refused_naming_the_input():
    with pytest.raises(UsageError, match="input 'hp' is declared as list"):
        Capture().client().publish_service(
            "s", code=manual_transmission, inputs={"hp": list, "wt": float}, outputs={"a": float}
        )
    with pytest.raises(ValueError, match="output 'a' is declared as 'decimal'"):
        Capture().client().publish_service(
            "s",
            code=manual_transmission,
            inputs={"hp": float, "wt": float},
            outputs={"a": "decimal"},
        )


def test_r_type_names_are_sent_as_batchserve_types():
    server = Capture()
    server.client().publish_service(
        "s",
        code=manual_transmission,
        inputs={"hp": "numeric", "wt": "integer"},
        outputs={"a": "character", "b": "logical"},
    )
    assert server.metadata["inputs"] == {"hp": "float", "wt": "int"}
    assert server.metadata["outputs"] == {"a": "str", "b": "bool"}


def test_code_that_is_neither_a_function_nor_a_string_is_refused():
    with pytest.raises(UsageError, match="code must be a function"):
        Capture().client().publish_service("s", code=42, inputs={}, outputs={"a": float})


def test_a_model_that_cannot_be_serialised_is_named():
    with pytest.raises(UsageError, match="model 'lock' cannot be serialised"):
        Capture().client().publish_service(
            "s", code=annotated, outputs={"a": float}, models={"lock": threading.Lock()}
        )


def test_a_function_from_the_users_own_module_is_sent_by_value():
    """A worker cannot import this test module, so the function must travel with its code."""
    server = Capture()
    server.client().publish_service("s", code=annotated, outputs={"a": float})
    load_and_call = (
        "import pickle, sys; bundle = pickle.loads(sys.stdin.buffer.read()); "
        "print(bundle['code'](3.0, 1.0, 'x', True, 1))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", load_and_call],
        input=server.bundle_bytes,
        capture_output=True,
        env=env,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == "3.0"


def test_a_vectorized_function_is_published_in_vectorized_mode():
    server = Capture()
    server.client().publish_service(
        "scorer",
        code=manual_transmission,
        inputs={"hp": float, "wt": float},
        outputs={"answer": float},
        version="v1",
        vectorized=True,
    )
    assert server.metadata["mode"] == "vectorized"
