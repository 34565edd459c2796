"""Service bundles: loading a published service inside a worker and calling it per record.

A bundle is a cloudpickle of ``{"format", "kind", "code", "init", "models", "objects"}`` made
by the SDK; a bundle published through the ML Server face also has ``dill_objects`` (name ->
dill bytes, loaded into the namespace like ``objects``). It is only ever unpickled here, in
worker processes: never in the API process.

Two kinds, with ML Server's semantics:

- ``callable``: ``code`` is a function called once per record with the inputs as keyword
  arguments; a dict return maps to outputs by name, a tuple with one value per output maps
  by position, any other value becomes the first output.
- ``code``: ``code`` is Python source run once per record in a namespace holding the models,
  the objects, what the init code defined and the inputs as variables; the outputs are read
  back from that namespace by name.

``init`` (a function or source) runs once per worker process before its first record.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle


class BundleError(Exception):
    """The bundle cannot be loaded or its init failed; every record of the task fails with it."""


class LoadedService:
    def __init__(self, bundle: dict[str, Any], outputs: dict[str, str]) -> None:
        self.kind = bundle.get("kind", "callable")
        self.outputs = outputs
        self._code = bundle["code"]
        self.namespace: dict[str, Any] = {
            **(bundle.get("objects") or {}),
            **(bundle.get("models") or {}),
        }
        # ML Server's clients upload models and objects dill-serialized. The API process keeps
        # those bytes opaque (it never unpickles user data), so they are opened here.
        self.namespace.update(_load_dill_objects(bundle.get("dill_objects") or {}))
        init = bundle.get("init")
        if self.kind == "callable":
            if not callable(self._code):
                raise BundleError("the bundle's code is not callable")
            # Models and objects are globals of the published function, as in ML Server.
            self._code.__globals__.update(self.namespace)
            if callable(init):
                init.__globals__.update(self.namespace)
                returned = init()
                if isinstance(returned, dict):
                    self._code.__globals__.update(returned)
                if init.__globals__ is not self._code.__globals__:
                    self._code.__globals__.update(
                        {k: v for k, v in init.__globals__.items() if not k.startswith("__")}
                    )
            elif isinstance(init, str) and init.strip():
                exec(compile(init, "<init>", "exec"), self._code.__globals__)
        elif self.kind == "code":
            if not isinstance(self._code, str):
                raise BundleError("the bundle's code is not source text")
            self._compiled = compile(self._code, "<service code>", "exec")
            self.namespace["__builtins__"] = __builtins__
            if callable(init):
                init.__globals__.update(self.namespace)
                returned = init()
                # What the init function made global is visible to the code, as for callables.
                self.namespace.update(
                    {k: v for k, v in init.__globals__.items() if not k.startswith("__")}
                )
                if isinstance(returned, dict):
                    self.namespace.update(returned)
            elif isinstance(init, str) and init.strip():
                exec(compile(init, "<init>", "exec"), self.namespace)
        else:
            raise BundleError(f"unknown bundle kind {self.kind!r}")

    def call(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run one record; returns the raw outputs by name (not yet checked)."""
        if self.kind == "callable":
            return dict(zip(self.outputs, self.output_values(self._code(**inputs)), strict=True))
        return self._run_code(inputs)

    def _run_code(self, inputs: dict[str, Any]) -> dict[str, Any]:
        ns = dict(self.namespace)
        ns.update(inputs)
        exec(self._compiled, ns)
        missing = [n for n in self.outputs if n not in ns]
        if missing:
            raise NameError(
                f"the service code did not define the output variable(s) {', '.join(missing)}"
            )
        return {n: ns[n] for n in self.outputs}

    def row_function(self, names: list[str]) -> tuple[Callable[..., Any], list[str]]:
        """A function of one record's input values, and the order it takes the inputs in.

        What the function returns goes through :meth:`output_values`. A function whose first
        parameters are exactly the inputs is returned itself, to be called with positional
        arguments in its own parameter order: a call by keywords costs several times more, and
        with a trivial function that is most of a record's cost. Other callables are called by
        keywords; code runs as in :meth:`call` and gives its outputs' values.
        """
        if self.kind == "callable":
            function = self._code
            order = _positional_order(function, names)
            if order is not None:
                return function, order

            def by_keywords(*values: Any) -> Any:
                return function(**dict(zip(names, values, strict=True)))

            return by_keywords, names

        def run_code(*values: Any) -> Any:
            return tuple(self._run_code(dict(zip(names, values, strict=True))).values())

        return run_code, names

    def output_values(self, value: Any) -> Sequence[Any]:
        """What a service returned for one record, as one value per output, in output order."""
        if self.kind == "code":
            return value  # already the outputs' values (see row_function)
        names = self.outputs
        if not names:
            return ()
        if isinstance(value, dict) and any(n in value for n in names):
            return [value.get(n) for n in names]
        if isinstance(value, tuple) and len(names) > 1 and len(value) == len(names):
            return value
        return (value,) + (None,) * (len(names) - 1)

    def call_frame(self, frame: Any) -> dict[str, Any]:
        """Run a vectorized service on a DataFrame; returns one column per output (see
        :func:`frame_columns`), not yet checked."""
        return frame_columns(self._code(frame), list(self.outputs), len(frame))

    def call_one_row(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run a vectorized service on a single record (request-response consumption)."""
        import pandas as pd

        frame = pd.DataFrame([inputs], columns=list(inputs))
        out = frame_outputs(self._code(frame), list(self.outputs), 1)
        return {n: values[0] for n, values in out.items()}


def _positional_order(function: Callable[..., Any], names: list[str]) -> list[str] | None:
    """The inputs in parameter order when ``function(*values)`` means ``function(**inputs)``.

    That holds when its first parameters are exactly the inputs, each positional-or-keyword.
    The signature of a wrapper is its own (``follow_wrapped=False``): a decorator taking
    ``(*args, **kwargs)`` may treat keywords differently, so it is called by keywords.
    """
    try:
        parameters = list(inspect.signature(function, follow_wrapped=False).parameters.values())
    except (TypeError, ValueError):  # builtins and other callables without a signature
        return None
    head = parameters[: len(names)]
    if len(head) < len(names) or {p.name for p in head} != set(names):
        return None
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in head):
        return None
    return [p.name for p in head]


def _load_dill_objects(objects: dict[str, bytes]) -> dict[str, Any]:
    if not objects:
        return {}
    import dill  # only bundles published through the ML Server face need it

    loaded: dict[str, Any] = {}
    for name, data in objects.items():
        try:
            loaded[name] = dill.loads(data)
        except Exception as exc:
            raise BundleError(
                f"the workspace object {name!r} cannot be loaded: {type(exc).__name__}: {exc}"
            ) from exc
    return loaded


def load(data: bytes, outputs: dict[str, str]) -> LoadedService:
    try:
        bundle = cloudpickle.loads(data)
    except Exception as exc:  # the pickle names a module the worker cannot import, etc.
        raise BundleError(
            f"the service bundle cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(bundle, dict) or "code" not in bundle:
        raise BundleError("the service bundle is not a batchserve bundle")
    try:
        return LoadedService(bundle, outputs)
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(f"the service's init failed: {type(exc).__name__}: {exc}") from exc


Loader = Callable[[bytes, dict[str, str]], LoadedService]


def frame_columns(value: Any, names: list[str], rows: int) -> dict[str, Any]:
    """Map what a vectorized service returned to a column per output, as it returned them.

    Accepted: a DataFrame (columns by output name, or a single column for a single output), a
    dict of columns, a Series, a 1-D array or list (the first output), a 2-D array (outputs by
    position). A column is a Series, an array or a list; each must have one value per input row,
    or :class:`ValueError` says what was returned instead.
    """
    import numpy as np
    import pandas as pd

    columns: dict[str, Any]
    if isinstance(value, pd.DataFrame):
        if all(n in value.columns for n in names):
            columns = {n: value[n] for n in names}
        elif len(value.columns) == len(names):
            columns = {n: value.iloc[:, i] for i, n in enumerate(names)}
        else:
            raise ValueError(
                f"the returned DataFrame has columns {list(value.columns)}; expected the outputs "
                f"{names}"
            )
    elif isinstance(value, dict):
        missing = [n for n in names if n not in value]
        if missing:
            raise ValueError(f"the returned dict has no column for output(s) {missing}")
        columns = {n: value[n] for n in names}
    elif isinstance(value, pd.Series):
        if not names:
            raise ValueError("the service has no outputs, but returned a Series")
        columns = {names[0]: value}
    else:
        array = np.asarray(value)
        if array.ndim == 2 and array.shape[1] == len(names):
            columns = {n: array[:, i] for i, n in enumerate(names)}
        elif array.ndim == 1 and names:
            # A list keeps its Python values, which NumPy may have changed (True into 1).
            columns = {names[0]: value if isinstance(value, (list, tuple)) else array}
        else:
            raise ValueError(
                f"a vectorized service must return one row per input row; got shape {array.shape}"
            )
    for n, column in columns.items():
        if isinstance(column, pd.DataFrame):
            raise ValueError(f"the returned DataFrame has several columns named {n!r}")
        if isinstance(column, (str, bytes)) or not hasattr(column, "__len__"):
            raise ValueError(
                f"output {n!r} is a single {type(column).__name__}, not a column; return one "
                "value per input row"
            )
        if isinstance(column, np.ndarray) and column.ndim == 0:
            raise ValueError(f"output {n!r} is a 0-d array, not a column; return one per row")
        if len(column) != rows:
            raise ValueError(
                f"output {n!r} has {len(column)} values for {rows} input rows; return one per row"
            )
    return columns


def frame_outputs(value: Any, names: list[str], rows: int) -> dict[str, list[Any]]:
    """Like :func:`frame_columns`, with each column as a list of Python values."""
    return {
        n: column.tolist() if hasattr(column, "tolist") else list(column)
        for n, column in frame_columns(value, names, rows).items()
    }
