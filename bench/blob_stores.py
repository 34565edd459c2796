"""The S3 blob store's client against pyarrow's S3FileSystem, boto3 and obstore, on one server.

Each side does the same work against the same bucket, in interleaved repetitions:

- **small objects**: ``--small`` PUTs of 1 KiB objects one after another, then a GET of each;
  p50 and p95 of each request's wall time;
- **streamed upload**: a ``--large-mib`` object written 1 MiB at a time through the client's
  streaming writer (multipart upload), MiB/s, and the peak growth of this process's resident
  memory meanwhile (sampled from /proc): a streaming writer should hold a few parts, not the
  object;
- **streamed download**: the same object read back 1 MiB at a time, MiB/s;
- **ranged reads**: ``--ranged`` reads of 64 KiB at random offsets of that object (as reading
  one record batch of an upload part does); p50 of each read;
- **abandoned write**: whether an exception raised while writing 20 MiB through the streaming
  writer leaves no object (checked, not assumed).

The sides: ``pyarrow`` (S3FileSystem as an earlier version of the store set it up: writes block
while a part is sent, a small object is one PUT, downloads read in 8 MiB ranges), ``pyarrow
defaults`` (writes in the background), ``S3BlobStore`` (the store itself, on obstore: its writes
are atomic, a large one a multipart upload completed on close or aborted, its downloads one
streamed GET, its ranged reads one GET each), ``boto3`` and ``obstore`` (with its defaults).

The server is a moto server this script starts on 127.0.0.1, or the one the AWS variables name
when ``BATCHSERVE_TEST_S3_URL`` (``s3://bucket/prefix``) is set; the work goes under a prefix of
its own there, removed at the end. moto is written in Python and handles one request at a time
slowly: its figures rank the clients' request overheads but say little of what a real S3 or
MinIO server sustains (its ranged GETs, in particular, cost in proportion to the object's size).

    .venv/bin/python bench/blob_stores.py [--small 100] [--large-mib 64] [--ranged 100] [--repeat 3]

boto3 and obstore come with the bench extra (``pip install -e '.[bench]'``; obstore with the s3
extra too); a side whose library is missing is skipped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from _common import Table, free_port, machine, percentile, versions

from batchserve.blobs import BlobStoreUnavailable
from batchserve.blobs.s3 import S3BlobStore, S3Config, parse_s3_url

MiB = 1 << 20
PIECE = MiB  # bytes each write and read of a streamed transfer hands over
RANGE = 64 * 1024
ABANDONED = 20 * MiB


class Abandon(Exception):
    """Raised inside a streaming write to give it up."""


@dataclass(frozen=True)
class Target:
    """Where the sides work: a bucket, a prefix of this run's own, and how to reach them."""

    config: S3Config
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@contextmanager
def moto_target() -> Iterator[Target]:
    # A process of its own: a server in this one would share the clients' GIL, and its work
    # would count against whichever client is waiting for it.
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"moto's S3 server did not start on port {port}") from None
                time.sleep(0.05)
        config = S3Config(
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key="bench",
            secret_key="bench-secret",
            region="us-east-1",
        )
        admin_fs(config).create_dir("bench")
        yield Target(config, "bench", "blob-stores")
    finally:
        process.terminate()
        process.wait()


@contextmanager
def external_target(url: str) -> Iterator[Target]:
    config = S3Config.from_environ()
    bucket, prefix = parse_s3_url(url)
    run = f"{prefix}/bench-{secrets.token_hex(4)}" if prefix else f"bench-{secrets.token_hex(4)}"
    try:
        yield Target(config, bucket, run)
    finally:
        try:
            admin_fs(config).delete_dir(f"{bucket}/{run}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            print(f"could not remove s3://{bucket}/{run}: {exc}")


def admin_fs(config: S3Config) -> Any:
    from pyarrow import fs as pafs

    return pafs.S3FileSystem(**config.filesystem_options(), allow_bucket_creation=True)


# --- the sides -------------------------------------------------------------------------------


class Side(Protocol):
    """One client doing the benchmark's operations on keys relative to the target's prefix."""

    name: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def upload(self, key: str, pieces: Iterator[memoryview]) -> None: ...

    def download(self, key: str) -> int: ...

    def ranged(self, key: str, offsets: list[int], length: int) -> list[float]: ...

    def exists(self, key: str) -> bool: ...


class PyarrowSide:
    def __init__(self, target: Target, name: str, **options: Any) -> None:
        from pyarrow import fs as pafs

        self.name = name
        self._fs = pafs.S3FileSystem(**target.config.filesystem_options(), **options)
        self._root = f"{target.bucket}/{target.prefix}"

    def put(self, key: str, data: bytes) -> None:
        with self._fs.open_output_stream(f"{self._root}/{key}") as f:
            f.write(data)

    def get(self, key: str) -> bytes:
        with self._fs.open_input_file(f"{self._root}/{key}") as f:
            return bytes(f.read())

    def upload(self, key: str, pieces: Iterator[memoryview]) -> None:
        with self._fs.open_output_stream(f"{self._root}/{key}") as f:
            for piece in pieces:
                f.write(piece)

    def download(self, key: str) -> int:
        n = 0
        with self._fs.open_input_stream(f"{self._root}/{key}", buffer_size=8 * MiB) as f:
            while piece := f.read(PIECE):
                n += len(piece)
        return n

    def ranged(self, key: str, offsets: list[int], length: int) -> list[float]:
        times = []
        with self._fs.open_input_file(f"{self._root}/{key}") as f:
            for offset in offsets:
                start = time.perf_counter()
                f.read_at(length, offset)
                times.append(time.perf_counter() - start)
        return times

    def exists(self, key: str) -> bool:
        from pyarrow import fs as pafs

        return bool(self._fs.get_file_info(f"{self._root}/{key}").type == pafs.FileType.File)


class StoreSide:
    name = "S3BlobStore"

    def __init__(self, target: Target) -> None:
        self._store = S3BlobStore(target.url, target.config)

    def put(self, key: str, data: bytes) -> None:
        self._store.write_bytes(key, data)

    def get(self, key: str) -> bytes:
        return self._store.read_bytes(key)

    def upload(self, key: str, pieces: Iterator[memoryview]) -> None:
        with self._store.open_write(key) as f:
            for piece in pieces:
                f.write(piece)

    def download(self, key: str) -> int:
        n = 0
        with self._store.open_read(key) as f:
            while piece := f.read(PIECE):
                n += len(piece)
        return n

    def ranged(self, key: str, offsets: list[int], length: int) -> list[float]:
        times = []
        with self._store.open_input_file(key) as f:
            for offset in offsets:
                start = time.perf_counter()
                f.read_at(length, offset)
                times.append(time.perf_counter() - start)
        return times

    def exists(self, key: str) -> bool:
        return self._store.exists(key)


class _PiecesReader(io.RawIOBase):
    """The pieces of an upload as a readable file, for boto3's upload_fileobj."""

    def __init__(self, pieces: Iterator[memoryview]) -> None:
        self._pieces = pieces
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._rest:
            self._rest = next(self._pieces, memoryview(b""))
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


class Boto3Side:
    name = "boto3"

    def __init__(self, target: Target) -> None:
        import boto3
        from botocore.config import Config

        c = target.config
        self._s3 = boto3.client(
            "s3",
            endpoint_url=c.endpoint_url,
            aws_access_key_id=c.access_key,
            aws_secret_access_key=c.secret_key,
            aws_session_token=c.session_token,
            region_name=c.region or "us-east-1",
            config=Config(s3={"addressing_style": "path"} if c.endpoint_url else {}),
        )
        self._bucket = target.bucket
        self._prefix = target.prefix

    def put(self, key: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self._bucket, Key=f"{self._prefix}/{key}", Body=data)

    def get(self, key: str) -> bytes:
        response = self._s3.get_object(Bucket=self._bucket, Key=f"{self._prefix}/{key}")
        return bytes(response["Body"].read())

    def upload(self, key: str, pieces: Iterator[memoryview]) -> None:
        self._s3.upload_fileobj(
            io.BufferedReader(_PiecesReader(pieces), PIECE), self._bucket, f"{self._prefix}/{key}"
        )

    def download(self, key: str) -> int:
        n = 0
        response = self._s3.get_object(Bucket=self._bucket, Key=f"{self._prefix}/{key}")
        for piece in response["Body"].iter_chunks(PIECE):
            n += len(piece)
        return n

    def ranged(self, key: str, offsets: list[int], length: int) -> list[float]:
        times = []
        for offset in offsets:
            start = time.perf_counter()
            response = self._s3.get_object(
                Bucket=self._bucket,
                Key=f"{self._prefix}/{key}",
                Range=f"bytes={offset}-{offset + length - 1}",
            )
            response["Body"].read()
            times.append(time.perf_counter() - start)
        return times

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self._bucket, Key=f"{self._prefix}/{key}")
        except ClientError:
            return False
        return True


class ObstoreSide:
    name = "obstore"

    def __init__(self, target: Target) -> None:
        import obstore
        from obstore.store import S3Store

        c = target.config
        options: dict[str, Any] = {"region": c.region or "us-east-1"}
        if c.endpoint_url:
            options["endpoint"] = c.endpoint_url
            options["virtual_hosted_style_request"] = False
        if c.access_key:
            options["access_key_id"] = c.access_key
            options["secret_access_key"] = c.secret_key
        if c.session_token:
            options["session_token"] = c.session_token
        self._ob = obstore
        self._store = S3Store(
            target.bucket,
            prefix=target.prefix,
            client_options={"allow_http": True},
            **options,
        )

    def put(self, key: str, data: bytes) -> None:
        self._ob.put(self._store, key, data)

    def get(self, key: str) -> bytes:
        return bytes(self._ob.get(self._store, key).bytes())

    def upload(self, key: str, pieces: Iterator[memoryview]) -> None:
        with self._ob.open_writer(self._store, key) as f:
            for piece in pieces:
                f.write(piece)

    def download(self, key: str) -> int:
        n = 0
        for piece in self._ob.get(self._store, key).stream(min_chunk_size=PIECE):
            n += len(piece)
        return n

    def ranged(self, key: str, offsets: list[int], length: int) -> list[float]:
        times = []
        for offset in offsets:
            start = time.perf_counter()
            self._ob.get_range(self._store, key, start=offset, length=length)
            times.append(time.perf_counter() - start)
        return times

    def exists(self, key: str) -> bool:
        try:
            self._ob.head(self._store, key)
        except FileNotFoundError:
            return False
        return True


# --- measuring -------------------------------------------------------------------------------


class PeakRss:
    """The peak growth of this process's resident memory while the block runs."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.growth = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self) -> PeakRss:
        self._base = self._rss()
        self._peak = self._base
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.growth = max(self._peak, self._rss()) - self._base


@dataclass
class Figures:
    put: list[float] = field(default_factory=list)
    get: list[float] = field(default_factory=list)
    upload: list[float] = field(default_factory=list)  # MiB/s
    upload_rss: list[int] = field(default_factory=list)
    download: list[float] = field(default_factory=list)
    ranged: list[float] = field(default_factory=list)
    abandoned_leaves_nothing: bool | None = None


#: The bytes every upload sends, a piece at a time: the object is never held whole here, so
#: the memory figures are the client's own.
BLOCK = memoryview(os.urandom(PIECE))


def pieces(size: int) -> Iterator[memoryview]:
    for _ in range(size // PIECE):
        yield BLOCK


def one_round(side: Side, figures: Figures, run: int, args: argparse.Namespace) -> None:
    small = os.urandom(1024)
    keys = [f"{side.name}/{run}/small/{i:04d}" for i in range(args.small)]
    for key in keys:
        start = time.perf_counter()
        side.put(key, small)
        figures.put.append(time.perf_counter() - start)
    for key in keys:
        start = time.perf_counter()
        assert side.get(key) == small
        figures.get.append(time.perf_counter() - start)

    large = f"{side.name}/{run}/large"
    size = args.large_mib * MiB
    start = time.perf_counter()
    side.upload(large, pieces(size))
    figures.upload.append(size / MiB / (time.perf_counter() - start))

    start = time.perf_counter()
    n = side.download(large)
    figures.download.append(n / MiB / (time.perf_counter() - start))
    assert n == size, f"{side.name} downloaded {n} bytes of {size}"

    rng = random.Random(run)
    offsets = [rng.randrange(size - RANGE) for _ in range(args.ranged)]
    figures.ranged.extend(side.ranged(large, offsets, RANGE))

    if figures.abandoned_leaves_nothing is None:
        abandoned = f"{side.name}/{run}/abandoned"

        def give_up() -> Iterator[memoryview]:
            yield from pieces(ABANDONED)
            raise Abandon

        try:
            side.upload(abandoned, give_up())
        except Abandon:
            pass
        except Exception as exc:  # the client's clean-up failed (a server without abort)
            print(f"  {side.name}: giving up a write failed: {str(exc).splitlines()[0]}")
        figures.abandoned_leaves_nothing = not side.exists(abandoned)


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.1f}" if values else "-"


SIDES = ["pyarrow", "pyarrow defaults", "S3BlobStore", "boto3", "obstore"]


def make_side(label: str, target: Target) -> Side:
    if label == "pyarrow":
        return PyarrowSide(target, "pyarrow", background_writes=False, allow_delayed_open=True)
    if label == "pyarrow defaults":
        return PyarrowSide(target, "pyarrow-defaults")
    if label == "S3BlobStore":
        return StoreSide(target)
    if label == "boto3":
        return Boto3Side(target)
    return ObstoreSide(target)


def upload_memory(label: str, target: Target, size: int) -> int:
    """The peak growth of resident memory while ``label`` uploads ``size`` bytes, measured in a
    process of its own: in this one, memory a side freed but its allocator kept (or an earlier
    side's) would hide what the upload needs."""
    environ = {**os.environ, "BATCHSERVE_BENCH_S3_CONFIG": json.dumps(asdict(target.config))}
    out = subprocess.run(
        [
            *(sys.executable, __file__, "--upload-memory", label),
            *("--target", target.url, "--large-mib", str(size // MiB)),
        ],
        env=environ,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.split()[-1])


def upload_memory_child(label: str, url: str, size: int) -> None:
    config = S3Config(**json.loads(os.environ["BATCHSERVE_BENCH_S3_CONFIG"]))
    bucket, prefix = parse_s3_url(url)
    side = make_side(label, Target(config, bucket, prefix))
    side.put(f"{side.name}/memory/warm", b"x")  # the client's connections and threads
    with PeakRss() as rss:
        side.upload(f"{side.name}/memory/large", pieces(size))
    print(rss.growth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=100, help="1 KiB PUTs and GETs")
    parser.add_argument("--large-mib", type=int, default=64, help="size of the streamed object")
    parser.add_argument("--ranged", type=int, default=100, help="64 KiB ranged reads")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every side")
    parser.add_argument("--upload-memory", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upload_memory:
        upload_memory_child(args.upload_memory, args.target, args.large_mib * MiB)
        return

    url = os.environ.get("BATCHSERVE_TEST_S3_URL")
    target_cm = external_target(url) if url else moto_target()
    print(f"machine: {machine()}")
    print(f"versions: {versions(['pyarrow', 'boto3', 'obstore', 'moto'])}")
    if url:
        print(f"server: {S3Config.from_environ().describe()} ({url})")
    else:
        print(
            "server: moto, started here on 127.0.0.1. moto is Python and slow (one request at a "
            "time, ranged GETs costing in proportion to the object): its figures rank the "
            "clients' own overheads, not what a real S3 or MinIO server sustains."
        )

    with target_cm as target:
        sides: list[tuple[str, Side]] = []
        for label in SIDES:
            try:
                sides.append((label, make_side(label, target)))
            except (ImportError, BlobStoreUnavailable) as exc:  # the store without obstore
                print(f"skipped: {label} ({exc}; install the bench extra)")
        figures = {label: Figures() for label, _ in sides}
        for run in range(args.repeat):
            for label, side in sides:
                print(f"round {run + 1}/{args.repeat}: {label}", flush=True)
                one_round(side, figures[label], run, args)
        for label, _ in sides:
            print(f"upload memory: {label}", flush=True)
            figures[label].upload_rss.append(upload_memory(label, target, args.large_mib * MiB))

    table = Table(
        [
            "client",
            "PUT 1 KiB p50 ms",
            "PUT p95 ms",
            "GET 1 KiB p50 ms",
            "GET p95 ms",
            f"upload {args.large_mib} MiB, MiB/s",
            "upload peak memory, MiB",
            f"download {args.large_mib} MiB, MiB/s",
            "64 KiB ranged read p50 ms",
            "abandoned write leaves no object",
        ]
    )
    for label, f in figures.items():
        table.add(
            label,
            ms(f.put, 50),
            ms(f.put, 95),
            ms(f.get, 50),
            ms(f.get, 95),
            f"{statistics.median(f.upload):.0f}",
            f"{max(f.upload_rss) / MiB:.0f}",
            f"{statistics.median(f.download):.0f}",
            ms(f.ranged, 50),
            "yes" if f.abandoned_leaves_nothing else "no",
        )
    print()
    print(
        f"{args.small} small objects, a {args.large_mib} MiB object in {PIECE // MiB} MiB "
        f"pieces, {args.ranged} ranged reads; medians of {args.repeat} rounds (memory: peak "
        "growth of resident memory during one upload, in a fresh process)"
    )
    print(table.render())
    if not url:
        print("\n(moto is a slow Python server: compare the clients with each other, not with S3.)")


if __name__ == "__main__":
    main()
