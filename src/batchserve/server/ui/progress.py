"""Live progress of the batches a page shows, pushed to it as server-sent events.

A page lists the ids of its unfinished batches and opens one event stream for all of them. The
server reads their progress once a second, in one statement whatever their number
(:meth:`~batchserve.engine.batches.BatchOps.statuses`), and sends each batch's figures when
they changed. A batch that ends is sent once more, then dropped; once none is left the stream
says ``done`` and closes. A stream also closes after a few minutes (the browser opens it again),
so that none outlives a page that was left open for a week by more than that.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from batchserve.engine.core import Engine
from batchserve.server.protocol import STOPPING
from batchserve.server.schemas import BatchStatistics
from batchserve.server.ui.pages import PREFIX, DashboardRoute
from batchserve.server.ui.sessions import session_of
from batchserve.states import BatchState
from batchserve.store import BatchCounts
from batchserve.store.models import Batch

log = logging.getLogger(__name__)
router = APIRouter(prefix=PREFIX, route_class=DashboardRoute, include_in_schema=False)

POLL_SECONDS = 1.0
STREAM_SECONDS = 300.0  # a stream's life; the browser reconnects after it
MAX_WATCHED = 200  # batch ids one stream follows
RETRY_MS = 2000  # how soon a browser opens a closed stream again


@dataclass(frozen=True)
class Progress:
    """What a progress bar shows of a batch."""

    id: str
    state: str
    total: int
    done: int  # records with a result: succeeded or failed
    failed: int
    cancelled: int
    rate: float | None  # records per second since the batch started
    eta: float | None  # seconds left at that rate; None when unknown or finished
    final: bool

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0


def progress_of(batch: Batch, counts: BatchCounts) -> Progress:
    statistics = BatchStatistics.of(batch, counts)  # the rate the API reports
    state = BatchState(batch.state)
    rate = statistics.records_per_second
    left = max(0, batch.total_count - counts.completed - counts.cancelled)
    eta = left / rate if rate and left and not state.is_final else None
    return Progress(
        id=batch.id,
        state=batch.state,
        total=batch.total_count,
        done=counts.completed,
        failed=counts.failed,
        cancelled=counts.cancelled,
        rate=rate,
        eta=eta,
        final=state.is_final,
    )


def is_live(state: str) -> bool:
    """Whether a batch in ``state`` may still move: worth watching."""
    return not BatchState(state).is_final


def _event(name: str, data: dict[str, Any] | None = None) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data or {})}\n\n".encode()


@router.get("/progress")
async def stream(request: Request, ids: str = "") -> Response:
    session = await session_of(request)
    engine: Engine = request.app.state.engine
    watched = [i for i in dict.fromkeys(ids.split(",")) if i.strip()][:MAX_WATCHED]

    async def read() -> list[Progress]:
        def look() -> list[Progress]:
            found = engine.batches.statuses(session.who, watched)
            return [progress_of(batch, counts) for batch, counts, _ in found]

        if engine.store.reads_are_local:
            return look()
        return await anyio.to_thread.run_sync(look)

    async def events() -> AsyncIterator[bytes]:
        yield f"retry: {RETRY_MS}\n\n".encode()
        sent: dict[str, Progress] = {}
        ends = time.monotonic() + STREAM_SECONDS
        while watched and time.monotonic() < ends:
            try:
                seen = await read()
            except Exception as exc:  # the store unreachable for a moment, say
                # The stream ends; the browser opens it again in RETRY_MS.
                log.warning("a dashboard progress stream ended: %s: %s", type(exc).__name__, exc)
                return
            for progress in seen:
                if sent.get(progress.id) != progress:
                    sent[progress.id] = progress
                    yield _event("progress", {**asdict(progress), "percent": progress.percent})
            # Batches that ended, or are gone (deleted): no longer watched.
            still = {p.id for p in seen if not p.final}
            watched[:] = [i for i in watched if i in still]
            if not watched:
                break
            await anyio.sleep(POLL_SECONDS)
            # A stopping server ends its streams at once rather than wait out its grace period
            # for them (the browser opens the stream again once the server is back).
            if request.scope.get(STOPPING) or await request.is_disconnected():
                return
        if not watched:
            yield _event("done")

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
