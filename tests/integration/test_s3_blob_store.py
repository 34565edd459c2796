"""What only the S3 blob store does: where its objects go in the bucket, and the errors it
gives when opened on a bucket it cannot use."""

from __future__ import annotations

import io
import random
import secrets
from collections.abc import Iterator

import pytest
from pyarrow import fs as pafs
from tests.conftest import S3Server, free_port, moto_server

from batchserve.blobs import BlobStoreUnavailable, blob_store_from_url
from batchserve.blobs.s3 import S3BlobStore, S3Config, parse_s3_url
from batchserve.blobs.s3_objects import READ_CHUNK, SMALL_BLOB

MiB = 1 << 20


def objects(server: S3Server, url: str) -> list[str]:
    """Every object under the store's prefix, as the bucket holds them (hidden ones too)."""
    bucket, prefix = parse_s3_url(url)
    root = f"{bucket}/{prefix}" if prefix else bucket
    infos = server.filesystem().get_file_info(
        pafs.FileSelector(root, recursive=True, allow_not_found=True)
    )
    return sorted(i.path[len(root) + 1 :] for i in infos if i.type == pafs.FileType.File)


def multipart_uploads(server: S3Server, url: str) -> list[str]:
    """The keys of the multipart uploads in progress under the store's prefix (the parts of an
    upload neither completed nor aborted, which the bucket keeps and bills)."""
    boto3 = pytest.importorskip("boto3")  # comes with moto
    from botocore.config import Config

    c = server.config
    client = boto3.client(
        "s3",
        endpoint_url=c.endpoint_url,
        aws_access_key_id=c.access_key,
        aws_secret_access_key=c.secret_key,
        aws_session_token=c.session_token,
        region_name=c.region or "us-east-1",
        config=Config(s3={"addressing_style": "path"} if c.endpoint_url else {}),
    )
    bucket, prefix = parse_s3_url(url)
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
    return sorted(u["Key"] for u in uploads.get("Uploads", []))


def failing_once() -> Iterator[bytes]:
    """A response that fails, as one whose connection dropped does."""
    raise OSError("connection reset")
    yield b""


def test_keys_are_objects_under_the_url_prefix(s3_server, s3_blob_url):
    store = S3BlobStore(s3_blob_url)
    store.write_bytes("batches/b1/inputs/000000.arrow", b"x")
    assert objects(s3_server, s3_blob_url) == ["batches/b1/inputs/000000.arrow"]
    bucket, prefix = parse_s3_url(s3_blob_url)
    assert store.url == s3_blob_url
    assert S3BlobStore(f"s3://{bucket}").read_bytes(f"{prefix}/batches/b1/inputs/000000.arrow")


def test_the_url_is_given_without_trailing_or_doubled_slashes(s3_blob_url):
    bucket, prefix = parse_s3_url(s3_blob_url)
    store = S3BlobStore(f"s3://{bucket}//{prefix}/")
    assert store.url == s3_blob_url


def test_an_abandoned_large_write_leaves_no_object_behind(s3_server, s3_blob_url):
    store = S3BlobStore(s3_blob_url)
    with pytest.raises(RuntimeError), store.open_write("results/r1") as f:
        for _ in range(SMALL_BLOB // MiB + 4):
            f.write(b"z" * MiB)
        raise RuntimeError("stop")
    assert objects(s3_server, s3_blob_url) == []
    assert multipart_uploads(s3_server, s3_blob_url) == []


def test_a_large_write_leaves_only_its_object(s3_server, s3_blob_url):
    store = S3BlobStore(s3_blob_url)
    with store.open_write("results/r1") as f:
        for _ in range(SMALL_BLOB // MiB + 4):
            f.write(b"z" * MiB)
    assert objects(s3_server, s3_blob_url) == ["results/r1"]
    assert multipart_uploads(s3_server, s3_blob_url) == []


def test_a_buffer_reused_once_written_does_not_change_the_blob(s3_blob_url):
    # As with any file, write's argument is the caller's again once write returns.
    store = S3BlobStore(s3_blob_url)
    for size in (10, SMALL_BLOB // 2):
        buffer = bytearray(b"a" * size)
        with store.open_write("k") as f:
            f.write(buffer)
            buffer[:] = b"b" * size
            f.write(memoryview(buffer))
            buffer[:] = b"c" * size
        assert store.read_bytes("k") == b"a" * size + b"b" * size


def test_folder_markers_of_other_clients_are_folders_not_blobs(s3_server, s3_blob_url):
    # Empty "folder/" objects, as the S3 console and pyarrow create (pyarrow when it deletes a
    # folder's last object, as this store did through it).
    bucket, prefix = parse_s3_url(s3_blob_url)
    s3_server.filesystem().create_dir(f"{bucket}/{prefix}/batches/b1/results")
    store = S3BlobStore(s3_blob_url)
    store.write_bytes("batches/b1/inputs/000000.arrow", b"x")
    store.write_bytes("batches/b1/empty", b"")
    assert store.list("") == ["batches/b1/empty", "batches/b1/inputs/000000.arrow"]
    assert store.list("batches/b1/results") == []
    assert store.folders("batches/b1") == ["inputs", "results"]
    assert not store.exists("batches/b1/results")


def test_a_streamed_read_goes_on_where_its_response_failed(s3_blob_url):
    store = S3BlobStore(s3_blob_url)
    data = random.Random(3).randbytes(3 * READ_CHUNK + 123)
    store.write_bytes("k", data)
    with store.open_read("k") as f:
        first = f.read(READ_CHUNK + 7)
        assert isinstance(f, io.BufferedReader)
        f.raw._chunks = failing_once()  # type: ignore[attr-defined]
        assert first + f.read() == data


def test_a_blob_replaced_while_it_is_read_is_not_read_half_old_half_new(s3_blob_url):
    store = S3BlobStore(s3_blob_url)
    store.write_bytes("k", b"o" * (2 * READ_CHUNK))
    with store.open_read("k") as f:
        f.read(READ_CHUNK)
        store.write_bytes("k", b"n" * (2 * READ_CHUNK))
        f.raw._chunks = failing_once()  # type: ignore[attr-defined]
        with pytest.raises(OSError, match="replaced while it was read"):
            f.read()


def test_the_store_is_opened_from_its_url_and_the_aws_variables(s3_blob_url):
    store = blob_store_from_url(s3_blob_url)
    assert isinstance(store, S3BlobStore)
    assert not store.appends


def test_a_missing_bucket_is_reported_when_the_store_is_opened(s3_server):
    bucket = f"batchserve-missing-{secrets.token_hex(4)}"
    with pytest.raises(BlobStoreUnavailable, match=f"bucket '{bucket}' does not exist"):
        S3BlobStore(f"s3://{bucket}/blobs", s3_server.config)


def test_refused_credentials_are_reported_when_the_store_is_opened():
    # A moto server of its own, that checks keys from its first request on (the tests' server
    # may take any keys, moto's does).
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as endpoint:
        wrong = S3Config(endpoint_url=endpoint, access_key="nobody", secret_key="nothing")
        with pytest.raises(BlobStoreUnavailable, match="AWS_SECRET_ACCESS_KEY"):
            S3BlobStore("s3://guarded/blobs", wrong)


def test_a_server_that_does_not_answer_is_reported_when_the_store_is_opened():
    nowhere = S3Config(
        endpoint_url=f"http://127.0.0.1:{free_port()}", access_key="k", secret_key="s"
    )
    with pytest.raises(BlobStoreUnavailable, match="AWS_ENDPOINT_URL"):
        S3BlobStore("s3://bucket/blobs", nowhere)
