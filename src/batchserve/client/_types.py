"""Input and output schemas: how types are spelled on the wire, and what can be inferred.

A service declares each input and output as one of ``int``, ``float``, ``str``, ``bool``; on the
wire these are the strings ``"int"``, ``"float"``, ``"str"``, ``"bool"``. The SDK accepts the
types, those strings and R's names (``"integer"``, ``"numeric"``, ``"character"``,
``"logical"``, see :mod:`batchserve.type_names`) and refuses anything else before sending,
naming the offending input or output.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from batchserve.errors import UsageError
from batchserve.type_names import ACCEPTED, TYPE_SPELLINGS

WIRE_TYPES: dict[type, str] = {int: "int", float: "float", str: "str", bool: "bool"}
WIRE_NAMES = frozenset(WIRE_TYPES.values())


def wire_type(value: Any, *, kind: str, name: str) -> str:
    """The wire spelling of the type ``value`` declared for the ``kind`` (input/output) ``name``."""
    if isinstance(value, str) and value in TYPE_SPELLINGS:
        return TYPE_SPELLINGS[value]
    if isinstance(value, type) and value in WIRE_TYPES:
        return WIRE_TYPES[value]
    shown = value.__name__ if isinstance(value, type) else repr(value)
    raise UsageError(
        f"The {kind} {name!r} is declared as {shown}, which a service cannot use: declare it as "
        f"{ACCEPTED}, as a type or a string."
    )


def schema(mapping: Any, *, kind: str) -> dict[str, str]:
    """Check and normalise an ``inputs=`` or ``outputs=`` dict to ``{name: wire type}``."""
    if not isinstance(mapping, Mapping):
        raise UsageError(
            f"{kind}s must be a dict of name -> type, like {{'hp': float}}, "
            f"not a {type(mapping).__name__}."
        )
    out: dict[str, str] = {}
    for name, value in mapping.items():
        if not isinstance(name, str) or not name:
            raise UsageError(f"Every {kind} name must be a non-empty string, not {name!r}.")
        out[name] = wire_type(value, kind=kind, name=name)
    return out


def infer_inputs(fn: Callable[..., Any]) -> dict[str, str] | None:
    """The inputs of ``fn`` read from its annotations, or None unless every parameter has one.

    Only a signature whose parameters are all annotated with int, float, str or bool is read;
    anything less explicit must be declared with ``inputs=``.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        # Resolves string annotations (``from __future__ import annotations``).
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable names, or an object get_type_hints does not handle
        hints = {}
    inputs: dict[str, str] = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            return None
        annotation = hints.get(param.name, param.annotation)
        if isinstance(annotation, str) and annotation in WIRE_NAMES:
            inputs[param.name] = annotation
        elif isinstance(annotation, type) and annotation in WIRE_TYPES:
            inputs[param.name] = WIRE_TYPES[annotation]
        else:
            return None
    return inputs or None


def default_alias(code: Any) -> str:
    """The consume method's name: the function's own name, else ``consume`` (as ML Server does)."""
    name = getattr(code, "__name__", None) if callable(code) else None
    return name if isinstance(name, str) and name.isidentifier() else "consume"


def plain(value: Any) -> Any:
    """A JSON-encodable form of one input value (numpy scalars become Python numbers)."""
    is_numpy_scalar = type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0
    if is_numpy_scalar and hasattr(value, "item"):
        return value.item()
    return value
