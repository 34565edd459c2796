"""The answer of a request still running when the server stops.

A stopping uvicorn waits for the requests in progress (``timeout_graceful_shutdown``), then
cancels what is left: a long poll, a consume waiting for its service, an upload being stored.
Left alone, each would end as "Exception in ASGI application" with a traceback in the log and a
bare 500 to its client. Here the cancellation ends the request with a 503 that says to try
again, and one line in the log.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchserve.server.errors import error_response
from batchserve.server.protocol import STOPPING

log = logging.getLogger(__name__)

RETRY_AFTER = 10  # seconds; a restart takes a few


class StoppingAnswer:
    """ASGI middleware; see the module's docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
        except asyncio.CancelledError:
            if not scope.get(STOPPING):
                raise
            # The server's graceful shutdown ran out of time, and uvicorn waits for nothing else
            # of this task: ending it here loses nothing.
            log.warning(
                "%s %s was still running when the server stopped: answered 503",
                scope["method"],
                scope["path"],
            )
            if not started:
                response = error_response(
                    503,
                    "unavailable",
                    "The server stopped before this request was done; send it again once the "
                    "server is back.",
                    headers={"Retry-After": str(RETRY_AFTER), "Connection": "close"},
                )
                await response(scope, receive, send)
