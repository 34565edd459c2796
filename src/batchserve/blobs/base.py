"""The blob store port.

Keys are ``/``-separated relative paths (``batches/<id>/inputs/000003.arrow``). Workers get the
store's URL and open their own instance, so an implementation must be rebuildable from
:attr:`BlobStore.url`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pyarrow as pa


class BlobNotFound(KeyError):
    """No blob under that key."""


class BlobStoreUnavailable(RuntimeError):
    """The blob store a URL names cannot be used as configured: its bucket is missing, its
    server does not answer, or the credentials are refused. Raised when the store is opened."""


@runtime_checkable
class BlobStore(Protocol):
    url: str

    #: True when :meth:`open_append_stream` works; a store without append gets results as
    #: segments (:mod:`batchserve.blobs.segments`).
    appends: bool

    def open_read(self, key: str) -> BinaryIO:
        """A readable binary file; raises :class:`BlobNotFound`."""
        ...

    def open_input_file(self, key: str) -> pa.NativeFile:
        """A random-access pyarrow file, for reading parts of columnar files (an upload part's
        record batches) without reading them whole; raises :class:`BlobNotFound`."""
        ...

    def open_write(self, key: str) -> BinaryIO:
        """A writable binary file; the blob appears under ``key`` when it is closed."""
        ...

    def open_append_stream(self, key: str) -> BinaryIO:
        """A writable file whose flushed bytes readers can see before it is closed; a store
        whose :attr:`appends` is False raises :class:`io.UnsupportedOperation`."""
        ...

    def read_bytes(self, key: str) -> bytes: ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def folders(self, prefix: str) -> list[str]:
        """The names of the folders right under ``prefix``, sorted (``batches`` -> batch ids)."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a folder), sorted."""
        ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...


def blob_store_from_url(url: str) -> BlobStore:
    """Open the blob store a URL names: a folder (``file:///path``) or a bucket and prefix of
    an S3-compatible server (``s3://bucket/prefix``, configured by the AWS variables: see
    :mod:`batchserve.blobs.s3`)."""
    if url.startswith("file://"):
        from batchserve.blobs.local import LocalBlobStore

        return LocalBlobStore(url[len("file://") :])
    if url.startswith("s3://"):
        from batchserve.blobs.s3 import S3BlobStore

        return S3BlobStore(url)
    raise ValueError(
        f"Unsupported blob store URL {url!r}; use file:///path/to/folder or s3://bucket/prefix."
    )
