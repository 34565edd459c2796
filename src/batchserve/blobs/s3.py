"""A blob store in an S3-compatible object store (AWS S3, MinIO, Ceph, ...), through pyarrow.

The URL names a bucket and an optional prefix, ``s3://bucket`` or ``s3://bucket/some/prefix``;
keys are relative to the prefix. Where the server is and who may use it come from the standard
AWS variables rather than the URL, so that a worker on another machine opens the same store from
the URL and its own environment (and credentials never travel in URLs, logs or the database):

- ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``): ``http(s)://host:port`` of a server other
  than AWS itself; buckets are then addressed by path (``host:port/bucket/key``);
- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and, for temporary credentials,
  ``AWS_SESSION_TOKEN``; without them, the AWS SDK's own chain (profile files, instance roles);
- ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``).

An object store has folders only as key prefixes: ``folders(p)`` are the distinct next segments
of the keys under ``p/``, and a folder exists while a key is under it. Objects cannot be appended
to (:attr:`S3BlobStore.appends` is False): a stream that must be read while it grows is written
as segments (:mod:`batchserve.blobs.segments`).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import pyarrow as pa
from pyarrow import fs as pafs

from batchserve.blobs.base import BlobNotFound, BlobStoreUnavailable

#: Bytes an object being written is kept in memory before it streams to the server. A blob no
#: larger is sent in one PUT on close; this stays below pyarrow's multipart part size (10 MiB),
#: which is what makes that close a single request.
SMALL_BLOB = 8 << 20

#: Bytes each read of a streamed blob (:meth:`S3BlobStore.open_read`) asks the server for: every
#: read of a pyarrow S3 stream is a ranged GET of its own, so reads are buffered into ranges
#: large enough that a request's latency is small beside its transfer.
READ_BUFFER = 8 << 20

# S3's rules for bucket names (MinIO and Ceph follow them): 3-63 characters, lowercase letters,
# digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def parse_s3_url(url: str) -> tuple[str, str]:
    """The bucket and the key prefix (no leading or trailing ``/``, maybe empty) of
    ``s3://bucket/prefix``; raises :class:`ValueError` saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(f"{url!r} is not an S3 URL; give s3://bucket or s3://bucket/prefix.")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{url!r} holds credentials; give s3://bucket/prefix and put the keys in "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
        )
    if parts.query or parts.fragment:
        raise ValueError(
            f"{url!r} has a query or fragment; give s3://bucket/prefix, and the endpoint and "
            "region in AWS_ENDPOINT_URL and AWS_REGION."
        )
    bucket = parts.netloc
    if not _BUCKET_NAME.fullmatch(bucket):
        raise ValueError(
            f"{url!r} does not name a valid bucket ({bucket!r}); give s3://bucket/prefix with a "
            "bucket name of 3-63 lowercase letters, digits, dots and hyphens."
        )
    try:
        prefix = normalize_key(parts.path)
    except ValueError:
        raise ValueError(f"the prefix of {url!r} leaves its bucket ('..')") from None
    return bucket, prefix


def normalize_key(key: str) -> str:
    """``key`` with empty and ``.`` segments removed and ``..`` applied, as a folder's path would
    resolve; raises :class:`ValueError` for a key that would leave the store (``../x``).

    A leading ``/`` is dropped: a URL's path starts with one. Keys given to the store are
    refused with one (:meth:`S3BlobStore._key`), as the local store refuses absolute paths.
    """
    out: list[str] = []
    for segment in key.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not out:
                raise ValueError(f"blob key {key!r} leaves the blob store")
            out.pop()
        else:
            out.append(segment)
    return "/".join(out)


@dataclass(frozen=True)
class S3Config:
    """Where the S3 server is and the credentials to use, as the AWS variables give them."""

    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    region: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> S3Config:
        """The configuration in ``environ`` (the process's environment by default)."""
        env = os.environ if environ is None else environ
        # The service-specific variable wins over the general one, as in the AWS SDKs.
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        config = cls(
            endpoint_url=endpoint,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        )
        config.filesystem_options()  # refuse a bad configuration here, where it is read
        return config

    def filesystem_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`pyarrow.fs.S3FileSystem` for this configuration."""
        options: dict[str, Any] = {}
        if self.endpoint_url is not None:
            endpoint = urlsplit(self.endpoint_url)
            if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
                raise ValueError(
                    f"AWS_ENDPOINT_URL {self.endpoint_url!r} is not an http(s) URL; give "
                    "http://host:port or https://host:port."
                )
            if endpoint.path not in ("", "/") or endpoint.query or endpoint.fragment:
                raise ValueError(
                    f"AWS_ENDPOINT_URL {self.endpoint_url!r} has a path; give only "
                    "http(s)://host:port (the bucket and prefix go in the blob store URL)."
                )
            options["endpoint_override"] = endpoint.netloc
            options["scheme"] = endpoint.scheme
            # Path-style addressing (host/bucket/key): servers other than AWS rarely resolve
            # bucket names as host names.
            options["force_virtual_addressing"] = False
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError(
                "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (to use the "
                "AWS SDK's own credentials: profile files, instance roles)."
            )
        if self.access_key is not None:
            options["access_key"] = self.access_key
            options["secret_key"] = self.secret_key
            if self.session_token is not None:
                options["session_token"] = self.session_token
        if self.region is not None:
            options["region"] = self.region
        elif self.endpoint_url is not None:
            # S3-compatible servers take any region in signatures; us-east-1 is the usual one.
            options["region"] = "us-east-1"
        return options

    def describe(self) -> str:
        return self.endpoint_url or "AWS S3"


class _AtomicObjectWriter:
    """Writes an object that appears whole under its key on a clean close, and not at all if
    the write is abandoned (an exception inside ``with``, or :meth:`abort`).

    A blob up to :data:`SMALL_BLOB` stays in memory and is sent in one PUT on close. A larger one
    streams as it is written, in multipart-upload parts, to a hidden key beside its own, which
    is copied (on the server) to its key on close and then removed. The detour is because
    pyarrow cannot abort an S3 output stream: closing one, which its finalizer does too, always
    completes the upload (apache/arrow#40502), and an object written straight to its key would
    replace the blob there with whatever part was written. The copy is one CopyObject request,
    which AWS S3 allows up to 5 GiB: the bound of one blob there.
    """

    def __init__(self, fs: pafs.S3FileSystem, path: str) -> None:
        self._fs = fs
        self._path = path
        folder, _, name = path.rpartition("/")
        # Dot-named, so that listings skip it as they skip the local store's temporary files;
        # one a process left behind (killed while writing) goes with its folder.
        self._spill_path = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        self._buffer = bytearray()
        self._stream: pa.NativeFile | None = None
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed blob writer")
        n = memoryview(data).nbytes
        if self._stream is None and len(self._buffer) + n > SMALL_BLOB:
            self._stream = self._fs.open_output_stream(self._spill_path)
            self._stream.write(self._buffer)
            self._buffer = bytearray()
        if self._stream is None:
            self._buffer += data
        else:
            self._stream.write(data)
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
        if self._stream is None:
            with self._fs.open_output_stream(self._path) as f:
                f.write(self._buffer)
            self._buffer = bytearray()
            return
        try:
            self._stream.close()
            self._fs.move(self._spill_path, self._path)
        except BaseException:
            self._remove_spill()
            raise

    def abort(self) -> None:
        """Give up the write: the key keeps what it held before."""
        if self._closed:
            return
        self._closed = True
        self._buffer = bytearray()
        if self._stream is not None:
            # Completing the upload is the only way to end it (see the class), then it goes.
            with contextlib.suppress(OSError):
                self._stream.close()
            self._remove_spill()

    def _remove_spill(self) -> None:
        with contextlib.suppress(OSError):
            self._fs.delete_file(self._spill_path)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> _AtomicObjectWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class S3BlobStore:
    """Blobs as objects under one prefix of an S3 bucket (see the module for configuration)."""

    #: S3 objects are written whole: results are kept as segments instead of appended to.
    appends = False

    def __init__(self, url: str, config: S3Config | None = None) -> None:
        """Open the store ``url`` names; raises :class:`ValueError` for a malformed URL or
        configuration, and :class:`~batchserve.blobs.BlobStoreUnavailable` when the bucket is
        missing or cannot be reached with these credentials."""
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.config = config if config is not None else S3Config.from_environ()
        options = self.config.filesystem_options()
        if "region" not in options:
            options["region"] = self._bucket_region()
        self._root = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        self._fs = pafs.S3FileSystem(
            **options,
            # Each write blocks until its part is sent, so a writer faster than the server
            # does not pile parts up in memory: with background writes, a 64 MiB upload to a
            # slow server held the whole 64 MiB (bench/blob_stores.py).
            background_writes=False,
            # A small blob is one PUT, not the three requests of a multipart upload.
            allow_delayed_open=True,
        )
        self._check_bucket()

    def _bucket_region(self) -> str:
        try:
            return str(pafs.resolve_s3_region(self.bucket))
        except OSError as exc:
            raise BlobStoreUnavailable(
                f"cannot find the region of S3 bucket {self.bucket!r} ({exc}); set AWS_REGION, "
                "or AWS_ENDPOINT_URL for a server other than AWS S3."
            ) from None

    def _check_bucket(self) -> None:
        """Fail now, with what to do, rather than at the first write of a batch."""
        where = self.config.describe()
        try:
            info = self._fs.get_file_info(self.bucket)
        except OSError as exc:
            message = str(exc).rstrip(". ")
            if "ACCESS_DENIED" in message or "403" in message:
                hint = (
                    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN "
                    "for temporary credentials), and that they may use this bucket"
                )
            elif "NETWORK_CONNECTION" in message or "connect" in message.lower():
                hint = "check AWS_ENDPOINT_URL, and that the server is running and reachable"
            else:
                hint = "check AWS_ENDPOINT_URL, the AWS credentials and AWS_REGION"
            raise BlobStoreUnavailable(
                f"cannot use S3 bucket {self.bucket!r} at {where}: {message}; {hint}."
            ) from None
        if info.type != pafs.FileType.Directory:
            raise BlobStoreUnavailable(
                f"S3 bucket {self.bucket!r} does not exist at {where}; create it, or name an "
                "existing bucket in the blob store URL (s3://bucket/prefix)."
            )

    def _key(self, key: str) -> str:
        """The store-relative form of ``key``; refuses keys that leave the store."""
        if key.startswith("/"):
            raise ValueError(f"blob key {key!r} leaves the blob store")
        return normalize_key(key)

    def _path(self, key: str) -> str:
        """The pyarrow path (``bucket/prefix/key``) of a key or folder."""
        relative = self._key(key)
        return f"{self._root}/{relative}" if relative else self._root

    def _object(self, key: str) -> str:
        """The pyarrow path of a blob; the store's root is a folder, never a blob."""
        if not self._key(key):
            raise BlobNotFound(key)
        return self._path(key)

    def open_read(self, key: str) -> BinaryIO:
        try:
            return self._fs.open_input_stream(self._object(key), buffer_size=READ_BUFFER)
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def open_input_file(self, key: str) -> pa.NativeFile:
        # Each read is a ranged GET of just the bytes asked for (a record batch of a part).
        try:
            return self._fs.open_input_file(self._object(key))
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def open_write(self, key: str) -> BinaryIO:
        return _AtomicObjectWriter(self._fs, self._object(key))  # type: ignore[return-value]

    def open_append_stream(self, key: str) -> BinaryIO:
        raise io.UnsupportedOperation(
            f"an S3 object cannot be appended to (blob {key!r}); a store whose `appends` is "
            "False gets streams that grow as segments (batchserve.blobs.segments)"
        )

    def read_bytes(self, key: str) -> bytes:
        # A random-access file reads the rest of the object in one ranged GET, where a stream
        # would read it a buffer at a time.
        with self.open_input_file(key) as f:
            return f.read()

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as f:
            f.write(data)

    def exists(self, key: str) -> bool:
        if not self._key(key):
            return False
        return bool(self._fs.get_file_info(self._path(key)).type == pafs.FileType.File)

    def size(self, key: str) -> int:
        info = self._fs.get_file_info(self._object(key))
        if info.type != pafs.FileType.File:
            raise BlobNotFound(key)
        return int(info.size)

    def _infos(self, prefix: str, recursive: bool) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self._path(prefix), recursive=recursive, allow_not_found=True)
        try:
            return list(self._fs.get_file_info(selector))
        except NotADirectoryError:
            # ``prefix`` names a blob, not a folder: nothing is under it.
            return []

    def folders(self, prefix: str) -> list[str]:
        infos = self._infos(prefix, recursive=False)
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def list(self, prefix: str) -> list[str]:
        # Only objects: the empty "folder/" markers pyarrow leaves when it deletes a folder's
        # last object are folders, and dot-named objects are writes in progress.
        start = len(self._root) + 1
        return sorted(
            i.path[start:]
            for i in self._infos(prefix, recursive=True)
            if i.type == pafs.FileType.File and not i.base_name.startswith(".")
        )

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fs.delete_file(self._object(key))

    def delete_prefix(self, prefix: str) -> None:
        if not self._key(prefix):
            raise ValueError("refusing to delete the whole blob store")
        # Objects under "prefix/" only: "batches/b1" leaves "batches/b10/..." alone.
        with contextlib.suppress(FileNotFoundError):
            self._fs.delete_dir(self._path(prefix))
