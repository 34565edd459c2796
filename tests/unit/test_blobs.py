"""The local-directory blob store (batchserve.blobs.local)."""

from __future__ import annotations

import pytest

from batchserve.blobs import BlobNotFound, BlobStore, LocalBlobStore, blob_store_from_url


@pytest.fixture
def blobs(tmp_path):
    return LocalBlobStore(tmp_path / "blobs")


def test_the_local_store_implements_the_port(blobs):
    assert isinstance(blobs, BlobStore)


def test_the_root_folder_is_created(tmp_path):
    LocalBlobStore(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_bytes_written_are_read_back(blobs):
    blobs.write_bytes("batches/b1/inputs/000000.arrow", b"records")
    assert blobs.read_bytes("batches/b1/inputs/000000.arrow") == b"records"
    assert blobs.exists("batches/b1/inputs/000000.arrow")
    assert blobs.size("batches/b1/inputs/000000.arrow") == 7


def test_writing_again_replaces_the_blob(blobs):
    blobs.write_bytes("k", b"first")
    blobs.write_bytes("k", b"second")
    assert blobs.read_bytes("k") == b"second"


def test_a_missing_blob_is_reported_as_not_found(blobs):
    with pytest.raises(BlobNotFound):
        blobs.read_bytes("nope")
    with pytest.raises(BlobNotFound):
        blobs.size("nope")
    assert not blobs.exists("nope")


def test_a_blob_not_found_is_a_key_error(blobs):
    with pytest.raises(KeyError):
        blobs.open_read("nope")


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


def test_a_write_that_raises_leaves_no_blob_and_no_temporary_file(blobs):
    with pytest.raises(RuntimeError), blobs.open_write("results/r1") as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert not blobs.exists("results/r1")
    assert list(blobs.path("results").iterdir()) == []


def test_a_write_that_raises_keeps_the_previous_blob(blobs):
    blobs.write_bytes("k", b"old")
    with pytest.raises(RuntimeError), blobs.open_write("k") as f:
        f.write(b"new")
        raise RuntimeError("stop")
    assert blobs.read_bytes("k") == b"old"


def test_closing_twice_is_harmless(blobs):
    f = blobs.open_write("k")
    f.write(b"x")
    f.close()
    f.close()
    assert f.closed
    assert blobs.read_bytes("k") == b"x"


def test_an_append_stream_shows_flushed_bytes_before_it_is_closed(blobs):
    f = blobs.open_append_stream("results/r1")
    f.write(b"first")
    f.flush()
    assert blobs.read_bytes("results/r1") == b"first"
    f.write(b" second")
    f.close()
    assert blobs.read_bytes("results/r1") == b"first second"


# --- keys that leave the root ----------------------------------------------------------------


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


def test_a_key_with_dots_that_stays_inside_is_accepted(blobs):
    blobs.write_bytes("a/../b/c", b"x")
    assert blobs.read_bytes("b/c") == b"x"


# --- list and delete -------------------------------------------------------------------------


def test_list_gives_the_keys_under_a_folder_sorted_and_recursive(blobs):
    for key in [
        "batches/b1/inputs/000001.arrow",
        "batches/b1/inputs/000000.arrow",
        "batches/b1/artifacts/3/plot.png",
        "batches/b2/inputs/000000.arrow",
    ]:
        blobs.write_bytes(key, b"x")
    assert blobs.list("batches/b1") == [
        "batches/b1/artifacts/3/plot.png",
        "batches/b1/inputs/000000.arrow",
        "batches/b1/inputs/000001.arrow",
    ]


def test_list_of_a_missing_folder_is_empty(blobs):
    assert blobs.list("nothing/here") == []


def test_delete_removes_one_blob_and_ignores_a_missing_one(blobs):
    blobs.write_bytes("a/1", b"x")
    blobs.write_bytes("a/2", b"x")
    blobs.delete("a/1")
    blobs.delete("a/1")
    assert blobs.list("a") == ["a/2"]


def test_delete_prefix_removes_a_folder_and_nothing_else(blobs):
    blobs.write_bytes("batches/b1/inputs/000000.arrow", b"x")
    blobs.write_bytes("batches/b1/results/000000.arrow", b"x")
    blobs.write_bytes("batches/b10/inputs/000000.arrow", b"x")
    blobs.delete_prefix("batches/b1")
    assert blobs.list("batches") == ["batches/b10/inputs/000000.arrow"]


def test_delete_prefix_of_a_missing_folder_is_harmless(blobs):
    blobs.delete_prefix("batches/none")


@pytest.mark.parametrize("prefix", ["", ".", "a/.."])
def test_delete_prefix_refuses_to_delete_the_whole_store(blobs, prefix):
    blobs.write_bytes("k", b"x")
    with pytest.raises(ValueError, match="whole blob store"):
        blobs.delete_prefix(prefix)
    assert blobs.exists("k")


# --- opening by URL --------------------------------------------------------------------------


def test_a_store_reopened_from_its_url_sees_the_same_blobs(blobs):
    blobs.write_bytes("k", b"shared")
    again = blob_store_from_url(blobs.url)
    assert again.read_bytes("k") == b"shared"


def test_the_url_is_a_file_url_of_the_absolute_root(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    assert store.url == f"file://{(tmp_path / 'blobs').resolve()}"


def test_an_unknown_url_scheme_is_refused():
    with pytest.raises(ValueError, match="Unsupported blob store URL"):
        blob_store_from_url("ftp://example.org/blobs")


def test_folders_are_the_names_right_under_a_prefix(blobs):
    blobs.write_bytes("batches/b2/results/0.arrow", b"x")
    blobs.write_bytes("batches/b1/inputs/0.arrow", b"x")
    blobs.write_bytes("batches/file", b"x")
    assert blobs.folders("batches") == ["b1", "b2"]
    assert blobs.folders("missing") == []
