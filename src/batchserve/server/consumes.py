"""Running a consume for a request: on the consumes' own threads, stopped when its client goes
away (the worker is freed for others rather than finishing work nobody will read)."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import anyio
from starlette.requests import Request

from batchserve.engine.core import Engine

#: How often a waiting consume checks that its client is still there.
WATCH_SECONDS = 0.5


async def consume_for(
    request: Request,
    engine: Engine,
    name: str,
    version: str | None,
    inputs: dict[str, Any],
    limiter: anyio.CapacityLimiter,
) -> dict[str, Any]:
    gone = threading.Event()
    row: dict[str, Any] = {}
    error: Exception | None = None
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while not await request.is_disconnected():
                await anyio.sleep(WATCH_SECONDS)
            gone.set()

        group.start_soon(watch)
        try:
            row = await anyio.to_thread.run_sync(
                partial(engine.services.consume, name, version, inputs, gone), limiter=limiter
            )
        except Exception as exc:  # raised below, not as a group of one
            error = exc
        finally:
            group.cancel_scope.cancel()
    if error is not None:
        raise error
    return row
