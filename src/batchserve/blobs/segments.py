"""A stream written while it grows, on any blob store: one file appended to where the store can
append, immutable segments where it cannot (S3).

A running chunk's results must be readable before the chunk ends (partial results, and the
records a cancelled chunk finished). On a local folder the worker appends to one file and readers
read whatever complete messages it holds. An object store has no append: there the stream is cut
into segments, ``<prefix>/000000``, ``<prefix>/000001``, ..., each an object written whole as
the stream grows (at most every ``interval`` seconds, so a store is not sent an object per
record), and a reader reads the segments in order as one stream. A segment is a byte range of
the stream, not a stream of its own: the reader of a segmented stream and that of a single file
see the same bytes.

Which layout a stream has is in its key: a segmented stream's key ends with ``/``.
"""

from __future__ import annotations

import io
import time
from typing import BinaryIO

from batchserve.blobs.base import BlobNotFound, BlobStore

#: Seconds between a segmented stream's segments, at most, while it is written to and flushed.
SEGMENT_INTERVAL = 0.5


def is_segmented(key: str) -> bool:
    return key.endswith("/")


def segment_key(prefix: str, number: int) -> str:
    return f"{prefix}{number:06d}"


class SegmentWriter:
    """A writable stream kept as segments under ``prefix`` (which ends with ``/``).

    Bytes are buffered; :meth:`flush` writes them as the next segment once ``interval`` seconds
    passed since the last one (and says whether everything written is readable now),
    :meth:`close` writes the rest. Readers never see a segment half
    written: each is an object written whole.
    """

    def __init__(self, blobs: BlobStore, prefix: str, interval: float = SEGMENT_INTERVAL) -> None:
        if not is_segmented(prefix):
            raise ValueError(f"a segmented stream's key ends with '/', not {prefix!r}")
        self._blobs = blobs
        self._prefix = prefix
        self._interval = interval
        self._buffer = io.BytesIO()
        self._next = 0
        self._last = time.monotonic()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self._buffer.write(data)

    def flush(self) -> bool:
        """Write what is buffered as a segment, when it is time; True when every byte written
        so far is readable (so that what is reported done can be read)."""
        if time.monotonic() - self._last >= self._interval:
            self._cut()
        return not self._buffer.getbuffer().nbytes

    def _cut(self) -> None:
        data = self._buffer.getbuffer()
        if not len(data):
            return
        self._blobs.write_bytes(segment_key(self._prefix, self._next), bytes(data))
        del data
        self._next += 1
        self._buffer = io.BytesIO()
        self._last = time.monotonic()

    def close(self) -> None:
        if not self.closed:
            self._cut()
            self.closed = True


def open_stream_writer(blobs: BlobStore, key: str) -> BinaryIO:
    """A writable stream for ``key`` whose flushed bytes readers see before it is closed."""
    if is_segmented(key):
        return SegmentWriter(blobs, key)  # type: ignore[return-value]
    return blobs.open_append_stream(key)


class _Segments(io.RawIOBase):
    """The segments of a stream read in order as one file (the segments there when opened)."""

    def __init__(self, blobs: BlobStore, keys: list[str]) -> None:
        self._blobs = blobs
        self._keys = keys
        self._current: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while True:
            if self._current is None:
                if not self._keys:
                    return 0
                try:
                    self._current = self._blobs.open_read(self._keys.pop(0))
                except BlobNotFound:
                    # Removed since listed (the batch is being deleted): the stream ends here.
                    self._keys = []
                    return 0
            n = self._current.readinto(buffer)  # type: ignore[attr-defined]
            if n:
                return int(n)
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        super().close()


def open_stream_reader(blobs: BlobStore, key: str) -> BinaryIO:
    """The stream under ``key`` as it is now; raises :class:`BlobNotFound` when nothing of it
    was written yet."""
    if not is_segmented(key):
        return blobs.open_read(key)
    segments = blobs.list(key.rstrip("/"))
    if not segments:
        raise BlobNotFound(key)
    return io.BufferedReader(_Segments(blobs, segments), buffer_size=1 << 20)
