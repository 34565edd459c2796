"""Streams read while written: one appended file, or segments on a store without append."""

from __future__ import annotations

import pyarrow as pa
import pytest

from batchserve.blobs import BlobNotFound, LocalBlobStore, keys
from batchserve.blobs.segments import (
    SegmentWriter,
    is_segmented,
    open_stream_reader,
    open_stream_writer,
)
from batchserve.engine.results import ResultWriter, iter_results, read_results


@pytest.fixture
def blobs(tmp_path):
    return LocalBlobStore(tmp_path / "blobs")


def test_a_segmented_result_key_is_a_folder_and_a_plain_one_a_file():
    assert is_segmented(keys.result_key("b1", 3, 2, segmented=True))
    assert keys.result_key("b1", 3, 2, segmented=True) == "batches/b1/results/000003.a2/"
    assert not is_segmented(keys.result_key("b1", 3, 2))


def test_segments_are_read_back_in_order_as_one_stream(blobs):
    writer = SegmentWriter(blobs, "s/", interval=0)
    for piece in (b"alpha ", b"beta ", b"gamma"):
        writer.write(piece)
        writer.flush()
    writer.close()
    assert blobs.list("s") == ["s/000000", "s/000001", "s/000002"]
    with open_stream_reader(blobs, "s/") as f:
        assert f.read() == b"alpha beta gamma"


def test_flushes_within_the_interval_make_no_new_segment(blobs):
    writer = SegmentWriter(blobs, "s/", interval=3600)
    writer.write(b"one")
    writer.flush()
    writer.write(b"two")
    writer.flush()
    assert blobs.list("s") == []  # nothing yet: too soon for a segment
    writer.close()
    assert blobs.list("s") == ["s/000000"]
    with open_stream_reader(blobs, "s/") as f:
        assert f.read() == b"onetwo"


def test_a_stream_with_nothing_written_is_not_found(blobs):
    with pytest.raises(BlobNotFound):
        open_stream_reader(blobs, "nothing/")
    with pytest.raises(BlobNotFound):
        open_stream_reader(blobs, "nothing.arrows")


def test_a_segment_writer_needs_a_folder_key(blobs):
    with pytest.raises(ValueError, match="ends with '/'"):
        SegmentWriter(blobs, "file.arrows")


@pytest.mark.parametrize("segmented", [False, True])
def test_results_written_so_far_are_readable_while_the_chunk_runs(blobs, segmented):
    key = keys.result_key("b1", 0, 1, segmented=segmented)
    sink = open_stream_writer(blobs, key)
    if segmented:
        sink._interval = 0  # type: ignore[attr-defined]  # a segment at every flush
    writer = ResultWriter(sink, {"y": "float"})
    writer.add({"index": 0, "status": "succeeded", "outputs": {"y": 1.0}, "attempts": 1})
    writer.flush()
    with open_stream_reader(blobs, key) as f:
        partial = read_results(f, {"y": "float"})
    assert partial.column("index").to_pylist() == [0]
    writer.add({"index": 1, "status": "failed", "error": "boom", "attempts": 1})
    writer.close()
    with open_stream_reader(blobs, key) as f:
        batches = list(iter_results(f))
    table = pa.Table.from_batches(batches)
    assert table.column("index").to_pylist() == [0, 1]
    assert table.column("status").to_pylist() == ["succeeded", "failed"]


def test_a_stream_cut_off_mid_segment_gives_its_complete_batches(blobs):
    """A worker killed as it wrote keeps the record batches it completed."""
    key = "batches/b1/results/000000.a1/"
    sink = SegmentWriter(blobs, key, interval=0)
    writer = ResultWriter(sink, {"y": "float"})
    for i in range(3):
        writer.add({"index": i, "status": "succeeded", "outputs": {"y": float(i)}, "attempts": 1})
        writer.flush()
    last = blobs.list(key.rstrip("/"))[-1]
    data = blobs.read_bytes(last)
    blobs.write_bytes(last, data[: len(data) // 2])  # the last segment only half there
    with open_stream_reader(blobs, key) as f:
        table = read_results(f, {"y": "float"})
    assert table.column("index").to_pylist() == [0, 1]
