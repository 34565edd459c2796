"""The tries of a record: how often a failing record runs again, and how long a try may run.

A record whose call raises is tried again in place while the batch's ``max_task_retry_count``
allows (-1: until it succeeds); a try running longer than ``task_timeout`` seconds is stopped
and counts as a failed try. Schema and bundle errors are never tried again.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from batchserve.schema import SchemaError
from batchserve.worker.bundles import BundleError


class TaskTimeout(BaseException):
    """A try ran past the batch's ``task_timeout``.

    A BaseException (as KeyboardInterrupt is), so that service code catching Exception does
    not swallow it.
    """


class TryLimits:
    """How long one try of a record (or of a vectorized call) may run, and how often it runs.

    It also counts what the tries of a task came to (``retried``, ``timed_out``). The time
    limit is a SIGALRM timer whose handler raises :class:`TaskTimeout` in the main thread, where
    workers run their tasks: it stops Python code, not a long call into native code (the
    scheduler kills a worker stuck that way). Use it as a context manager around a task: the
    handler is installed on entry and the previous one put back on exit. Without a limit, or
    off the main thread (where signals cannot be handled), :meth:`limit` adds nothing.
    """

    def __init__(
        self, max_retries: int = 0, timeout: float | None = None, what: str = "record"
    ) -> None:
        self.max_retries = max_retries  # -1: until it succeeds
        self.timeout = timeout if timeout and timeout > 0 else None
        self.retried = 0  # tries after the first
        self.timed_out = 0  # tries stopped by the time limit
        self._message = (
            f"the {what} ran longer than the task_timeout of {timeout:g} s and was stopped"
            if self.timeout
            else ""
        )
        self._active = False
        self._armed = False
        self._previous: Any = None

    def __enter__(self) -> TryLimits:
        if self.timeout is not None and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGALRM, self._ring)
            self._active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._armed = False
            self._active = False
            signal.signal(signal.SIGALRM, self._previous or signal.SIG_DFL)

    def _ring(self, signum: int, frame: FrameType | None) -> None:
        # A signal that arrives after its try ended (the timer is cleared right after the call,
        # but the handler runs between bytecodes) finds the limit disarmed and does nothing.
        if self._armed:
            self._armed = False
            raise TaskTimeout(self._message)

    def limit(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """``call``, stopped by :class:`TaskTimeout` when a call of it runs past the limit."""
        if not self._active or self.timeout is None:
            return call
        seconds = self.timeout

        def limited(*args: Any) -> Any:
            self._armed = True
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                return call(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                self._armed = False

        return limited

    def note(self, error: BaseException) -> None:
        """A try failed with ``error``."""
        if isinstance(error, TaskTimeout):
            self.timed_out += 1

    def again(self, tries: int, error: BaseException) -> bool:
        """Whether a record whose ``tries``-th try failed with ``error`` is tried once more.

        Schema and bundle errors are not: another try would fail the same way.
        """
        self.note(error)
        if isinstance(error, (SchemaError, BundleError)):
            return False
        if self.max_retries != -1 and tries > self.max_retries:
            return False
        self.retried += 1
        return True


def describe_failure(error: BaseException) -> tuple[str, str]:
    """A failed try as the result row's ``error`` and ``error_type``."""
    if isinstance(error, MemoryError):
        limit = worker_memory_limit
        where = f"the worker's memory limit ({limit >> 20} MiB)" if limit else "memory"
        return (
            f"The record ran out of {where}{': ' + str(error) if str(error) else ''}. Give it "
            "less data at once, or ask the operator for a higher --worker-memory.",
            "MemoryError",
        )
    return str(error) or repr(error), type(error).__name__


#: Set in a worker whose memory is limited: the limit in bytes, for the message of a record
#: that runs out of it.
worker_memory_limit: int | None = None
