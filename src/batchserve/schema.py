"""Input and output schemas: the declared types and the checks of values against them.

A schema maps a parameter name to one of the type names ``int``, ``float``, ``str``, ``bool``
(declared with those or other spellings, see :mod:`batchserve.type_names`).
The same checks run in the API (column types of an upload) and in the workers (each record).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchserve.type_names import ACCEPTED, TYPE_SPELLINGS

ARROW_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
    "bool": pa.bool_(),
}

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: The highest record index (or count of records) a request may name: far beyond any batch, and
#: the largest integer every JSON client reads exactly. Indexes past it would overflow the
#: store's 64-bit integers once a page's end is added.
MAX_RECORD_INDEX = 2**53 - 1
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


class SchemaError(ValueError):
    """A value or a declaration that does not fit the schema; the message says what to do."""


#: JSON that nests arrays and objects deeper than this is refused before it is parsed. Records
#: hold single values and metadata holds text, so real requests stay far below it; Python's and
#: pyarrow's JSON parsers recurse once per level, and 50,000 levels exhaust the stack.
MAX_JSON_DEPTH = 64
#: Bytes that are not structure, for ``bytes.translate`` to drop: all but quotes (which start and
#: end strings), brackets and line breaks.
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{}\n')
_DEPTH_SLICE = 1 << 20  # bytes counted at a time, so the counting needs little memory


def json_too_deep(data: bytes, *, lines: bool = False, limit: int = MAX_JSON_DEPTH) -> int | None:
    """The 1-based line of JSON text where arrays and objects first nest more than ``limit``
    levels deep, or None when they never do; read without parsing it (pyarrow's parser crashes
    the process on such text, and Python's raises RecursionError).

    With ``lines`` (JSON Lines) each line is a document of its own. Text that is not valid JSON
    may be measured wrongly, but only past the point where a parser stops reading it.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return None
    # Only the structure is kept (the bytes methods run at memory speed): escaped backslashes,
    # then escaped quotes (neither ends a string), then all but quotes, brackets and line
    # breaks, then pairs of adjacent quotes (which leave every other quote's count as even or
    # odd as it was). A bracket after an odd number of quotes (on its line) is text in a string.
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    data = data.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    codes = np.frombuffer(data, dtype=np.uint8)
    depth = quotes = 0  # at the start of the slice (of its line, with ``lines``)
    line = 1  # of the start of the slice
    for start in range(0, len(codes), _DEPTH_SLICE):
        part = codes[start : start + _DEPTH_SLICE]
        newline = part == ord("\n")
        restart = None
        if lines and newline.any():
            # Where each position's line starts in this slice (-1: before the slice).
            restart = np.maximum.accumulate(np.where(newline, np.arange(len(part)), -1))
        seen = _running(part == ord('"'), quotes, restart)
        step = (part == ord("[")).astype(np.int64) + (part == ord("{"))
        step -= (part == ord("]")).astype(np.int64) + (part == ord("}"))
        step[seen % 2 == 1] = 0
        level = _running(step, depth, restart)
        over = level > limit
        if over.any():
            return line + int(np.count_nonzero(newline[: int(np.argmax(over))]))
        depth, quotes = int(level[-1]), int(seen[-1])
        line += int(np.count_nonzero(newline))
    return None


def _running(values: np.ndarray, carried: int, restart: np.ndarray | None) -> np.ndarray:
    """The running sum of ``values`` from ``carried``, started again after each line break."""
    total = np.cumsum(values, dtype=np.int64) + carried
    if restart is None:
        return total
    return total - np.where(restart >= 0, total[np.maximum(restart, 0)], 0)


def check_json_depth(
    data: bytes | str, what: str, *, lines: bool = False, lines_before: int = 0
) -> None:
    """Raise :class:`SchemaError` when ``data`` nests deeper than :data:`MAX_JSON_DEPTH`.

    ``what`` names the text in the message ("the body"); with ``lines`` (JSON Lines), the
    message names the line, counting ``lines_before`` lines before ``data``.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    line = json_too_deep(raw, lines=lines)
    if line is not None:
        where = f"Line {lines_before + line} of {what}" if lines else what[:1].upper() + what[1:]
        raise SchemaError(
            f"{where} nests arrays or objects more than {MAX_JSON_DEPTH} levels deep; "
            f"at most {MAX_JSON_DEPTH} are accepted. Send each value as a single number, text "
            "or boolean (a nested structure as JSON text in a str input)."
        )


def check_value_depth(value: Any, what: str) -> None:
    """Raise :class:`SchemaError` when a parsed JSON value (lists and dicts) nests deeper than
    :data:`MAX_JSON_DEPTH`: a body that the web framework parsed itself (below Python's recursion
    limit) would otherwise reach code that walks it recursively. Walked without recursion."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth >= MAX_JSON_DEPTH:
                raise SchemaError(
                    f"{what[:1].upper() + what[1:]} nest arrays or objects more than "
                    f"{MAX_JSON_DEPTH} levels deep; at most {MAX_JSON_DEPTH} are accepted. Send "
                    "each value as a single number, text or boolean."
                )
            pending.extend((child, depth + 1) for child in item)


def normalize_schema(schema: dict[str, Any] | None, what: str) -> dict[str, str]:
    """Check a declared schema and return it with canonical type names."""
    if schema is None:
        return {}
    if not isinstance(schema, dict):
        raise SchemaError(f"{what} must be an object mapping names to types, got {schema!r}.")
    out: dict[str, str] = {}
    for name, type_name in schema.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise SchemaError(
                f"{what}: {name!r} is not a valid parameter name (use a Python identifier)."
            )
        canonical = TYPE_SPELLINGS.get(type_name) if isinstance(type_name, str) else None
        if canonical is None:
            raise SchemaError(f"{what}: '{name}' has type {type_name!r}; declare it as {ACCEPTED}.")
        out[name] = canonical
    return out


def describe(schema: dict[str, str]) -> str:
    """``hp (float), wt (float)`` — for error messages."""
    return ", ".join(f"{n} ({t})" for n, t in schema.items()) or "no inputs"


def coerce(value: Any, type_name: str, name: str, kind: str = "input") -> Any:
    """Return ``value`` as the declared type or raise :class:`SchemaError` saying why.

    Text is parsed leniently (a CSV column may arrive as text when one of its values is bad);
    other values must already be of the declared type (an int is accepted for a float).
    """
    if value is None or (isinstance(value, float) and math.isnan(value) and type_name != "float"):
        if kind == "output":
            raise SchemaError(f"output '{name}' has no value (expected {type_name}); return one.")
        raise SchemaError(f"input '{name}' is missing (no value given; expected {type_name}).")
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars -> Python scalars
    if type_name == "float":
        if isinstance(value, bool):
            raise SchemaError(_wrong(kind, name, type_name, value))
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str) and kind == "input":
            try:
                return float(value.strip())
            except ValueError:
                raise SchemaError(_wrong(kind, name, type_name, value)) from None
    elif type_name == "int":
        if isinstance(value, bool):
            raise SchemaError(_wrong(kind, name, type_name, value))
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            if kind == "output" and not INT64_MIN <= value <= INT64_MAX:
                raise SchemaError(
                    f"output '{name}' is {value}, outside the 64-bit integer range; declare it "
                    "as float or str to return such values."
                )
            return value
        if isinstance(value, str) and kind == "input":
            try:
                return int(value.strip())
            except ValueError:
                raise SchemaError(_wrong(kind, name, type_name, value)) from None
    elif type_name == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and kind == "input" and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif type_name == "str":
        if isinstance(value, str):
            if kind == "output":
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise SchemaError(
                        f"output '{name}' is not valid text (it holds a lone surrogate)."
                    ) from None
            return value
        if kind == "input" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a CSV column of digits declared as text
    raise SchemaError(_wrong(kind, name, type_name, value))


def _wrong(kind: str, name: str, type_name: str, value: Any) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{kind} '{name}' must be {type_name}, got {type(value).__name__} {shown}."


def coerce_record(values: dict[str, Any], schema: dict[str, str]) -> dict[str, Any]:
    """Check one record's inputs; the first problem raises :class:`SchemaError`."""
    return {name: coerce(values.get(name), t, name) for name, t in schema.items()}


def check_columns(columns: list[str], schema: dict[str, str], service: str) -> None:
    """Raise a clear error when a declared input column is missing from an upload."""
    missing = [name for name in schema if name not in columns]
    if missing:
        raise SchemaError(
            f"The records have no column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(m) for m in missing)}; service {service} "
            f"takes the inputs {describe(schema)}. The records have the columns "
            f"{', '.join(repr(c) for c in columns) or '(none)'}. Rename the columns to match the "
            "inputs."
        )


def conform_column(
    column: pa.ChunkedArray | pa.Array, type_name: str
) -> pa.Array | pa.ChunkedArray:
    """Cast an uploaded column to its declared Arrow type when every value allows it.

    When some value does not fit (``"abc"`` in a float column), keep the values as text so the
    record with the bad value fails alone, with a message naming it, while its neighbours run.
    """
    target = ARROW_TYPES[type_name]
    if column.type == target:
        return column
    try:
        # Arrow casts more freely than the per-record check (True -> 1, 2 -> True); such
        # columns go through that check instead, so a value fails exactly as it would alone.
        if type_name == "bool" and pa.types.is_string(column.type):
            raise pa.ArrowInvalid("text booleans are parsed per record")
        if type_name in ("int", "float") and pa.types.is_boolean(column.type):
            raise pa.ArrowInvalid("booleans are not numbers here")
        if type_name == "bool" and pa.types.is_integer(column.type):
            values = pc.unique(column).drop_null().to_pylist()
            if not set(values) <= {0, 1}:
                raise pa.ArrowInvalid("only 0 and 1 are booleans")
        if type_name == "int" and pa.types.is_floating(column.type):
            return column.cast(target, safe=True)
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return column.cast(pa.string()) if not pa.types.is_string(column.type) else column
