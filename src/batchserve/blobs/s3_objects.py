"""The objects of the S3 blob store as files: a writer that uploads as it is written (and
abandons the upload on an error), a reader that streams an object, and a random-access file
that reads only the byte ranges asked for (for columnar files). Used by
:mod:`batchserve.blobs.s3`."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from batchserve.blobs.base import BlobNotFound, BlobStoreUnavailable

if TYPE_CHECKING:
    from obstore import GetResult, WritableFile
    from obstore.store import S3Store

#: Bytes an object being written is kept in memory before it streams to the server. A blob no
#: larger is sent in one PUT on close; a larger one is sent as a multipart upload in parts of
#: this size while it is written. S3 allows 10,000 parts: about 78 GiB per blob.
SMALL_BLOB = 8 << 20

#: Parts of one blob being written that may be on their way to the server at once. A writer
#: holds at most this many parts and the one it is filling: 24 MiB.
UPLOAD_CONCURRENCY = 2

#: Bytes a streamed read (:meth:`S3BlobStore.open_read`) takes from its response at a time:
#: what a reader holds of a blob beyond its own buffer.
READ_CHUNK = 1 << 20

#: Times a request that failed on the way (a dropped connection, a 5xx answer, a timeout) is
#: sent again, with growing pauses, before its error is raised: as the AWS SDKs do by default.
RETRIES = 3

#: Times in a row a streamed read may fail without getting any further before it gives up; each
#: failure after progress resumes the read where it stopped (a long or slowly read stream
#: outlives the client's request timeout).
STREAM_RESUMES = 3


def _import_obstore() -> Any:
    try:
        import obstore
    except ImportError as exc:
        raise BlobStoreUnavailable(
            f"the S3 blob store needs obstore, which cannot be imported ({exc}); install it with "
            "pip install 'batchserve[s3]'."
        ) from None
    return obstore


def _error_summary(exc: BaseException) -> str:
    """The gist of an obstore error: its first lines, without the debug dump that follows, and
    the server's answer (the S3 error code and message), or why no connection was made."""
    head, _, debug = str(exc).partition("Debug source:")
    head = " ".join(head.split())
    answer = re.search(r"status code: (\d{3}[^:]*)(?::\s*(.*))?$", head)
    if answer:
        summary = f"the server answered {answer.group(1).strip()}"
        body = (answer.group(2) or "").strip()
        code = re.search(r"<Code>(.*?)</Code>", body)
        message = re.search(r"<Message>(.*?)</Message>", body)
        if code:
            summary += f" ({code[1]}: {message[1].rstrip('.')})" if message else f" ({code[1]})"
        elif body and not body.startswith("<"):
            summary += f" ({body[:200]})"
        return summary.rstrip(". ")
    if "kind: Connect" in debug:
        causes = re.findall(r'(?:message|error): "([^"]*)"', debug)
        return f"no connection to the server ({causes[-1] if causes else 'connect error'})"
    return head.removeprefix("Generic S3 error: ").rstrip(". ")


class _ObjectWriter:
    """Writes an object that appears whole under its key on a clean close, and not at all if
    the write is abandoned (an exception inside ``with``, or :meth:`abort`).

    A blob up to :data:`SMALL_BLOB` stays in memory and is sent in one PUT on close. A larger one
    streams as it is written, as a multipart upload, which S3 turns into the object only when
    the upload is completed on close; an abandoned write aborts the upload, and the parts sent
    go with it.
    """

    def __init__(self, store: S3Store, path: str) -> None:
        import obstore

        self._file: WritableFile = obstore.open_writer(
            store, path, buffer_size=SMALL_BLOB, max_concurrency=UPLOAD_CONCURRENCY
        )
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed blob writer")
        n = memoryview(data).nbytes
        if n:
            # obstore keeps what it is given, without a copy, until its part is sent; a caller
            # may reuse its buffer once write returns, so all but immutable bytes are copied.
            # (A copy is also of unsigned bytes, the only ones obstore takes: pyarrow hands
            # over buffers of signed ones.)
            self._file.write(data if isinstance(data, bytes) else memoryview(data).tobytes())
        return n

    def flush(self) -> None:
        # Nothing of the blob is visible before close, so there is nothing to push out early.
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._file.close()

    def abort(self) -> None:
        """Give up the write: the key keeps what it held before."""
        if self._closed:
            return
        self._closed = True
        # The file's own exit with an exception is what aborts its upload. An abort that fails
        # (the server is gone) leaves parts that only a lifecycle rule removes; the error that
        # stopped the write is the one to raise.
        with contextlib.suppress(Exception):
            self._file.__exit__(RuntimeError, RuntimeError("blob write abandoned"), None)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> _ObjectWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _ObjectStream(io.RawIOBase):
    """An object read from start to end in one streamed GET. Should the response fail on the
    way (its connection dropped, or a long or slowly read stream outliving the client's request
    timeout), the read goes on from where it stopped with a ranged GET of the same version of
    the object."""

    def __init__(self, store: S3Store, path: str, key: str) -> None:
        super().__init__()
        self._store = store
        self._path = path
        self._key = key
        self._pos = 0
        self._chunk = memoryview(b"")
        result = self._get(None)
        self._size = int(result.meta["size"])
        self._etag = result.meta["e_tag"]
        self._chunks: Iterator[Any] | None = iter(result.stream(min_chunk_size=READ_CHUNK))

    def _get(self, offset: int | None) -> GetResult:
        import obstore

        try:
            if offset is None:
                return obstore.get(self._store, self._path)
            options: Any = {"range": {"offset": offset}}
            if self._etag:
                options["if_match"] = self._etag
            return obstore.get(self._store, self._path, options=options)
        except FileNotFoundError:
            raise BlobNotFound(self._key) from None

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bool:
        """Take the next piece of the response into ``_chunk``; False at the end."""
        from obstore.exceptions import BaseError

        failures = 0
        while self._chunks is not None:
            try:
                chunk = next(self._chunks, None)
            except (BaseError, OSError) as exc:
                if self._pos >= self._size:  # failed after its last byte: nothing is missing
                    chunk = None
                else:
                    failures += 1
                    self._resume(exc, failures)
                    continue
            if chunk is None:
                self._chunks = None
                return False
            if len(chunk):
                self._chunk = memoryview(chunk)
                return True
        return False

    def _resume(self, exc: BaseException, failures: int) -> None:
        """Go on from ``_pos`` with a new response, after the one read failed with ``exc``."""
        from obstore.exceptions import BaseError, PreconditionError

        while failures <= STREAM_RESUMES:
            try:
                result = self._get(self._pos)
            except PreconditionError:
                raise OSError(f"blob {self._key!r} was replaced while it was read") from None
            except (BaseError, OSError) as again:
                exc = again
                failures += 1
                continue
            self._chunks = iter(result.stream(min_chunk_size=READ_CHUNK))
            return
        raise OSError(
            f"reading blob {self._key!r} failed at byte {self._pos} of {self._size}: "
            f"{_error_summary(exc)}"
        ) from None

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        if not self._chunk and not self._next_chunk():
            return 0
        n = min(len(out), len(self._chunk))
        out[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        self._pos += n
        return n

    def readall(self) -> bytes:
        pieces: list[memoryview] = []
        while self._chunk or self._next_chunk():
            pieces.append(self._chunk)
            self._pos += len(self._chunk)
            self._chunk = memoryview(b"")
        return b"".join(pieces)  # the one copy of the blob's bytes

    def close(self) -> None:
        # Dropping the response closes its connection.
        self._chunks = None
        self._chunk = memoryview(b"")
        super().close()


class _RangedFile(io.RawIOBase):
    """An object as a seekable file whose every read is a ranged GET of just the bytes asked
    for: a record batch of an upload part is read without the rest of the part."""

    def __init__(self, store: S3Store, path: str, size: int) -> None:
        super().__init__()
        self._store = store
        self._path = path
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        import obstore

        if self.closed:
            raise ValueError("read of a closed file")
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        if end <= self._pos:
            return b""
        data = obstore.get_range(self._store, self._path, start=self._pos, end=end)
        self._pos += len(data)
        return data  # type: ignore[return-value]  # a buffer, as good as bytes to its readers

    def readall(self) -> bytes:
        return self.read()

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer).cast("B")))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)
