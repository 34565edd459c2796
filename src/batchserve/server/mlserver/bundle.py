"""Service bundles from ML Server publish requests, built without opening user objects."""

from __future__ import annotations

import cloudpickle

from batchserve.engine.errors import BadRequest, PayloadTooLarge

#: The longest ``code`` or ``initCode`` accepted, in characters. Source is compiled in the API
#: process to check it, so its size bounds that work; models and data belong in the snapshot's
#: workspace objects, not in the source.
MAX_SOURCE_CHARS = 1 << 20


def check_source(source: str | None, field: str) -> None:
    """Compile (never run) the source, so a syntax error is a 400 now rather than a failed
    record later."""
    if source is None:
        return
    if len(source) > MAX_SOURCE_CHARS:
        raise PayloadTooLarge(
            f"The {field} is {len(source)} characters long; at most {MAX_SOURCE_CHARS} are "
            "accepted. Put models and data into the session's workspace objects (a snapshot) "
            "rather than into the source.",
            field=field,
        )
    try:
        compile(source, f"<{field}>", "exec", dont_inherit=True)
    except SyntaxError as exc:  # IndentationError and TabError too
        raise BadRequest(
            f"The {field} is not valid Python: {exc.msg} (line {exc.lineno}).", field=field
        ) from None
    except (RecursionError, MemoryError):
        # Python's compiler recurses once per level of nesting (a long chain of operators is
        # one level per operator), and gives up past its limit.
        raise BadRequest(
            f"The {field} nests expressions too deeply for Python to compile; split long "
            "expressions into several statements.",
            field=field,
        ) from None
    except ValueError as exc:  # a NUL character, on Python versions that raise this for it
        raise BadRequest(f"The {field} is not valid Python: {exc}.", field=field) from None


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
