"""The files of one task, as the server opened them: the worker's whole view of the blob store.

A sandboxed worker cannot open the blob store's files itself. With each task the server sends
the descriptors of exactly what the task needs (the service bundle, the upload parts holding
its records, the result file to append to), and the worker reads and writes through them.
Artifacts go back to the server over the channel, which decides where they are kept.
"""

from __future__ import annotations

import contextlib
import os
from typing import BinaryIO

import pyarrow as pa

from batchserve.blobs import BlobNotFound


class GrantedBlobs:
    """A :class:`~batchserve.blobs.BlobStore` limited to the files granted for one task."""

    url = "granted://"
    appends = True  # the result file granted is appended to

    def __init__(self, read: dict[str, int], append: dict[str, int]) -> None:
        self._read = read
        self._append = append

    def close(self) -> None:
        for fd in [*self._read.values(), *self._append.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._read, self._append = {}, {}

    def _fd(self, key: str) -> int:
        try:
            return self._read[key]
        except KeyError:
            raise BlobNotFound(key) from None

    def read_bytes(self, key: str) -> bytes:
        fd = self._fd(key)
        size = os.fstat(fd).st_size
        chunks = []
        offset = 0
        while offset < size:
            piece = os.pread(fd, min(size - offset, 1 << 24), offset)
            if not piece:
                break
            chunks.append(piece)
            offset += len(piece)
        return b"".join(chunks)

    def open_input_file(self, key: str) -> pa.NativeFile:
        # Positioned reads of the buffers asked for, as the local store does (not a memory map:
        # first touches of a mapping cost more than the copies where page faults are costly).
        raw = os.fdopen(os.dup(self._fd(key)), "rb", buffering=0)
        return pa.PythonFile(raw, mode="r")

    def open_append_stream(self, key: str) -> BinaryIO:
        try:
            fd = self._append.pop(key)
        except KeyError:
            raise BlobNotFound(key) from None
        return os.fdopen(fd, "ab")

    def open_read(self, key: str) -> BinaryIO:
        return os.fdopen(os.dup(self._fd(key)), "rb")

    def size(self, key: str) -> int:
        return os.fstat(self._fd(key)).st_size

    def exists(self, key: str) -> bool:
        return key in self._read

    # Nothing else of the store is the worker's to touch.

    def open_write(self, key: str) -> BinaryIO:
        raise PermissionError(f"a worker writes only its task's result file, not {key}")

    def write_bytes(self, key: str, data: bytes) -> None:
        raise PermissionError(f"a worker writes only its task's result file, not {key}")

    def folders(self, prefix: str) -> list[str]:
        raise PermissionError("a worker cannot list the blob store")

    def list(self, prefix: str) -> list[str]:
        raise PermissionError("a worker cannot list the blob store")

    def delete(self, key: str) -> None:
        raise PermissionError(f"a worker cannot delete {key}")

    def delete_prefix(self, prefix: str) -> None:
        raise PermissionError(f"a worker cannot delete {prefix}")
