"""Preparing a publication: the ``metadata`` and the ``bundle`` of ``POST /v1/services``.

The bundle is a cloudpickled dict (``docs/rest-api.md``, "The bundle") holding the service's code
(a function or a code string), its init code, and its named models and objects. It is opened only
inside the server's worker processes.
"""

from __future__ import annotations

import math
import numbers
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from batchserve.client._types import default_alias, infer_inputs, schema
from batchserve.errors import UsageError

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


#: What each worker is given for a resource ``resources=`` leaves out.
DEFAULT_RESOURCES: dict[str, Any] = {"num_cpus": 1, "num_gpus": 0, "memory": None}
# Ray counts resources in steps of 0.0001: it refuses a smaller non-zero fraction.
_RESOURCE_STEP = 0.0001
# The largest integer every JSON reader keeps exactly.
_MAX_RESOURCE = 2**53 - 1
_EXAMPLE = "{'num_cpus': 2, 'num_gpus': 0.5, 'memory': '4GiB'}"


def worker_resources(resources: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``resources=`` of ``publish_service`` and return it as sent: every resource, the
    memory in bytes (None: none reserved)."""
    if not isinstance(resources, Mapping):
        raise UsageError(
            f"resources must be a dict like {_EXAMPLE}, not a {type(resources).__name__}."
        )
    unknown = [k for k in resources if k not in DEFAULT_RESOURCES]
    if unknown:
        raise UsageError(
            f"resources has the unknown key(s) {', '.join(map(_shown, unknown))}: a service may "
            f"ask for num_cpus, num_gpus and memory, like {_EXAMPLE}."
        )
    out = dict(DEFAULT_RESOURCES)
    for key, zero_ok in (("num_cpus", False), ("num_gpus", True)):
        if resources.get(key) is not None:
            out[key] = _count(resources[key], key, zero_ok=zero_ok)
    out["memory"] = _memory(resources.get("memory"))
    return out


def _count(value: Any, key: str, *, zero_ok: bool) -> int | float:
    """A CPU or GPU count: a number, fractions allowed (workers may share a CPU or GPU)."""
    example = "0 for none, 1, or a fraction like 0.5" if zero_ok else "1, 2, or 0.5"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f"resources {key} must be a number, like {example}; not {_shown(value)}.")
    if isinstance(value, numbers.Integral):
        number: int | float = int(value)
    else:
        number = float(value)
        if not math.isfinite(number):
            raise UsageError(f"resources {key} must be a number, like {example}; not {number}.")
    if number < 0 or (number == 0 and not zero_ok):
        need = "0 or more" if zero_ok else "more than 0 (every worker needs some CPU)"
        raise UsageError(f"resources {key} is {_shown(number)}; it must be {need}: give {example}.")
    if 0 < number < _RESOURCE_STEP:
        raise UsageError(
            f"resources {key} is {number}; fractions finer than {_RESOURCE_STEP} cannot be "
            f"reserved: give {example}."
        )
    if number > _MAX_RESOURCE:
        raise UsageError(
            f"resources {key} is {_shown(number)}, more than any machine has: give {example}."
        )
    return int(number) if float(number).is_integer() else number


def _memory(value: Any) -> int | None:
    """Memory in bytes, from an integer or a size like ``'2GiB'``; None when none is reserved."""
    how = "give bytes (an int) or a size like '2GiB' or '512MB' (0 or None: none reserved)"
    if value is None:
        return None
    size: int | float = math.nan
    if isinstance(value, str):
        from batchserve.settings import parse_size

        parsed: int | float | None
        try:
            parsed = parse_size(value)
        except (ValueError, OverflowError):  # OverflowError: 'inf' and its like
            parsed = math.nan
        if parsed is None:  # 'none', or blank
            return None
        size = parsed
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        size = int(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        size = float(value)
    if isinstance(size, float) and not (math.isfinite(size) and size.is_integer()):
        raise UsageError(f"resources memory {_shown(value)} is not a number of bytes; {how}.")
    if size < 0:
        raise UsageError(f"resources memory is {_shown(value)}, which is negative; {how}.")
    if size > _MAX_RESOURCE:
        raise UsageError(f"resources memory {_shown(value)} is more than any machine has; {how}.")
    return int(size) or None


def _shown(value: Any) -> str:
    """``value`` as a message quotes it: briefly."""
    try:
        text = repr(value)
    except ValueError:  # an integer past the digits Python turns into text
        text = "a number too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


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
