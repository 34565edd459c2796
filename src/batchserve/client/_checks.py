"""Checks of what a user passes the SDK's batch calls, made before anything is sent: each wrong
value is a :class:`~batchserve.errors.UsageError` saying what it should be."""

from __future__ import annotations

import operator
from datetime import timedelta
from pathlib import Path
from typing import Any

from batchserve.errors import UsageError


def seconds(value: float | timedelta | None, option: str) -> float | None:
    """A time limit given as seconds or a ``timedelta``, as seconds; UsageError if not > 0."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UsageError(
            f"{option} must be a number of seconds (or a timedelta) greater than 0, not {value!r}."
        )
    return float(value)


def retry_count(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise UsageError(
            "max_task_retry_count must be 0 (no retry), a number of retries, or -1 (no limit), "
            f"not {value!r}."
        )
    return value


def record_index(index: Any) -> int:
    """A record index as a whole number of at least 0 (it names a folder of downloads)."""
    try:
        i = operator.index(index)
    except TypeError:
        i = -1
    if isinstance(index, bool) or i < 0:
        raise UsageError(f"A record index is a whole number from 0 on, not {index!r}.")
    return i


def check_destination(destination: Path) -> None:
    if not destination.is_dir():
        raise UsageError(
            f"The download destination '{destination}' does not exist or is not a directory; "
            "create it first."
        )


def check_parallel_count(value: int | None) -> int | None:
    """``value`` if it is a parallel count (at least 1, or -1: no limit but the workers)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not (value >= 1 or value == -1):
        raise UsageError(
            "parallel_count must be a whole number of at least 1, or -1 for no limit but the "
            f"workers; not {value!r}."
        )
    return value
