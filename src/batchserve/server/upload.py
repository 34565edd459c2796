"""Hand a streaming request body to the engine as a blocking file, without buffering it whole.

The engine's parsers (pyarrow) read blocking files in a worker thread. A task on the event loop
pumps the body's pieces into a bounded queue; each read takes what has arrived (waiting only
when nothing has), so a fast upload is read in large gulps and a slow one is parsed as far as
it has come. Bytes past the upload limit stop the upload with 413.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator

from batchserve.engine.errors import PayloadTooLarge

GATHER_BYTES = 512 * 1024  # a read hands over at most about this much
QUEUED_PIECES = 256  # pieces read ahead of the parser, at most (uvicorn's are up to 64 KiB)

_END = object()


class UploadClosed(OSError):
    """The upload was closed before its end was read (the request is over)."""


class BodyReader(io.RawIOBase):
    def __init__(
        self, stream: AsyncIterator[bytes], limit: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue(QUEUED_PIECES)
        self._pump = loop.create_task(self._fill(stream))
        self._buf = b""
        self._pos = 0
        self._eof = False
        self.limit = limit
        self.total = 0

    def readable(self) -> bool:
        return True

    async def _fill(self, stream: AsyncIterator[bytes]) -> None:
        try:
            async for piece in stream:
                if piece:
                    await self._queue.put(piece)
            await self._queue.put(_END)
        except asyncio.CancelledError:
            # Closed: a read waiting for the next piece must not wait for ever.
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(UploadClosed("the upload was closed"))
            raise
        except BaseException as exc:  # a client that went away: the read fails with it
            await self._queue.put(exc)

    async def _next(self) -> bytes:
        """The pieces that have arrived, joined up to about ``GATHER_BYTES`` (one hop between
        threads per piece of a few KiB would cost more than the parsing); waits only for the
        first."""
        first = await self._queue.get()
        parts: list[bytes] = []
        size = 0
        item = first
        while True:
            if item is _END:
                self._queue.put_nowait(_END)  # for the read after this one
                break
            if isinstance(item, BaseException):
                if parts:  # hand over what came first; the error comes with the next read
                    self._queue.put_nowait(item)
                    break
                raise item
            assert isinstance(item, bytes)
            parts.append(item)
            size += len(item)
            if size >= GATHER_BYTES or self._queue.empty():
                break
            item = self._queue.get_nowait()
        return b"".join(parts)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while self._pos >= len(self._buf):
            if self._eof:
                return 0
            # pyarrow may read from its own I/O threads, so go to the loop directly.
            piece = asyncio.run_coroutine_threadsafe(self._next(), self._loop).result()
            if not piece:
                self._eof = True
                return 0
            self.total += len(piece)
            if self.total > self.limit:
                raise PayloadTooLarge(
                    f"The upload is larger than the limit of {self.limit} bytes "
                    "(BATCHSERVE_MAX_UPLOAD_BYTES); split the records into several batches."
                )
            self._buf, self._pos = piece, 0
        n = min(len(buffer), len(self._buf) - self._pos)
        buffer[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        """Stop reading the body (the rest, if any, is not wanted)."""
        if not self.closed:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to stop
                self._loop.call_soon_threadsafe(self._pump.cancel)
        super().close()


def blocking_body(stream: AsyncIterator[bytes], limit: int) -> io.BufferedReader:
    """Call from the event loop; read the result from any other thread, and close it when done."""
    reader = BodyReader(stream, limit, asyncio.get_running_loop())
    return io.BufferedReader(reader, buffer_size=1 << 20)


async def read_body(stream: AsyncIterator[bytes], limit: int, too_large: str) -> bytes:
    """A whole (small) request body, refused with ``too_large`` past ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    async for piece in stream:
        size += len(piece)
        if size > limit:
            raise PayloadTooLarge(too_large)
        parts.append(piece)
    return b"".join(parts)
