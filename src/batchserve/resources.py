"""What each worker of a service is given: the ``resources`` a service asks for, and their checks.

A service may ask for ``num_cpus`` and ``num_gpus`` (numbers; a fraction shares a CPU or GPU)
and ``memory`` (bytes, or a size like ``"2GiB"``). The same checks run in the SDK (before
anything is sent) and in the engine (at publish); each turns :class:`ResourceError` into an error
of its own. A refusal is spelled for the one who wrote the value: in Python terms for the SDK's
callers, in JSON terms for the API's.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Literal

#: What a worker of a service is given for each resource the service does not name: one CPU, no
#: GPU, and no memory reserved (None).
DEFAULT_RESOURCES: dict[str, Any] = {"num_cpus": 1, "num_gpus": 0, "memory": None}
# Ray counts resources in steps of 0.0001: it refuses a smaller non-zero fraction.
_RESOURCE_STEP = 0.0001
# The largest integer every JSON reader keeps exactly.
_MAX_RESOURCE = 2**53 - 1

_PYTHON_EXAMPLE = "{'num_cpus': 2, 'num_gpus': 0.5, 'memory': '4GiB'}"
_JSON_EXAMPLE = '{"num_cpus": 1, "num_gpus": 0, "memory": "2GiB"}'

#: How a refusal spells what it asks for: ``"python"`` (a dict, an int, None) for the SDK's
#: callers, ``"json"`` (an object, an integer, null) for the API's.
Spelling = Literal["python", "json"]


class ResourceError(ValueError):
    """Resources that are malformed; the message says what to give. ``details`` names what was
    wrong: the ``key`` of a resource, or the ``unknown`` keys."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


def normalize_resources(value: Any, *, spelling: Spelling = "json") -> dict[str, Any]:
    """What a service asks each of its workers for, checked, with the defaults filled in:
    ``{"num_cpus": number > 0, "num_gpus": number >= 0, "memory": bytes or None}``. A size
    string (``"2GiB"``) gives the memory in bytes; None or 0 reserves none. None asks for the
    defaults. Raises :class:`ResourceError`, its message in ``spelling``."""
    if value is None:
        return dict(DEFAULT_RESOURCES)
    python = spelling == "python"
    if not isinstance(value, Mapping):
        if python:
            what = f"a dict like {_PYTHON_EXAMPLE}, not a {type(value).__name__}"
        else:
            what = f"an object like {_JSON_EXAMPLE}, not {_json_kind(value)}"
        raise ResourceError(f"resources must be {what}.")
    unknown = [k for k in value if k not in DEFAULT_RESOURCES]
    if unknown:
        names = ", ".join(map(shown, unknown))
        if python:
            message = (
                f"resources has the unknown key(s) {names}: a service may ask for num_cpus, "
                f"num_gpus and memory, like {_PYTHON_EXAMPLE}."
            )
        else:
            message = (
                f"Unknown resource {names}: a service may ask for num_cpus, num_gpus and memory "
                "only."
            )
        raise ResourceError(message, unknown=unknown)
    # The SDK's callers passed each resource inside ``resources=``: its messages say so.
    prefix = "resources " if python else ""
    out = dict(DEFAULT_RESOURCES)
    for key, zero_ok in (("num_cpus", False), ("num_gpus", True)):
        if value.get(key) is not None:
            out[key] = _count(value[key], key, prefix + key, zero_ok=zero_ok)
    out["memory"] = _memory(value.get("memory"), prefix + "memory", python=python)
    return out


def _count(value: Any, key: str, name: str, *, zero_ok: bool) -> int | float:
    """A CPU or GPU count: a number, fractions allowed (workers may share a CPU or GPU)."""
    example = "0 for none, 1, or a fraction like 0.5" if zero_ok else "1, 2, or 0.5"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ResourceError(
            f"{name} must be a number, like {example}; not {shown(value)}.", key=key
        )
    if isinstance(value, numbers.Integral):
        number: int | float = int(value)
    else:
        number = float(value)
        if not math.isfinite(number):
            raise ResourceError(
                f"{name} must be a number, like {example}; not {shown(number)}.", key=key
            )
    if number < 0 or (number == 0 and not zero_ok):
        need = "0 or more" if zero_ok else "more than 0 (every worker needs some CPU)"
        raise ResourceError(
            f"{name} is {shown(number)}; it must be {need}: give {example}.", key=key
        )
    if 0 < number < _RESOURCE_STEP:
        raise ResourceError(
            f"{name} is {shown(number)}; fractions finer than {_RESOURCE_STEP} cannot be "
            f"reserved: give {example}.",
            key=key,
        )
    if number > _MAX_RESOURCE:
        raise ResourceError(
            f"{name} is {shown(number)}, more than any machine has: give {example}.", key=key
        )
    return int(number) if float(number).is_integer() else number


def _memory(value: Any, name: str, *, python: bool) -> int | None:
    """Memory in bytes, from an integer or a size like ``'2GiB'``; None when none is reserved."""
    integer, null = ("an int", "None") if python else ("an integer", "null")
    how = f"give bytes ({integer}) or a size like '2GiB' or '512MB' (0 or {null}: none reserved)"
    if value is None:
        return None
    size: int | float = math.nan
    if isinstance(value, str):
        # Imported here: the settings module needs pydantic, which the SDK does not load.
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
        raise ResourceError(f"{name} {shown(value)} is not a number of bytes; {how}.", key="memory")
    if size < 0:
        raise ResourceError(f"{name} is {shown(value)}, which is negative; {how}.", key="memory")
    if size > _MAX_RESOURCE:
        raise ResourceError(
            f"{name} {shown(value)} is more than any machine has; {how}.", key="memory"
        )
    return int(size) or None


def _json_kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean"}.get(type(value), shown(value))


def shown(value: Any) -> str:
    """``value`` as a message quotes it: briefly."""
    try:
        text = repr(value)
    except ValueError:  # an integer past the digits Python turns into text
        text = "a number too long to show"
    return text if len(text) <= 40 else text[:37] + "..."
