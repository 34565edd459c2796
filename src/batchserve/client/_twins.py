"""Asyncio twins of the blocking SDK's methods, made from those methods rather than copied.

A method of the shared classes (``Service.consume``, ``Batch.cancel``, ...) checks its arguments
and ends with ``return self._runner.run(op)``. On an object of an asyncio client the runner is an
:class:`~batchserve.client._runner.AsyncRunner`, so that call returns an awaitable of the result.
:func:`twin` makes the coroutine method that awaits it, typed with the blocking method's own
parameters (a ``ParamSpec``) and its result turned into the asyncio object, if it is one (a
``Service`` into an ``AsyncService``, say). An asyncio class declares each twin in one line::

    class AsyncBatchExecution(Batch):
        cancel = twin(Batch.cancel, async_batch)  # type: ignore[assignment]

(the ignore: the twin deliberately changes the inherited method's type, to a coroutine).
A method that calls the runner more than once (a paged listing) cannot be twinned this way, and
its asyncio class writes it out.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

from batchserve.client._runner import AsyncRunner, Runner
from batchserve.client._wire import Op

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def async_runner(runner: Runner) -> AsyncRunner:
    """The runner of an object of an asyncio client, as what it is.

    The shared classes type their runner as the blocking one sees it (see
    :class:`~batchserve.client._runner.Runner`).
    """
    if not isinstance(runner, AsyncRunner):
        raise TypeError(f"an object of an asyncio client runs with an AsyncRunner, not {runner!r}")
    return runner


def arun(runner: Runner, op: Op[T]) -> Awaitable[T]:
    """Run ``op`` with the runner of an object of an asyncio client."""
    return async_runner(runner).run(op)


@overload
def twin(
    method: Callable[Concatenate[Any, P], R],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]: ...


@overload
def twin(
    method: Callable[Concatenate[Any, P], Any], convert: Callable[[Any], T]
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, T]]: ...


def twin(method: Any, convert: Any = None) -> Any:
    """The coroutine twin of the shared ``method``: its result awaited, then converted."""

    async def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        pending = method(self, *args, **kwargs)
        if not inspect.isawaitable(pending):
            raise TypeError(
                f"{method.__qualname__}() did not hand its work to the runner in one call, so it "
                "cannot be twinned: give the asyncio class a method of its own."
            )
        result = await pending
        return result if convert is None else convert(result)

    return _named(run, method)


def retyped(
    method: Callable[Concatenate[Any, P], Any], convert: Callable[[Any], T]
) -> Callable[Concatenate[Any, P], T]:
    """The shared ``method`` (one that sends nothing, like ``Service.batch``) with its result
    converted to the asyncio object."""

    def run(self: Any, *args: P.args, **kwargs: P.kwargs) -> T:
        return convert(method(self, *args, **kwargs))

    return _named(run, method)


def _named(function: Any, method: Any) -> Any:
    # The name and docstring of the blocking method; not its annotations (they are the blocking
    # method's types), nor __wrapped__ (inspect.signature would show the blocking signature).
    return functools.update_wrapper(function, method, assigned=("__name__", "__doc__"), updated=())
