"""uvicorn's HTTP/1.1 protocol with read timeouts: a client that stops sending is cut off.

uvicorn times only the idle time between requests (``timeout_keep_alive``); a connection that
sends part of a request's headers, or a few bytes of a declared body, and then nothing, is kept
open for ever, together with whatever waits for the rest of it. Here the protocol class that
uvicorn builds for each connection also keeps one timer:

- **headers**: from the connection's opening, or from the first byte of each later request, the
  client has ``header_timeout`` seconds to send the request's whole head. Bytes trickled one at a
  time do not restart it.
- **body**: while a request's body is incomplete, every piece that arrives restarts a timer of
  ``body_timeout`` seconds. It does not run while the server itself is not reading (uvicorn
  stops reading past 64 KiB that the application has not taken yet, and a client that asked
  ``Expect: 100-continue`` waits for the application's first read).

Past either, the client gets 408 (when no other answer has started) and the connection is
closed; the application sees the client go, as for any disconnection (``http.disconnect``), and
stops reading the body.

When the server stops, uvicorn waits for the requests in progress, for at most
``shutdown_timeout`` seconds, then cancels them. A body still arriving by then would only be
cancelled: its client is answered 503 and cut off a moment before, so that the request ends as
a disconnection does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # uvicorn's faster parser, installed with uvicorn[standard]; h11 otherwise, as uvicorn does
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover
    _Base = H11Protocol  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

HEADERS = "headers"
BODY = "body"
#: Set in the ASGI scope of the requests in progress when the server starts stopping (what
#: uvicorn cancels if they outlast the graceful shutdown; see batchserve.server.stopping).
STOPPING = "batchserve.stopping"
# Time left, at the end of a graceful shutdown, between cutting off the bodies still arriving and
# uvicorn's cancelling what is still running.
SHUTDOWN_MARGIN = 0.5


def _response(
    status: bytes, code: str, message: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """An error answer written straight to the connection, in the native API's error shape."""
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
    head = [b"HTTP/1.1 " + status]
    head += [name + b": " + value for name, value in default_headers]
    head += [
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class ReadTimeouts:
    """Mixed into one of uvicorn's HTTP/1.1 protocols (it reads their ``cycle``, ``flow`` and
    ``transport``, which both have)."""

    header_timeout: float = 30.0
    body_timeout: float = 60.0
    shutdown_timeout: float | None = None

    # uvicorn's protocol attributes this mixin reads
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    flow: Any
    client: tuple[str, int] | None
    server_state: Any

    _read_timer: asyncio.TimerHandle | None = None
    _waiting_for: str | None = None
    _head_begun = False  # bytes of a request's head arrived since the last answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        # A connection that never sends a byte gets no keep-alive timer from uvicorn.
        self._arm(HEADERS)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._watch(after_bytes=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._watch(after_bytes=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def shutdown(self) -> None:
        super().shutdown()  # type: ignore[misc]
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.scope[STOPPING] = True
        if self.shutdown_timeout is not None and self._phase() == BODY:
            delay = max(0.0, self.shutdown_timeout - SHUTDOWN_MARGIN)
            self.loop.call_later(delay, self._cut_off_at_shutdown)

    # --- the timer ------------------------------------------------------------------------------

    def _phase(self) -> str | None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return HEADERS  # between requests
        if cycle.more_body:
            return BODY
        return None  # the whole request is in: the application's turn

    def _watch(self, after_bytes: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            self._disarm()
            return
        phase = self._phase()
        if phase == HEADERS:
            if not after_bytes:
                # An answer is complete: uvicorn's keep-alive timeout covers the wait for the
                # next request; this timer starts at its first byte.
                self._head_begun = False
                self._disarm()
            else:
                self._head_begun = True
                if self._waiting_for != HEADERS:  # later bytes do not restart the clock
                    self._arm(HEADERS)
        elif phase == BODY:
            self._head_begun = False
            self._arm(BODY)
        else:
            self._head_begun = False
            self._disarm()

    def _arm(self, what: str) -> None:
        self._disarm()
        seconds = self.header_timeout if what == HEADERS else self.body_timeout
        self._waiting_for = what
        self._read_timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer = None
        self._waiting_for = None

    def _timed_out(self) -> None:
        what, self._read_timer, self._waiting_for = self._waiting_for, None, None
        if self.transport.is_closing() or what != self._phase():
            return
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        if what == HEADERS:
            message = (
                f"The request's headers did not arrive within {self.header_timeout:g} s "
                "(BATCHSERVE_HEADER_TIMEOUT); send each request whole, without pausing."
            )
            if self._head_begun:
                log.warning("Closed the connection of %s: %s", peer, message)
                self._send(b"408 Request Timeout", "request_timeout", message)
            else:  # an idle connection that never asked anything: nobody to answer
                log.debug("Closed the connection of %s: it sent no request", peer)
            self.transport.close()
            return
        cycle = self.cycle
        if self.flow.read_paused or cycle.waiting_for_100_continue:
            # The server is not reading this body yet: the client is not the one that is late.
            self._arm(BODY)
            return
        message = (
            f"No bytes of the request body arrived for {self.body_timeout:g} s "
            "(BATCHSERVE_BODY_TIMEOUT); send the body without pausing."
        )
        log.warning("Closed the connection of %s: %s", peer, message)
        self._cut_off(b"408 Request Timeout", "request_timeout", message)

    def _cut_off_at_shutdown(self) -> None:
        if self.transport.is_closing() or self._phase() != BODY:
            return
        self._cut_off(
            b"503 Service Unavailable",
            "unavailable",
            "The server is stopping and could not wait for the rest of the request body; "
            "send the request again once it is back.",
        )

    def _cut_off(self, status: bytes, code: str, message: str) -> None:
        """Answer a request whose body is incomplete, and close its connection."""
        cycle = self.cycle
        if not cycle.response_started:
            self._send(status, code, message)
        # The application's next read answers that the client is gone, and its answer, if it
        # makes one, is dropped (this one took its place).
        cycle.disconnected = True
        cycle.message_event.set()
        self.transport.close()

    def _send(self, status: bytes, code: str, message: str) -> None:
        self.transport.write(_response(status, code, message, self.server_state.default_headers))


def http_protocol(
    header_timeout: float, body_timeout: float, shutdown_timeout: float | None = None
) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn (its ``http`` setting) for these timeouts;
    ``shutdown_timeout`` is uvicorn's ``timeout_graceful_shutdown``."""

    class TimedHTTPProtocol(ReadTimeouts, _Base):
        pass

    TimedHTTPProtocol.header_timeout = header_timeout
    TimedHTTPProtocol.body_timeout = body_timeout
    TimedHTTPProtocol.shutdown_timeout = shutdown_timeout
    return TimedHTTPProtocol
