"""A blob store in an S3-compatible object store (AWS S3, MinIO, Ceph, ...), through obstore.

The URL names a bucket and an optional prefix, ``s3://bucket`` or ``s3://bucket/some/prefix``;
keys are relative to the prefix. Where the server is and who may use it come from the standard
AWS variables rather than the URL, so that a worker on another machine opens the same store from
the URL and its own environment (and credentials never travel in URLs, logs or the database):

- ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``): ``http(s)://host:port`` of a server other
  than AWS itself; buckets are then addressed by path (``host:port/bucket/key``);
- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and, for temporary credentials,
  ``AWS_SESSION_TOKEN``; without them, the credentials of the machine's role (an EC2 instance
  profile, an ECS task role, an EKS service account's web identity);
- ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``).

The client is obstore (the ``s3`` extra: ``pip install 'batchserve[s3]'``), imported when a store
is opened, so that this module's URL and configuration parsing work without it.

An object store has folders only as key prefixes: ``folders(p)`` are the distinct next segments
of the keys under ``p/``, and a folder exists while a key is under it. Objects cannot be appended
to (:attr:`S3BlobStore.appends` is False): a stream that must be read while it grows is written
as segments (:mod:`batchserve.blobs.segments`).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import pyarrow as pa

from batchserve.blobs.base import BlobNotFound, BlobStoreUnavailable
from batchserve.blobs.s3_objects import (
    RETRIES,
    _error_summary,
    _import_obstore,
    _ObjectStream,
    _ObjectWriter,
    _RangedFile,
)

if TYPE_CHECKING:
    from obstore.store import S3Store

# S3's rules for bucket names (MinIO and Ceph follow them): 3-63 characters, lowercase letters,
# digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

#: A name listed to check the bucket: any name works (the listing is of what is under it, most
#: likely nothing), and one unlikely to exist keeps the answer small.
_CHECK_NAME = ".batchserve-bucket-check"


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
        """Keyword arguments of :class:`pyarrow.fs.S3FileSystem` for this configuration (a
        client of the same server, for tools that manage buckets); raises :class:`ValueError`
        for a configuration no client can use."""
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
                "credentials of the machine's role)."
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

    def store_options(self, bucket: str) -> dict[str, Any]:
        """Keyword arguments of :class:`obstore.store.S3Store` for ``bucket`` and this
        configuration, but for the region when neither it nor an endpoint is given (it is then
        the bucket's own, which only AWS can tell)."""
        fs = self.filesystem_options()  # checks the configuration
        options: dict[str, Any] = {}
        client: dict[str, Any] = {}
        if self.endpoint_url is not None:
            endpoint = f"{fs['scheme']}://{fs['endpoint_override']}"
            # Both names, so that neither variable of the environment (which obstore reads too)
            # overrides the endpoint configured here.
            options["endpoint"] = options["aws_endpoint_url_s3"] = endpoint
            options["virtual_hosted_style_request"] = False
            client["allow_http"] = fs["scheme"] == "http"
        else:
            # AWS addresses buckets as host names; one with dots in its name would not match
            # the certificate of *.s3.amazonaws.com, so it is addressed by path (as the AWS
            # SDKs do).
            options["virtual_hosted_style_request"] = "." not in bucket
        if self.access_key is not None:
            options["credential_provider"] = _Keys(
                self.access_key, str(self.secret_key), self.session_token
            )
        if "region" in fs:
            options["region"] = fs["region"]
        options["client_options"] = client
        return options

    def describe(self) -> str:
        return self.endpoint_url or "AWS S3"


@dataclass(frozen=True)
class _Keys:
    """Keys as obstore's credential provider. Given as options instead, they would be used with
    a session token of the environment when the configuration has none (obstore reads the AWS
    variables too, and the options only override those they name)."""

    access_key: str
    secret_key: str
    session_token: str | None

    def __call__(self) -> dict[str, Any]:
        return {
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "token": self.session_token,
            "expires_at": None,  # never: obstore asks once
        }

    def __repr__(self) -> str:
        return f"_Keys({self.access_key!r}, ...)"


class S3BlobStore:
    """Blobs as objects under one prefix of an S3 bucket (see the module for configuration)."""

    #: S3 objects are written whole: results are kept as segments instead of appended to.
    appends = False

    def __init__(self, url: str, config: S3Config | None = None) -> None:
        """Open the store ``url`` names; raises :class:`ValueError` for a malformed URL or
        configuration, and :class:`~batchserve.blobs.BlobStoreUnavailable` when obstore is not
        installed, or the bucket is missing or cannot be reached with these credentials."""
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.config = config if config is not None else S3Config.from_environ()
        options = self.config.store_options(self.bucket)
        obstore = _import_obstore()
        if "region" not in options:
            options["region"] = self._bucket_region()
        self._store: S3Store = obstore.store.S3Store(
            self.bucket,
            prefix=self.prefix or None,
            retry_config={"max_retries": RETRIES},
            **options,
        )
        self._check_bucket()

    def _bucket_region(self) -> str:
        from pyarrow import fs as pafs

        try:
            return str(pafs.resolve_s3_region(self.bucket))
        except OSError as exc:
            raise BlobStoreUnavailable(
                f"cannot find the region of S3 bucket {self.bucket!r} ({exc}); set AWS_REGION, "
                "or AWS_ENDPOINT_URL for a server other than AWS S3."
            ) from None

    def _check_bucket(self) -> None:
        """Fail now, with what to do, rather than at the first write of a batch."""
        import obstore
        from obstore.exceptions import BaseError

        where = self.config.describe()
        try:
            obstore.list_with_delimiter(self._store, _CHECK_NAME)
        except (BaseError, OSError) as exc:
            text = str(exc)
            if "NoSuchBucket" in text:
                raise BlobStoreUnavailable(
                    f"S3 bucket {self.bucket!r} does not exist at {where}; create it, or name "
                    "an existing bucket in the blob store URL (s3://bucket/prefix)."
                ) from None
            message = _error_summary(exc)
            source = self._credential_source(text)
            if source is not None:
                raise BlobStoreUnavailable(
                    f"cannot use S3 bucket {self.bucket!r} at {where}: AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY are not set, and the machine's role gave no "
                    f"credentials ({source}: {message}); set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or run where an instance or container role may use "
                    "the bucket."
                ) from None
            if re.search(r"status code: (401|403)", text):
                hint = (
                    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN "
                    "for temporary credentials), and that they may use this bucket"
                )
            elif message.startswith("no connection"):
                hint = "check AWS_ENDPOINT_URL, and that the server is running and reachable"
            else:
                hint = "check AWS_ENDPOINT_URL, the AWS credentials and AWS_REGION"
            raise BlobStoreUnavailable(
                f"cannot use S3 bucket {self.bucket!r} at {where}: {message}; {hint}."
            ) from None

    def _credential_source(self, error: str) -> str | None:
        """The URL of the request that failed, when it went to where credentials come from
        without keys (the instance metadata service, a container's credentials endpoint, STS)
        rather than to the S3 server."""
        if self.config.access_key is not None:
            return None
        request = re.search(r"Error performing [A-Z]+ (\S+)", error)
        if request is None:
            return None
        host = urlsplit(request.group(1)).netloc
        if self.config.endpoint_url is not None:
            s3_request = host == urlsplit(self.config.endpoint_url).netloc
        else:
            s3_request = ".s3." in f".{host}" and host.endswith(".amazonaws.com")
        return None if s3_request else request.group(1)

    def _key(self, key: str) -> str:
        """The store-relative form of ``key`` (its path in obstore's store, which holds the
        prefix); refuses keys that leave the store."""
        if key.startswith("/"):
            raise ValueError(f"blob key {key!r} leaves the blob store")
        return normalize_key(key)

    def _object(self, key: str) -> str:
        """The path of a blob; the store's root is a folder, never a blob."""
        path = self._key(key)
        if not path:
            raise BlobNotFound(key)
        return path

    def _head(self, key: str) -> dict[str, Any]:
        import obstore

        try:
            return dict(obstore.head(self._store, self._object(key)))
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def open_read(self, key: str) -> BinaryIO:
        stream = _ObjectStream(self._store, self._object(key), key)
        return io.BufferedReader(stream, buffer_size=64 * 1024)

    def open_input_file(self, key: str) -> pa.NativeFile:
        size = int(self._head(key)["size"])
        return pa.PythonFile(_RangedFile(self._store, self._object(key), size), mode="r")

    def open_write(self, key: str) -> BinaryIO:
        return _ObjectWriter(self._store, self._object(key))  # type: ignore[return-value]

    def open_append_stream(self, key: str) -> BinaryIO:
        raise io.UnsupportedOperation(
            f"an S3 object cannot be appended to (blob {key!r}); a store whose `appends` is "
            "False gets streams that grow as segments (batchserve.blobs.segments)"
        )

    def read_bytes(self, key: str) -> bytes:
        with _ObjectStream(self._store, self._object(key), key) as f:
            return f.readall()

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as f:
            f.write(data)

    def exists(self, key: str) -> bool:
        if not self._key(key):
            return False
        try:
            self._head(key)
        except BlobNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["size"])

    def folders(self, prefix: str) -> list[str]:
        import obstore

        listing = obstore.list_with_delimiter(self._store, self._key(prefix) or None)
        return sorted(p.rsplit("/", 1)[-1] for p in listing["common_prefixes"])

    def _paths(self, prefix: str) -> list[tuple[str, int]]:
        """The path and size of every object under the folder ``prefix``."""
        import obstore

        folder = self._key(prefix)
        start = f"{folder}/" if folder else ""
        return [
            (meta["path"], int(meta["size"]))
            for chunk in obstore.list(self._store, folder or None, chunk_size=1000)
            for meta in chunk
            # An empty "folder/" marker other clients leave (earlier versions of this store
            # did, when they deleted a folder's last object) is listed under the folder's own
            # path: it is not under the folder.
            if meta["path"].startswith(start) and len(meta["path"]) > len(start)
        ]

    def _markers(self, candidates: list[str]) -> set[str]:
        """Which of these listed empty objects are "folder/" markers rather than blobs: obstore
        lists a marker under the folder's path, but a listing of its parent by delimiter gives
        it as a folder, and a blob as an object."""
        import obstore

        markers: set[str] = set()
        by_parent: dict[str, list[str]] = {}
        for path in candidates:
            by_parent.setdefault(path.rpartition("/")[0], []).append(path)
        for parent, paths in by_parent.items():
            listing = obstore.list_with_delimiter(self._store, parent or None)
            blobs = {meta["path"] for meta in listing["objects"]}
            markers.update(p for p in paths if p not in blobs)
        return markers

    def list(self, prefix: str) -> list[str]:
        # Dot-named objects are skipped, as the local store's temporary files are: earlier
        # versions of this store wrote large blobs to one before moving them into place.
        paths = [(p, n) for p, n in self._paths(prefix) if not p.rpartition("/")[2].startswith(".")]
        markers = self._markers([p for p, n in paths if n == 0])
        return sorted(p for p, _ in paths if p not in markers)

    def delete(self, key: str) -> None:
        import obstore

        # Deleting a missing object succeeds on S3.
        obstore.delete(self._store, self._object(key))

    def delete_prefix(self, prefix: str) -> None:
        import obstore

        if not self._key(prefix):
            raise ValueError("refusing to delete the whole blob store")
        # Objects under "prefix/" only: "batches/b1" leaves "batches/b10/..." alone.
        paths = [p for p, _ in self._paths(prefix)]
        if paths:
            obstore.delete(self._store, paths)
