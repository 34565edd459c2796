"""What only the S3 blob store does: where its objects go in the bucket, and the errors it
gives when opened on a bucket it cannot use."""

from __future__ import annotations

import secrets

import pytest
from pyarrow import fs as pafs
from tests.conftest import S3Server, free_port, moto_server

from batchserve.blobs import BlobStoreUnavailable, blob_store_from_url
from batchserve.blobs.s3 import SMALL_BLOB, S3BlobStore, S3Config, parse_s3_url

MiB = 1 << 20


def objects(server: S3Server, url: str) -> list[str]:
    """Every object under the store's prefix, as the bucket holds them (hidden ones too)."""
    bucket, prefix = parse_s3_url(url)
    root = f"{bucket}/{prefix}" if prefix else bucket
    infos = server.filesystem().get_file_info(
        pafs.FileSelector(root, recursive=True, allow_not_found=True)
    )
    return sorted(i.path[len(root) + 1 :] for i in infos if i.type == pafs.FileType.File)


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


def test_a_large_write_leaves_only_its_object(s3_server, s3_blob_url):
    store = S3BlobStore(s3_blob_url)
    with store.open_write("results/r1") as f:
        for _ in range(SMALL_BLOB // MiB + 4):
            f.write(b"z" * MiB)
    assert objects(s3_server, s3_blob_url) == ["results/r1"]


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
