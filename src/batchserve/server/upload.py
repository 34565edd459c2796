"""Hand a streaming request body to the engine as a blocking file, without buffering it whole.

The engine's parsers (pyarrow) read blocking files in a worker thread; each read pulls the next
piece of the body from the event loop. Bytes past the upload limit stop the upload with 413.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

from batchserve.engine.errors import PayloadTooLarge

GATHER_BYTES = 512 * 1024


class BodyReader(io.RawIOBase):
    def __init__(
        self, stream: AsyncIterator[bytes], limit: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._it = stream.__aiter__()
        self._loop = loop
        self._buf = b""
        self._pos = 0
        self._eof = False
        self.limit = limit
        self.total = 0

    def readable(self) -> bool:
        return True

    async def _next(self) -> bytes:
        """The next pieces of the body, joined up to about ``GATHER_BYTES`` (one hop between
        threads per piece of a few KiB would cost more than the parsing)."""
        parts: list[bytes] = []
        size = 0
        while size < GATHER_BYTES:
            try:
                piece = await self._it.__anext__()
            except StopAsyncIteration:
                break
            parts.append(piece)
            size += len(piece)
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


def blocking_body(stream: AsyncIterator[bytes], limit: int) -> io.BufferedReader:
    """Call from the event loop; read the result from any other thread."""
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
