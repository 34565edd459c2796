"""A blob store on a local directory: the embedded default."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from batchserve.blobs.base import BlobNotFound


class _AtomicWriter:
    """Writes to a temporary file and renames it into place on a clean close."""

    def __init__(self, final: Path) -> None:
        self._final = final
        self._tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.close()
        os.replace(self._tmp, self._final)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> _AtomicWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class LocalBlobStore:
    """Blobs as files under one root folder."""

    #: A file can be appended to while readers read it.
    appends = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = f"file://{self.root}"

    def path(self, key: str) -> Path:
        """The file behind ``key``; refuses keys that would leave the root."""
        p = (self.root / key).resolve()
        if p != self.root and self.root not in p.parents:
            raise ValueError(f"blob key {key!r} leaves the blob store")
        return p

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def open_input_file(self, key: str) -> pa.NativeFile:
        # Read with positioned reads of the buffers asked for (a range of a part reads that
        # range). Not memory-mapped: where page faults are costly (virtual machines, sandboxes),
        # first touches of a mapping cost far more than copying the bytes.
        try:
            return pa.OSFile(str(self.path(key)))
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def open_write(self, key: str) -> BinaryIO:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        return _AtomicWriter(p)  # type: ignore[return-value]

    def open_append_stream(self, key: str) -> BinaryIO:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        return open(p, "wb")

    def grant_read(self, key: str) -> int:
        """An open, read-only descriptor of a blob, to hand to a worker that cannot open it."""
        try:
            return os.open(self.path(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def grant_append(self, key: str) -> int:
        """A descriptor of a new, empty blob to append to, to hand to a worker."""
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        return os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as f:
            f.write(data)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def folders(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        p = self.path(prefix)
        if p == self.root:
            raise ValueError("refusing to delete the whole blob store")
        shutil.rmtree(p, ignore_errors=True)
