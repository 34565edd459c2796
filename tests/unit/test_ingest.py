"""Cutting an upload into chunk files (batchserve.engine.ingest) and sizing chunks."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest

from batchserve.blobs import LocalBlobStore
from batchserve.engine.batches import choose_chunk_size
from batchserve.engine.ingest import ARROW_STREAM, CSV, TSV, ingest, input_key
from batchserve.schema import SchemaError

INPUTS = {"hp": "float", "cyl": "int"}


@pytest.fixture
def blobs(tmp_path):
    return LocalBlobStore(tmp_path / "blobs")


class Upload:
    """Runs ingest() and keeps what it reported."""

    def __init__(self, blobs):
        self.blobs = blobs
        self.chunks = []

    def __call__(
        self, data, content_type=CSV, *, inputs=INPUTS, chunk_size=4, id_column=None, spool=None
    ):
        self.result = ingest(
            data if hasattr(data, "read") else io.BytesIO(data),
            content_type,
            batch_id="b1",
            service="mtService v1",
            inputs=inputs,
            chunk_size=chunk_size,
            blobs=self.blobs,
            on_chunk=lambda *args: self.chunks.append(args),
            id_column=id_column,
            spool_dir=spool,
        )
        return self.result.records

    def table(self, key):
        with self.blobs.open_read(key) as f:
            return pa.ipc.open_file(f).read_all()

    def written(self):
        return self.blobs.list("batches")


@pytest.fixture
def upload(blobs):
    return Upload(blobs)


def csv_of(rows, header="hp,cyl,name", sep=","):
    lines = [header] + [sep.join(str(v) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def arrow_stream(table, max_chunksize=None):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max_chunksize)
    return sink.getvalue().to_pybytes()


TEN = [(100 + i, 4 + i % 3, f"car{i}") for i in range(10)]


# --- chunking --------------------------------------------------------------------------------


def test_ten_records_in_chunks_of_four_make_chunks_of_four_four_and_two(upload):
    total = upload(csv_of(TEN), chunk_size=4)
    assert total == 10
    assert [(seq, start, count) for seq, start, count, _ in upload.chunks] == [
        (0, 0, 4),
        (1, 4, 4),
        (2, 8, 2),
    ]


def test_each_reported_chunk_file_holds_its_records_in_order(upload):
    upload(csv_of(TEN), chunk_size=4)
    for seq, start, count, key in upload.chunks:
        assert key == input_key("b1", seq)
        table = upload.table(key)
        assert table.num_rows == count
        assert table.column("hp").to_pylist() == [
            float(100 + i) for i in range(start, start + count)
        ]


def test_chunk_keys_sort_in_chunk_order(upload):
    upload(csv_of([(i, 1, "x") for i in range(25)]), chunk_size=2)
    keys = [key for *_, key in upload.chunks]
    assert upload.written() == sorted(keys)
    assert len(keys) == 13


def test_an_exact_multiple_makes_no_empty_last_chunk(upload):
    upload(csv_of(TEN[:8]), chunk_size=4)
    assert [count for _, _, count, _ in upload.chunks] == [4, 4]


def test_one_chunk_when_the_chunk_size_exceeds_the_records(upload):
    assert upload(csv_of(TEN), chunk_size=1000) == 10
    assert [(seq, start, count) for seq, start, count, _ in upload.chunks] == [(0, 0, 10)]


def test_arrow_record_batches_are_regrouped_into_chunks(upload):
    table = pa.table({"hp": [float(i) for i in range(10)], "cyl": list(range(10))})
    total = upload(arrow_stream(table, max_chunksize=3), ARROW_STREAM, chunk_size=4)
    assert total == 10
    assert [(start, count) for _, start, count, _ in upload.chunks] == [(0, 4), (4, 4), (8, 2)]
    assert upload.table(upload.chunks[1][3]).column("cyl").to_pylist() == [4, 5, 6, 7]


def test_empty_record_batches_in_an_arrow_stream_are_skipped(upload):
    schema = pa.schema([("hp", pa.float64()), ("cyl", pa.int64())])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.RecordBatch.from_pylist([], schema=schema))
        writer.write_batch(pa.RecordBatch.from_pylist([{"hp": 1.0, "cyl": 2}], schema=schema))
    assert upload(sink.getvalue().to_pybytes(), ARROW_STREAM) == 1
    assert len(upload.chunks) == 1


# --- columns and types -----------------------------------------------------------------------


def test_only_the_input_columns_are_kept_in_declared_order(upload):
    upload(csv_of(TEN, header="name,cyl,hp"), chunk_size=100)
    assert upload.table(upload.chunks[0][3]).column_names == ["hp", "cyl"]


def test_csv_columns_are_conformed_to_the_declared_types(upload):
    upload(csv_of([("1.5", "4", "a"), ("2", "6", "b")]), chunk_size=100)
    table = upload.table(upload.chunks[0][3])
    assert table.schema.field("hp").type == pa.float64()
    assert table.schema.field("cyl").type == pa.int64()
    assert table.to_pylist() == [{"hp": 1.5, "cyl": 4}, {"hp": 2.0, "cyl": 6}]


def test_a_digits_column_declared_as_text_stays_text(upload):
    upload(b"zip\n01234\n98765\n", inputs={"zip": "str"})
    table = upload.table(upload.chunks[0][3])
    assert table.column("zip").to_pylist() == ["01234", "98765"]


def test_a_bad_value_keeps_its_chunk_as_text_and_other_chunks_typed(upload):
    upload(csv_of([(1, 4, "a"), ("abc", 4, "b"), (3, 4, "c"), (4, 4, "d")]), chunk_size=2)
    first = upload.table(upload.chunks[0][3])
    second = upload.table(upload.chunks[1][3])
    assert first.column("hp").to_pylist() == ["1", "abc"]
    assert second.schema.field("hp").type == pa.float64()


def test_an_empty_csv_field_is_a_null(upload):
    upload(b"hp,cyl\n,4\n2.0,\n")
    table = upload.table(upload.chunks[0][3])
    assert table.to_pylist() == [{"hp": None, "cyl": 4}, {"hp": 2.0, "cyl": None}]


def test_arrow_columns_are_conformed_to_the_declared_types(upload):
    table = pa.table(
        {"cyl": pa.array([4.0, 6.0]), "hp": pa.array([100, 110]), "other": pa.array(["x", "y"])}
    )
    upload(arrow_stream(table), ARROW_STREAM)
    written = upload.table(upload.chunks[0][3])
    assert written.schema == pa.schema([("hp", pa.float64()), ("cyl", pa.int64())])


def test_tab_separated_records_are_read(upload):
    assert upload(csv_of(TEN, header="hp\tcyl\tname", sep="\t"), TSV, chunk_size=100) == 10
    assert upload.table(upload.chunks[0][3]).column("cyl").to_pylist()[:3] == [4, 5, 6]


def test_quoted_csv_fields_keep_their_commas(upload):
    upload(b'label\n"a, b"\nc\n', inputs={"label": "str"})
    assert upload.table(upload.chunks[0][3]).column("label").to_pylist() == ["a, b", "c"]


def test_a_column_other_than_the_inputs_that_changes_type_late_does_not_fail_the_upload(upload):
    # pyarrow infers the type of columns that are not inputs from the first block (1 MiB);
    # such columns are dropped anyway, so what they hold further down must not matter.
    rows = [f"{i},{i}" for i in range(150_000)]
    data = ("hp,note\n" + "\n".join(rows) + "\n1,a note\n").encode()
    assert len(data) > 1 << 20
    assert upload(data, inputs={"hp": "float"}, chunk_size=1_000_000) == 150_001


# --- refusals --------------------------------------------------------------------------------


def test_a_missing_column_is_refused_before_any_chunk_is_written(upload):
    with pytest.raises(SchemaError) as caught:
        upload(csv_of(TEN, header="hp,cylinders,name"))
    message = str(caught.value)
    assert "no column 'cyl'" in message
    assert "mtService v1" in message
    assert "hp (float), cyl (int)" in message
    assert "'hp', 'cylinders', 'name'" in message
    assert upload.chunks == []
    assert upload.written() == []


def test_a_missing_column_in_an_arrow_stream_is_refused(upload):
    with pytest.raises(SchemaError, match="no column 'cyl'"):
        upload(arrow_stream(pa.table({"hp": [1.0]})), ARROW_STREAM)
    assert upload.written() == []


def test_a_header_only_csv_missing_an_input_names_the_missing_column(upload):
    with pytest.raises(SchemaError, match="no column 'cyl'"):
        upload(b"hp,cylinders\n")


def test_an_unsupported_content_type_is_refused_with_the_supported_ones(upload):
    with pytest.raises(SchemaError) as caught:
        upload(b'{"hp": 1}\n', "application/json")
    message = str(caught.value)
    assert "Unsupported records format 'application/json'" in message
    for supported in (ARROW_STREAM, CSV, TSV):
        assert supported in message
    assert upload.written() == []


def test_a_malformed_csv_is_refused_naming_the_format(upload):
    with pytest.raises(SchemaError) as caught:
        upload(b"hp,cyl\n1,2\n3\n")
    message = str(caught.value)
    assert message.startswith("The records cannot be read as text/csv:")
    assert "Expected 2 columns, got 1" in message


def test_bytes_that_are_no_arrow_stream_are_refused_naming_the_format(upload):
    with pytest.raises(SchemaError, match=f"cannot be read as {ARROW_STREAM}"):
        upload(b"hp,cyl\n1,2\n", ARROW_STREAM)


def test_an_empty_csv_upload_is_refused(upload):
    with pytest.raises(SchemaError, match="no records"):
        upload(b"")
    assert upload.written() == []


def test_a_header_only_csv_is_refused_without_claiming_it_has_no_header(upload):
    with pytest.raises(SchemaError) as caught:
        upload(b"hp,cyl\n")
    message = str(caught.value)
    assert "no records" in message
    assert "header" not in message
    assert upload.written() == []


def test_a_csv_saved_with_a_byte_order_mark_and_crlf_line_ends_is_read(upload):
    assert upload(b"\xef\xbb\xbfhp,cyl\r\n1,2\r\n3,4\r\n") == 2
    assert upload.table(upload.chunks[0][3]).to_pylist() == [
        {"hp": 1.0, "cyl": 2},
        {"hp": 3.0, "cyl": 4},
    ]


def test_quoted_column_names_are_matched(upload):
    assert upload(b'"hp","cyl"\n1,2\n') == 1


def test_an_empty_arrow_upload_is_refused(upload):
    with pytest.raises(SchemaError, match=f"cannot be read as {ARROW_STREAM}"):
        upload(b"", ARROW_STREAM)


# --- choose_chunk_size -----------------------------------------------------------------------


def test_without_a_record_count_the_default_chunk_size_is_used():
    assert choose_chunk_size(None, 10, default=500, maximum=10_000) == 500
    assert choose_chunk_size(0, 10, default=500, maximum=10_000) == 500


def test_the_chunk_size_gives_about_four_chunks_per_parallel_slot():
    assert choose_chunk_size(1000, 10, default=500, maximum=10_000) == 25
    assert choose_chunk_size(1001, 10, default=500, maximum=10_000) == 26


def test_the_chunk_size_is_capped_at_the_maximum():
    assert choose_chunk_size(10_000_000, 2, default=500, maximum=10_000) == 10_000


def test_the_chunk_size_is_at_least_one():
    assert choose_chunk_size(1, 10, default=500, maximum=10_000) == 1


def test_a_parallel_count_below_one_counts_as_one():
    assert choose_chunk_size(40, 0, default=500, maximum=10_000) == 10
