"""schemathesis over the server's OpenAPI document: generated requests to every route, as an
owner, on a server of the test's own, and not one of them is answered with a server error.

Each operation gets a bounded number of valid and of invalid requests (``FUZZ_EXAMPLES`` of
each, default 15), so the whole run stays around a minute on two cores; raise it to look harder.
Only the status is checked, not full conformance to the document. (schemathesis's own pytest
integration is not used: it reaches into pytest internals that pytest 9 no longer has.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from tests.e2e.conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
#: Users the fuzzing must not change: its own owner, whose token it uses, and the admin.
KEPT_USERS = {"admin", "fuzzer"}
#: Path parameters of things that exist: every other request names them, so that the fuzzing
#: reaches past the lookups (the batch's id is filled in once it is made).
REAL = {"name": "fuzzsvc", "version": "v1", "index": 0}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """A server of its own (the fuzzing changes users and services), and an owner's token."""
    proc = ServerProcess(tmp_path_factory.mktemp("fuzz") / "home", workers=1).start()
    try:
        admin = httpx.post(
            f"{proc.url}/login", json={"username": "admin", "password": ADMIN_PASSWORD}
        ).json()["access_token"]
        made = httpx.post(
            f"{proc.url}/v1/users",
            json={"username": "fuzzer", "password": "fuzzer-password-1", "role": "owner"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert made.status_code == 201, made.text
        token = httpx.post(
            f"{proc.url}/login", json={"username": "fuzzer", "password": "fuzzer-password-1"}
        ).json()["access_token"]
        with httpx.Client(
            base_url=proc.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as http:
            published = http.post(
                "/services/fuzzsvc/v1",
                json={
                    "code": "y = x",
                    "inputParameterDefinitions": [{"name": "x", "type": "numeric"}],
                    "outputParameterDefinitions": [{"name": "y", "type": "numeric"}],
                },
            )
            assert published.status_code == 201, published.text
            made = http.post(
                "/v1/services/fuzzsvc/v1/batches",
                content=b"x\n1\n2\n",
                headers={"Content-Type": "text/csv"},
            )
            REAL["batch_id"] = REAL["execution_id"] = made.json()["id"]
        yield proc, token
    finally:
        proc.stop()


def test_no_request_gets_a_server_error(fuzzed: tuple[ServerProcess, str]) -> None:
    """Valid and invalid requests (by the document) to each operation, a few of each."""
    proc, token = fuzzed
    schema = schemathesis.openapi.from_url(f"{proc.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40
    errors: list[str] = []
    statuses: list[int] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, proc.url, token, statuses)()
            except Unsatisfiable:  # no request breaks this operation's document (no parameter)
                pass
            except Exception as exc:  # every operation is tried; the failures are listed
                errors.append(f"{operation.label} ({mode}): {str(exc)[:600]}")
    assert not errors, "\n\n".join(errors)
    assert len(statuses) > 10 * len(operations)


def _fuzz(operation: Any, mode: GenerationMode, url: str, token: str, statuses: list[int]) -> Any:
    """A Hypothesis test of ``operation``: requests of ``mode`` get no server error."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def call(case: Any) -> None:
        real = len(statuses) % 2 == 0
        for key, value in (case.path_parameters or {}).items():
            if key == "username" and str(value).strip().lower() in KEPT_USERS:
                case.path_parameters[key] = "someone-else"
            elif real and key in REAL and mode == GenerationMode.POSITIVE:
                case.path_parameters[key] = REAL[key]
        # The case's own headers win over call()'s: the generated ones may hold another
        # Authorization (the document declares the bearer scheme).
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
        response = case.call(base_url=url, timeout=30)
        statuses.append(response.status_code)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
        )

    return call


def test_the_fuzzed_server_logged_no_traceback(fuzzed: tuple[ServerProcess, str]) -> None:
    """Runs after the fuzzing (tests run in file order): nothing it sent made the server log an
    unexpected error."""
    proc, _ = fuzzed
    assert isinstance(proc.log, Path)
    log = proc.log.read_text()
    assert "Traceback" not in log, log[-5000:]
