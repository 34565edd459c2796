"""Makes Machine Learning Server's client, ``azureml-model-management-sdk``, work on Python 3.8
and newer. Import it once, before the client builds a service::

    import batchserve.compat.azureml  # noqa: F401
    from azureml.deploy import DeployClient

The client gives each service a method named after it (``svc.manual_transmission(120, 2.8)``),
made by ``azureml.common.utils.function_beget``. That function builds the method's code object
with the ``types.CodeType`` signature of Python 3.7 and older, so from 3.8 on every ``Service``
the client builds fails with "code expected at least 16 arguments". This module replaces
``function_beget`` in ``azureml.common.utils`` and in every client module that imported it by
name (``azureml.deploy.server.service``) with one that makes the same method another way: it
takes the service's inputs in their order or by name, and posts them through the service's
``_consume``, as the client's own method does. Nothing else in the client changes.
"""

from __future__ import annotations

import inspect
import keyword
import sys
from collections.abc import Callable, Sequence
from typing import Any

try:
    import azureml.common.utils as _utils
    import azureml.deploy.server.service  # noqa: F401 - imports function_beget by name
except ImportError as error:
    raise ImportError(
        "batchserve.compat.azureml fixes Machine Learning Server's client, "
        f"azureml-model-management-sdk, which could not be imported ({error}). Install it "
        "(pip install azureml-model-management-sdk), or leave this import out if you do not use "
        "that client."
    ) from error

__all__ = ["function_beget"]


def function_beget(
    fn: Callable[..., Any], fn_name: str, fn_args: Sequence[str], doc: str = ""
) -> Callable[..., Any]:
    """The method ``fn_name(self, <inputs>)`` that calls a service with its inputs.

    ``fn_args`` is ``["self", <input names in order>]``, as the client passes it; ``fn`` (the
    client's template, whose code object the original rewrites) is not needed.
    """
    names = list(fn_args)
    Parameter = inspect.Parameter
    if all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        params = [Parameter(n, Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    else:
        # A name Python cannot spell as a parameter can still be given by position, as with
        # the client's own method.
        params = [Parameter(f"arg{i}", Parameter.POSITIONAL_ONLY) for i in range(len(names))]
    signature = inspect.Signature(params)

    def method(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{fn_name}() {error}") from None
        self, *values = bound.arguments.values()
        return self._consume(dict(zip(names[1:], values, strict=True)))

    method.__name__ = method.__qualname__ = fn_name
    method.__doc__ = doc
    method.__signature__ = signature  # type: ignore[attr-defined]
    return method


def _install() -> None:
    original = _utils.function_beget
    if original is function_beget:
        return
    # The client's modules that did ``from azureml.common.utils import function_beget`` hold
    # their own reference to it: replace each one, not only the utils module's.
    for name, module in list(sys.modules.items()):
        if name.startswith("azureml.") and getattr(module, "function_beget", None) is original:
            setattr(module, "function_beget", function_beget)  # noqa: B010


_install()
