"""The blob stores without a server: what only the local-directory store does (keys kept inside
its folder, temporary files, descriptors handed to workers), and the S3 store's URL and
configuration. What every store does is in tests/integration/test_blob_store_contract.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from batchserve.blobs import BlobStoreUnavailable, LocalBlobStore, blob_store_from_url
from batchserve.blobs.s3 import S3Config, normalize_key, parse_s3_url


@pytest.fixture
def blobs(tmp_path):
    return LocalBlobStore(tmp_path / "blobs")


# --- the local store -------------------------------------------------------------------------


def test_the_root_folder_is_created(tmp_path):
    LocalBlobStore(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_the_url_is_a_file_url_of_the_absolute_root(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    assert store.url == f"file://{(tmp_path / 'blobs').resolve()}"


def test_the_local_store_can_append():
    assert LocalBlobStore.appends


def test_a_write_that_raises_leaves_no_temporary_file(blobs):
    with pytest.raises(RuntimeError), blobs.open_write("results/r1") as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert list(blobs.path("results").iterdir()) == []


def test_a_blob_being_written_is_a_hidden_temporary_file(blobs):
    with blobs.open_write("results/r1") as f:
        f.write(b"part")
        f.flush()
        [tmp] = blobs.path("results").iterdir()
        assert tmp.name.startswith(".")
    assert [p.name for p in blobs.path("results").iterdir()] == ["r1"]


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a/../../blobs2/x"])
def test_a_key_that_leaves_the_root_is_refused(blobs, key):
    with pytest.raises(ValueError, match="leaves the blob store"):
        blobs.write_bytes(key, b"x")
    with pytest.raises(ValueError, match="leaves the blob store"):
        blobs.read_bytes(key)
    with pytest.raises(ValueError, match="leaves the blob store"):
        blobs.delete_prefix(key)


def test_a_refused_key_writes_nothing_outside_the_root(blobs, tmp_path):
    with pytest.raises(ValueError):
        blobs.write_bytes("../outside", b"x")
    assert not (tmp_path / "outside").exists()


def test_a_granted_read_descriptor_reads_the_blob(blobs):
    blobs.write_bytes("batches/b1/inputs/000000.arrow", b"records")
    fd = blobs.grant_read("batches/b1/inputs/000000.arrow")
    try:
        assert os.pread(fd, 100, 0) == b"records"
        with pytest.raises(OSError):
            os.write(fd, b"x")
    finally:
        os.close(fd)


def test_a_granted_append_descriptor_writes_a_new_blob(blobs):
    blobs.write_bytes("results/r1", b"stale")
    fd = blobs.grant_append("results/r1")
    try:
        os.write(fd, b"fresh")
    finally:
        os.close(fd)
    assert blobs.read_bytes("results/r1") == b"fresh"


# --- opening by URL --------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://example.org/blobs", "gs://bucket/blobs", "/plain/path"])
def test_an_unknown_url_is_refused_naming_the_forms_that_work(url):
    with pytest.raises(ValueError, match="Unsupported blob store URL") as error:
        blob_store_from_url(url)
    assert "file:///" in str(error.value)
    assert "s3://bucket/prefix" in str(error.value)


# --- the S3 store's URL and configuration ----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://batch-data", "batch-data", ""),
        ("s3://batch-data/", "batch-data", ""),
        ("s3://batch-data/prod", "batch-data", "prod"),
        ("s3://batch-data/teams/ml/", "batch-data", "teams/ml"),
        ("s3://batch-data//teams/./ml", "batch-data", "teams/ml"),
        ("s3://my.bucket-1/a/../b", "my.bucket-1", "b"),
    ],
)
def test_an_s3_url_names_a_bucket_and_a_prefix(url, bucket, prefix):
    assert parse_s3_url(url) == (bucket, prefix)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("s3://", "valid bucket"),
        ("s3:///prefix", "valid bucket"),
        ("s3://Batch_Data/x", "valid bucket"),
        ("s3://ab/x", "valid bucket"),
        ("s3://key:secret@bucket/x", "AWS_ACCESS_KEY_ID"),
        ("s3://bucket/x?region=eu-west-1", "AWS_REGION"),
        ("s3://bucket/../other", "leaves its bucket"),
        ("https://bucket/x", "not an S3 URL"),
    ],
)
def test_a_bad_s3_url_is_refused_saying_what_is_wrong(url, problem):
    with pytest.raises(ValueError, match=problem):
        parse_s3_url(url)


def test_a_bad_s3_url_is_refused_before_any_server_is_asked():
    with pytest.raises(ValueError, match="valid bucket"):
        blob_store_from_url("s3://Not_A_Bucket/blobs")


@pytest.mark.parametrize(
    ("key", "normal"),
    [("a/b", "a/b"), ("a//b/", "a/b"), ("./a/./b", "a/b"), ("a/../b", "b"), ("", ""), (".", "")],
)
def test_keys_are_normalized_as_paths(key, normal):
    assert normalize_key(key) == normal


@pytest.mark.parametrize("key", ["..", "../x", "a/../../x"])
def test_a_key_above_the_store_is_refused(key):
    with pytest.raises(ValueError, match="leaves the blob store"):
        normalize_key(key)


def test_the_s3_configuration_comes_from_the_aws_variables():
    config = S3Config.from_environ(
        {
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
            "AWS_ACCESS_KEY_ID": "key",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_SESSION_TOKEN": "token",
            "AWS_REGION": "eu-west-1",
        }
    )
    assert config.filesystem_options() == {
        "endpoint_override": "127.0.0.1:9000",
        "scheme": "http",
        "force_virtual_addressing": False,
        "access_key": "key",
        "secret_key": "secret",
        "session_token": "token",
        "region": "eu-west-1",
    }


def test_the_s3_specific_endpoint_and_the_default_region_are_understood():
    config = S3Config.from_environ(
        {
            "AWS_ENDPOINT_URL": "http://general:1",
            "AWS_ENDPOINT_URL_S3": "https://minio.internal:9000/",
            "AWS_DEFAULT_REGION": "eu-central-1",
        }
    )
    assert config.endpoint_url == "https://minio.internal:9000/"
    options = config.filesystem_options()
    assert (options["scheme"], options["endpoint_override"]) == ("https", "minio.internal:9000")
    assert options["region"] == "eu-central-1"


def test_without_variables_aws_itself_and_the_sdk_credentials_are_used():
    config = S3Config.from_environ({})
    assert config == S3Config()
    assert config.filesystem_options() == {}


def test_a_server_other_than_aws_gets_a_default_region():
    config = S3Config.from_environ({"AWS_ENDPOINT_URL": "http://localhost:9000"})
    assert config.filesystem_options()["region"] == "us-east-1"


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"AWS_ENDPOINT_URL": "localhost:9000"}, "not an http"),
        ({"AWS_ENDPOINT_URL": "ftp://localhost:9000"}, "not an http"),
        ({"AWS_ENDPOINT_URL": "http://localhost:9000/bucket"}, "has a path"),
        ({"AWS_ACCESS_KEY_ID": "key"}, "set both"),
        ({"AWS_SECRET_ACCESS_KEY": "secret"}, "set both"),
    ],
)
def test_a_bad_s3_configuration_is_refused_saying_what_is_wrong(environ, problem):
    with pytest.raises(ValueError, match=problem):
        S3Config.from_environ(environ)


def test_the_obstore_store_gets_the_endpoint_by_path_and_the_keys_as_its_only_credentials():
    config = S3Config(
        endpoint_url="http://127.0.0.1:9000/",
        access_key="key",
        secret_key="secret",
        session_token="token",
    )
    options = config.store_options("batch-data")
    keys = options.pop("credential_provider")
    assert options == {
        "endpoint": "http://127.0.0.1:9000",
        "aws_endpoint_url_s3": "http://127.0.0.1:9000",
        "virtual_hosted_style_request": False,
        "region": "us-east-1",
        "client_options": {"allow_http": True},
    }
    # Given by a provider, the keys go without a session token of the environment when the
    # configuration has none.
    assert keys() == {
        "access_key_id": "key",
        "secret_access_key": "secret",
        "token": "token",
        "expires_at": None,
    }
    assert "secret" not in repr(keys)
    without_token = S3Config(access_key="k", secret_key="s").store_options("b1c")
    assert without_token["credential_provider"]()["token"] is None


def test_aws_itself_is_addressed_by_bucket_host_name_but_for_dotted_bucket_names():
    assert S3Config().store_options("batch-data") == {
        "virtual_hosted_style_request": True,
        "client_options": {},
    }
    assert not S3Config().store_options("batch.data")["virtual_hosted_style_request"]
    https = S3Config(endpoint_url="https://minio:9000", region="eu-west-1").store_options("b1c")
    assert https["client_options"] == {"allow_http": False}
    assert https["region"] == "eu-west-1"


def test_without_obstore_an_s3_url_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "obstore", None)  # import obstore raises ImportError
    with pytest.raises(BlobStoreUnavailable, match=r"pip install 'batchserve\[s3\]'"):
        blob_store_from_url("s3://batch-data/blobs")


def test_the_s3_module_imports_obstore_only_when_a_store_is_opened():
    script = (
        "import sys, batchserve.blobs, batchserve.blobs.s3; "
        "assert 'obstore' not in sys.modules, 'obstore imported'"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
