"""What every blob store does, run against each of them: the local folder and an S3 bucket
(on the tests' S3-compatible server, see ``s3_server`` in tests/conftest.py)."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pyarrow as pa
import pytest

from batchserve.blobs import BlobNotFound, BlobStore, LocalBlobStore, blob_store_from_url
from batchserve.blobs.s3 import S3BlobStore
from batchserve.blobs.s3_objects import SMALL_BLOB

MiB = 1 << 20


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    return S3BlobStore(request.getfixturevalue("s3_blob_url"))


def test_the_store_implements_the_port(blobs):
    assert isinstance(blobs, BlobStore)


# --- bytes -----------------------------------------------------------------------------------


def test_bytes_written_are_read_back(blobs):
    blobs.write_bytes("batches/b1/inputs/000000.arrow", b"records")
    assert blobs.read_bytes("batches/b1/inputs/000000.arrow") == b"records"
    assert blobs.exists("batches/b1/inputs/000000.arrow")
    assert blobs.size("batches/b1/inputs/000000.arrow") == 7


def test_an_empty_blob_is_a_blob(blobs):
    blobs.write_bytes("empty", b"")
    assert blobs.exists("empty")
    assert blobs.size("empty") == 0
    assert blobs.read_bytes("empty") == b""


def test_a_blob_is_read_as_a_stream(blobs):
    blobs.write_bytes("k", b"0123456789")
    with blobs.open_read("k") as f:
        assert f.read(4) == b"0123"
        assert f.read() == b"456789"
        assert f.read() == b""


def test_writing_again_replaces_the_blob(blobs):
    blobs.write_bytes("k", b"first")
    blobs.write_bytes("k", b"second")
    assert blobs.read_bytes("k") == b"second"
    assert blobs.size("k") == 6


def test_a_missing_blob_is_reported_as_not_found(blobs):
    for read in (blobs.open_read, blobs.open_input_file, blobs.size, blobs.read_bytes):
        with pytest.raises(BlobNotFound):
            read("nope")
    assert not blobs.exists("nope")


def test_a_blob_not_found_is_a_key_error(blobs):
    with pytest.raises(KeyError):
        blobs.open_read("nope")


def test_a_folder_is_not_a_blob(blobs):
    blobs.write_bytes("folder/k", b"x")
    assert not blobs.exists("folder/nope")
    with pytest.raises(BlobNotFound):
        blobs.read_bytes("folder/nope")


def test_a_key_with_dots_that_stays_inside_is_accepted(blobs):
    blobs.write_bytes("a/../b/c", b"x")
    assert blobs.read_bytes("b/c") == b"x"


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd"])
def test_a_key_that_leaves_the_store_is_refused(blobs, key):
    with pytest.raises(ValueError, match="leaves the blob store"):
        blobs.write_bytes(key, b"x")
    with pytest.raises(ValueError, match="leaves the blob store"):
        blobs.read_bytes(key)


# --- atomic writes ---------------------------------------------------------------------------


def test_a_blob_being_written_is_not_visible_until_closed(blobs):
    with blobs.open_write("results/r1") as f:
        f.write(b"part")
        f.flush()
        assert not blobs.exists("results/r1")
        assert blobs.list("results") == []
    assert blobs.read_bytes("results/r1") == b"part"


def test_rewriting_keeps_the_old_content_visible_until_closed(blobs):
    blobs.write_bytes("k", b"old")
    f = blobs.open_write("k")
    f.write(b"new")
    assert blobs.read_bytes("k") == b"old"
    f.close()
    assert blobs.read_bytes("k") == b"new"


def test_a_write_that_raises_leaves_no_blob(blobs):
    with pytest.raises(RuntimeError), blobs.open_write("results/r1") as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert not blobs.exists("results/r1")
    assert blobs.list("results") == []


def test_a_write_that_raises_keeps_the_previous_blob(blobs):
    blobs.write_bytes("k", b"old")
    with pytest.raises(RuntimeError), blobs.open_write("k") as f:
        f.write(b"new")
        raise RuntimeError("stop")
    assert blobs.read_bytes("k") == b"old"


def test_a_large_write_is_not_visible_until_closed_and_leaves_nothing_if_it_raises(blobs):
    # Larger than what a store may keep in memory before it streams (SMALL_BLOB on S3).
    chunk = b"y" * MiB
    blobs.write_bytes("results/r1", b"old")
    with pytest.raises(RuntimeError), blobs.open_write("results/r1") as f:
        for _ in range(SMALL_BLOB // MiB + 4):
            f.write(chunk)
        assert blobs.read_bytes("results/r1") == b"old"
        raise RuntimeError("stop")
    assert blobs.read_bytes("results/r1") == b"old"
    assert blobs.list("results") == ["results/r1"]
    with pytest.raises(RuntimeError), blobs.open_write("results/r2") as f:
        for _ in range(SMALL_BLOB // MiB + 4):
            f.write(chunk)
        raise RuntimeError("stop")
    assert not blobs.exists("results/r2")
    assert blobs.list("results") == ["results/r1"]


def test_closing_twice_is_harmless(blobs):
    f = blobs.open_write("k")
    f.write(b"x")
    f.close()
    f.close()
    assert f.closed
    assert blobs.read_bytes("k") == b"x"


# --- large blobs, streamed -------------------------------------------------------------------


def test_a_large_blob_written_in_pieces_is_read_back_whole_and_at_random(blobs):
    rng = random.Random(7)
    data = rng.randbytes(20 * MiB)
    with blobs.open_write("batches/b1/inputs/000000.arrow") as f:
        for start in range(0, len(data), MiB):
            f.write(data[start : start + MiB])
    key = "batches/b1/inputs/000000.arrow"
    assert blobs.size(key) == len(data)

    with blobs.open_read(key) as f:
        digest = hashlib.sha256()
        while piece := f.read(3 * MiB + 17):
            digest.update(piece)
    assert digest.digest() == hashlib.sha256(data).digest()

    with blobs.open_input_file(key) as f:
        assert f.size() == len(data)
        for _ in range(20):
            start = rng.randrange(len(data))
            length = rng.randrange(1, 256 * 1024)
            assert f.read_at(length, start) == data[start : start + length]
        f.seek(len(data) - 1000)
        assert f.read(5000) == data[-1000:]
        f.seek(12345)
        assert f.tell() == 12345
        assert f.read(10) == data[12345:12355]


def test_an_arrow_file_written_through_the_store_is_read_in_place(blobs):
    table = pa.table({"n": pa.array(range(100_000)), "s": [f"row {i}" for i in range(100_000)]})
    with blobs.open_write("part.arrow") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=10_000):
            writer.write_batch(batch)
    with blobs.open_input_file("part.arrow") as f:
        reader = pa.ipc.open_file(f)
        assert reader.num_record_batches == 10
        assert reader.get_batch(7).column("n")[0].as_py() == 70_000
        assert reader.read_all().equals(table)


# --- list, folders and delete ----------------------------------------------------------------


def test_list_gives_the_keys_under_a_folder_sorted_and_recursive(blobs):
    for key in [
        "batches/b1/inputs/000001.arrow",
        "batches/b1/inputs/000000.arrow",
        "batches/b1/artifacts/3/plot.png",
        "batches/b10/inputs/000000.arrow",
        "batches/b2/inputs/000000.arrow",
        "batches/b1.arrow",
    ]:
        blobs.write_bytes(key, b"x")
    expected = [
        "batches/b1/artifacts/3/plot.png",
        "batches/b1/inputs/000000.arrow",
        "batches/b1/inputs/000001.arrow",
    ]
    assert blobs.list("batches/b1") == expected
    assert blobs.list("batches/b1/") == expected
    assert blobs.list("batches/b1/inputs") == expected[1:]


def test_list_of_a_missing_folder_is_empty(blobs):
    blobs.write_bytes("a/k", b"x")
    assert blobs.list("nothing/here") == []
    assert blobs.list("a/k") == []  # a blob, not a folder


def test_list_of_the_whole_store_gives_every_key(blobs):
    blobs.write_bytes("b/2", b"x")
    blobs.write_bytes("a/1", b"x")
    blobs.write_bytes("c", b"x")
    assert blobs.list("") == ["a/1", "b/2", "c"]


def test_folders_are_the_names_right_under_a_prefix(blobs):
    blobs.write_bytes("batches/b2/results/0.arrow", b"x")
    blobs.write_bytes("batches/b1/inputs/0.arrow", b"x")
    blobs.write_bytes("batches/b10/inputs/0.arrow", b"x")
    blobs.write_bytes("batches/file", b"x")
    assert blobs.folders("batches") == ["b1", "b10", "b2"]
    assert blobs.folders("batches/b1") == ["inputs"]
    assert blobs.folders("missing") == []


def test_delete_removes_one_blob_and_ignores_a_missing_one(blobs):
    blobs.write_bytes("a/1", b"x")
    blobs.write_bytes("a/2", b"x")
    blobs.delete("a/1")
    blobs.delete("a/1")
    assert not blobs.exists("a/1")
    assert blobs.list("a") == ["a/2"]


def test_delete_prefix_removes_a_folder_and_nothing_else(blobs):
    blobs.write_bytes("batches/b1/inputs/000000.arrow", b"x")
    blobs.write_bytes("batches/b1/results/000000.arrow", b"x")
    blobs.write_bytes("batches/b10/inputs/000000.arrow", b"x")
    blobs.write_bytes("batches/b1.arrow", b"x")
    blobs.delete_prefix("batches/b1")
    assert blobs.list("batches") == ["batches/b1.arrow", "batches/b10/inputs/000000.arrow"]
    assert blobs.folders("batches") == ["b10"]


def test_delete_prefix_of_a_missing_folder_is_harmless(blobs):
    blobs.delete_prefix("batches/none")


@pytest.mark.parametrize("prefix", ["", ".", "a/.."])
def test_delete_prefix_refuses_to_delete_the_whole_store(blobs, prefix):
    blobs.write_bytes("k", b"x")
    with pytest.raises(ValueError, match="whole blob store"):
        blobs.delete_prefix(prefix)
    assert blobs.exists("k")


# --- opening by URL, appending ---------------------------------------------------------------


def test_a_store_reopened_from_its_url_sees_the_same_blobs(blobs):
    blobs.write_bytes("k", b"shared")
    again = blob_store_from_url(blobs.url)
    assert type(again) is type(blobs)
    assert again.url == blobs.url
    assert again.read_bytes("k") == b"shared"
    again.write_bytes("k2", b"back")
    assert blobs.read_bytes("k2") == b"back"


def test_an_append_stream_shows_flushed_bytes_where_the_store_can_append(blobs):
    if not blobs.appends:
        with pytest.raises(io.UnsupportedOperation, match="segments"):
            blobs.open_append_stream("results/r1")
        return
    f = blobs.open_append_stream("results/r1")
    f.write(b"first")
    f.flush()
    assert blobs.read_bytes("results/r1") == b"first"
    f.write(b" second")
    f.close()
    assert blobs.read_bytes("results/r1") == b"first second"
