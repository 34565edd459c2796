"""Service bundles from ML Server publish requests, built without opening user objects."""

from __future__ import annotations

import cloudpickle

from batchserve.engine.errors import BadRequest


def check_source(source: str | None, field: str) -> None:
    """Compile (never run) the source, so a syntax error is a 400 now rather than a failed
    record later."""
    if source is None:
        return
    try:
        compile(source, f"<{field}>", "exec")
    except SyntaxError as exc:
        raise BadRequest(
            f"The {field} is not valid Python: {exc.msg} (line {exc.lineno}).", field=field
        ) from None


def build_bundle(code: str, init: str | None, objects: dict[str, bytes]) -> bytes:
    """A ``code`` bundle whose models and objects are still dill bytes.

    The worker runtime opens ``dill_objects`` when it loads the bundle; the dict pickled here
    holds only text and bytes.
    """
    check_source(code, "code")
    check_source(init, "initCode")
    return cloudpickle.dumps(
        {
            "format": 1,
            "kind": "code",
            "code": code,
            "init": init or None,
            "models": {},
            "objects": {},
            "dill_objects": dict(objects),
        }
    )
