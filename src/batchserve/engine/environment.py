"""A batch's ``environment``: the variables set for its service code, checked once at the edge.

A variable that cannot be set (``A=B``, an empty name) would fail every record of the batch, so
it is refused when the batch is created. So is a variable that changes what code a process loads
or runs (``LD_PRELOAD``, ``PYTHONPATH``, ``BASH_ENV``, ...): the environment is chosen by whoever
creates the batch, any role, while the code that runs is the service's publisher's. Owners may
set them; an operator may allow some to everyone (``Settings.allowed_environment``).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from batchserve.engine.errors import BadRequest, Forbidden

MAX_VARIABLES = 100
MAX_NAME_LENGTH = 256
MAX_BYTES = 64 * 1024  # names and values of a batch's variables together, UTF-8

# A POSIX name (portable character set): what a shell can export and a child process inherits.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_LOADER = "it makes the dynamic loader load or inspect libraries of the caller's choosing"
_PYTHON = "it changes what the Python interpreter imports or runs"
_SHELL = "it makes shells run code of the caller's choosing"
_RUNTIME = "it changes what another language runtime loads or runs"
_LIBC = "it changes which files the C library loads code or data from"

# By prefix, then by name. Names are compared upper-cased, so that a refused variable cannot
# pass in another case (on systems whose variable names ignore case).
_REFUSED_PREFIXES = (
    ("LD_", _LOADER),
    ("DYLD_", _LOADER),
    ("PYTHON", _PYTHON),
    ("BASH_FUNC_", _SHELL),
    ("BATCHSERVE_", "it is the server's own configuration"),
)
_REFUSED = {
    "BASH_ENV": _SHELL,
    "ENV": _SHELL,
    "SHELLOPTS": _SHELL,
    "BASHOPTS": _SHELL,
    "PS4": _SHELL,
    "IFS": _SHELL,
    "PROMPT_COMMAND": _SHELL,
    "PATH": "it chooses which programs run when the service starts one by name",
    "PERL5LIB": _RUNTIME,
    "PERL5OPT": _RUNTIME,
    "PERLLIB": _RUNTIME,
    "RUBYLIB": _RUNTIME,
    "RUBYOPT": _RUNTIME,
    "NODE_OPTIONS": _RUNTIME,
    "NODE_PATH": _RUNTIME,
    "JAVA_TOOL_OPTIONS": _RUNTIME,
    "JDK_JAVA_OPTIONS": _RUNTIME,
    "_JAVA_OPTIONS": _RUNTIME,
    "GCONV_PATH": _LIBC,
    "GLIBC_TUNABLES": _LIBC,
    "LOCPATH": _LIBC,
    "NLSPATH": _LIBC,
    "HOSTALIASES": _LIBC,
    "MALLOC_TRACE": _LIBC,
}
# Python variables that only tune the interpreter's behaviour, never what it runs.
_HARMLESS_PYTHON = frozenset(
    {
        "PYTHONUNBUFFERED",
        "PYTHONHASHSEED",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONFAULTHANDLER",
    }
)


def refused_because(name: str) -> str | None:
    """Why ``name`` may not be set by any user, or None when it may."""
    upper = name.upper()
    if upper in _HARMLESS_PYTHON:
        return None
    if upper in _REFUSED:
        return _REFUSED[upper]
    return next((why for prefix, why in _REFUSED_PREFIXES if upper.startswith(prefix)), None)


def check_environment(
    variables: Any, *, trusted: bool, allowed: Collection[str] = ()
) -> dict[str, str]:
    """``variables`` if they can be set for service code; else a 400 (or a 403 for a refused
    variable) saying which one and why. ``trusted`` callers (owners) may set refused variables;
    the names in ``allowed`` anyone may."""
    if not isinstance(variables, dict):
        raise BadRequest('environment must be an object of text values, like {"MODE": "fast"}.')
    if len(variables) > MAX_VARIABLES:
        raise BadRequest(
            f"environment has {len(variables)} variables; at most {MAX_VARIABLES} are allowed."
        )
    size = 0
    for name, value in variables.items():
        if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_NAME_LENGTH:
            raise BadRequest(
                f"The environment variable name {name!r} is not valid: use up to "
                f"{MAX_NAME_LENGTH} letters, digits and '_', not starting with a digit "
                "(no '=', no spaces)."
            )
        if not isinstance(value, str):
            raise BadRequest(f"The environment variable {name} must have a text value.")
        if "\x00" in value:
            raise BadRequest(
                f"The value of the environment variable {name} holds a NUL character (\\x00), "
                "which no environment can hold; leave it out."
            )
        size += len(name.encode()) + len(value.encode())
        why = refused_because(name)
        if why is not None and not trusted and name not in allowed:
            raise Forbidden(
                f"The environment variable {name} may not be set: {why}. Only owners may set "
                "it (the server's operator may allow it to everyone with "
                "BATCHSERVE_ALLOWED_ENVIRONMENT); leave it out.",
                variable=name,
            )
    if size > MAX_BYTES:
        raise BadRequest(
            f"environment holds {size} bytes of names and values; at most {MAX_BYTES} are allowed."
        )
    return dict(variables)
