"""batchserve.compat.azureml: the fix that makes Machine Learning Server's client work on this
Python, and the error it gives when that client is not installed."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import pytest


def test_the_client_builds_service_methods_after_the_import() -> None:
    import azureml.common.utils
    import azureml.deploy.server.service
    from azureml.deploy.server.service import Service

    import batchserve.compat.azureml as compat

    assert azureml.common.utils.function_beget is compat.function_beget
    assert azureml.deploy.server.service.function_beget is compat.function_beget

    posted = []

    class Recording(Service):
        def _consume(self, inputs):  # type: ignore[no-untyped-def]
            posted.append(inputs)
            return "posted"

    meta = {
        "name": "mtService",
        "version": "v1",
        "description": "",
        "operationId": "manual_transmission",
        "inputParameterDefinitions": [
            {"name": "hp", "type": "numeric"},
            {"name": "wt", "type": "numeric"},
        ],
        "outputParameterDefinitions": [],
    }
    svc = Recording(meta, http_client=None)

    assert svc.manual_transmission(120, wt=2.8) == "posted"
    assert posted == [{"hp": 120, "wt": 2.8}]
    assert list(inspect.signature(type(svc).manual_transmission).parameters) == ["self", "hp", "wt"]
    missing = r"manual_transmission\(\) missing a required argument: 'wt'"
    with pytest.raises(TypeError, match=missing):
        svc.manual_transmission(120)


def test_inputs_python_cannot_name_are_given_by_position() -> None:
    from batchserve.compat.azureml import function_beget

    class Target:
        def _consume(self, inputs):  # type: ignore[no-untyped-def]
            return inputs

    Target.run = function_beget(None, "run", ["self", "horse power", "class"])  # type: ignore[arg-type, attr-defined]
    assert Target().run(1, 2) == {"horse power": 1, "class": 2}  # type: ignore[attr-defined]


def test_importing_it_without_the_client_says_what_to_install() -> None:
    # A None entry in sys.modules makes Python's import of that module fail, as when it is
    # not installed; a process of its own keeps this test's modules as they are.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["azureml"] = None
        import batchserve.compat.azureml
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)

    assert run.returncode != 0
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: batchserve.compat.azureml fixes")
    assert "pip install azureml-model-management-sdk" in last_line
