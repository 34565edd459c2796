"""Preparing a publication: the ``metadata`` and the ``bundle`` of ``POST /v1/services``.

The bundle is a cloudpickled dict (``docs/rest-api.md``, "The bundle") holding the service's code
(a function or a code string), its init code, and its named models and objects. It is opened only
inside the server's worker processes.
"""

from __future__ import annotations

import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from batchserve.client._types import default_alias, infer_inputs, schema
from batchserve.errors import UsageError
from batchserve.resources import DEFAULT_RESOURCES as DEFAULT_RESOURCES
from batchserve.resources import ResourceError, normalize_resources

BUNDLE_FORMAT = 1


@dataclass(frozen=True)
class Publication:
    metadata: dict[str, Any]
    bundle: bytes


def prepare_publication(
    name: str,
    code: Any,
    *,
    init: Any = None,
    models: Mapping[str, Any] | None = None,
    objects: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    artifacts: list[str] | str | None = None,
    version: str | None = None,
    description: str = "",
    alias: str | None = None,
    vectorized: bool = False,
    resources: Mapping[str, Any] | None = None,
) -> Publication:
    """Check every argument of ``Client.publish_service`` and build what is sent."""
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"A service name must be a non-empty string, not {name!r}.")
    if callable(code):
        kind = "callable"
    elif isinstance(code, str):
        kind = "code"
    else:
        raise UsageError(
            f"code must be a function (or other callable) or a string of Python code, not a "
            f"{type(code).__name__}."
        )
    if init is not None and not callable(init) and not isinstance(init, str):
        raise UsageError(f"init must be a function, a string of Python code or None, not {init!r}.")
    if version is not None and not isinstance(version, str):
        raise UsageError(f"version must be a string like 'v1.0.0', not {version!r}.")
    if vectorized and kind != "callable":
        raise UsageError(
            "A vectorized service needs a function (called with a DataFrame), not code."
        )
    if alias is not None and (not isinstance(alias, str) or not alias):
        raise UsageError(f"alias must be a non-empty string, not {alias!r}.")
    needs = worker_resources(resources) if resources is not None else None

    metadata: dict[str, Any] = {
        "name": name,
        "description": description or "",
        "alias": alias or default_alias(code),
        "mode": "vectorized" if vectorized else "row",
        "bundle_kind": kind,  # what ServicePublic reports; the server cannot unpickle to see it
        "inputs": _inputs(code, inputs),
        "outputs": _outputs(outputs),
        "artifacts": _artifact_names(artifacts),
    }
    if version:  # left out (or blank), the server generates one
        metadata["version"] = version
    if needs is not None:  # left out, the server's defaults (and what older servers accept)
        metadata["resources"] = needs

    bundle = {
        "format": BUNDLE_FORMAT,
        "kind": kind,
        "code": code,
        "init": init,
        "models": _named(models, "models"),
        "objects": _named(objects, "objects"),
    }
    return Publication(metadata=metadata, bundle=_pickle(bundle))


def worker_resources(resources: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``resources=`` of ``publish_service`` and return it as sent: every resource, the
    memory in bytes (None: none reserved)."""
    try:
        return normalize_resources(resources, spelling="python")
    except ResourceError as exc:
        raise UsageError(str(exc)) from None


def _inputs(code: Any, inputs: Mapping[str, Any] | None) -> dict[str, str]:
    if inputs is not None:
        return schema(inputs, kind="input")
    inferred = infer_inputs(code) if callable(code) else None
    if inferred is None:
        raise UsageError(
            "inputs= is required, e.g. inputs={'hp': float, 'wt': float}. It may be left out only "
            "when code is a function whose parameters are all annotated with int, float, str or "
            "bool."
        )
    return inferred


def _outputs(outputs: Mapping[str, Any] | None) -> dict[str, str]:
    if not outputs:
        raise UsageError(
            "outputs= is required: name what the code returns, e.g. outputs={'answer': float}. "
            "A function's return value becomes the first output."
        )
    return schema(outputs, kind="output")


def _artifact_names(artifacts: list[str] | str | None) -> list[str]:
    if artifacts is None:
        return []
    if isinstance(artifacts, str):
        return [artifacts]
    names = list(artifacts)
    for artifact in names:
        if not isinstance(artifact, str) or not artifact:
            raise UsageError(f"Every artifact must be a file name, not {artifact!r}.")
    return names


def _named(objects: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if objects is None:
        return {}
    if not isinstance(objects, Mapping) or not all(isinstance(k, str) for k in objects):
        raise UsageError(f"{what} must be a dict of name -> object, like {{'cars_model': model}}.")
    return dict(objects)


def job_task_bundle(code: Any, kind: str) -> tuple[bytes, str]:
    """A batch's job preparation or release as the server takes it, and its name: a function
    called with no arguments in each worker, or Python source text run there."""
    if isinstance(code, str):
        if not code.strip():
            raise UsageError(f"{kind} is empty: give a function, or Python source text.")
        name = kind
    elif callable(code):
        name = str(getattr(code, "__qualname__", None) or getattr(code, "__name__", kind))[:200]
    else:
        raise UsageError(
            f"{kind} must be a function (called with no arguments in each worker) or Python "
            f"source text, not {type(code).__name__}."
        )
    bundle = {"code": code, "init": None, "models": {}, "objects": {}}
    return _pickle(bundle), name


def _pickle(bundle: dict[str, Any]) -> bytes:
    import cloudpickle

    # cloudpickle stores a function or class from an importable module as a reference to that
    # module, which the server's workers could not import when it is the user's own file (a helper
    # module, a test module). Such modules are pickled by value; installed packages and the
    # standard library stay references.
    parts = [bundle["code"], bundle["init"], *bundle["models"].values()]
    parts += bundle["objects"].values()
    registered = []
    try:
        for module in _user_modules(parts):
            if module.__name__ not in cloudpickle.list_registry_pickle_by_value():
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
        return bytes(cloudpickle.dumps(bundle))
    except Exception as exc:
        raise UsageError(
            f"The {_culprit(bundle)} cannot be serialised to send to the server ({exc})."
        ) from exc
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


def _user_modules(values: list[Any]) -> list[ModuleType]:
    """The modules, outside installed packages and the standard library, that define ``values``
    (functions, or the classes of models and objects)."""
    paths = sysconfig.get_paths()
    installed = [Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    found: dict[str, ModuleType] = {}
    for value in values:
        if value is None or isinstance(value, str):
            continue
        name = getattr(value, "__module__", None) or type(value).__module__
        if not isinstance(name, str) or name in ("__main__", "builtins") or name in found:
            continue
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if module is None or not file or name.split(".")[0] == "batchserve":
            continue
        path = Path(file).resolve()
        if not any(path.is_relative_to(root) for root in installed):
            found[name] = module
    return list(found.values())


def _culprit(bundle: dict[str, Any]) -> str:
    """Which part of the bundle fails to pickle, for the error message."""
    import cloudpickle

    parts: list[tuple[str, Any]] = [("code", bundle["code"]), ("init code", bundle["init"])]
    parts += [(f"model {k!r}", v) for k, v in bundle["models"].items()]
    parts += [(f"object {k!r}", v) for k, v in bundle["objects"].items()]
    for label, value in parts:
        try:
            cloudpickle.dumps(value)
        except Exception:
            return label
    return "service bundle"
