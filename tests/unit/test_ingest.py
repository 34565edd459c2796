"""Writing an upload into columnar parts (batchserve.engine.ingest)."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchserve.blobs import LocalBlobStore, keys
from batchserve.engine import ingest as ingest_module
from batchserve.engine import text_records
from batchserve.engine.errors import PayloadTooLarge
from batchserve.engine.ingest import (
    ARROW_FILE,
    ARROW_STREAM,
    CSV,
    ID_FIELD,
    JSONL,
    NDJSON,
    PARQUET,
    TSV,
    UnsupportedFormat,
    decode_type,
    encode_type,
    ingest,
)
from batchserve.schema import SchemaError

INPUTS = {"hp": "float", "cyl": "int"}


@pytest.fixture
def blobs(tmp_path):
    return LocalBlobStore(tmp_path / "blobs")


class Upload:
    """Runs ingest() and keeps what it reported."""

    def __init__(self, blobs):
        self.blobs = blobs
        self.parts = []  # (seq, start index, count, key) of each part written

    def __call__(
        self,
        data,
        content_type=CSV,
        *,
        inputs=INPUTS,
        id_column=None,
        spool=None,
        part_bytes=ingest_module.PART_BYTES,
        max_line_bytes=ingest_module.MAX_LINE_BYTES,
    ):
        def on_part(seq, start, count, size, key):
            assert size > 0
            self.parts.append((seq, start, count, key))

        self.result = ingest(
            data if hasattr(data, "read") else io.BytesIO(data),
            content_type,
            batch_id="b1",
            service="mtService v1",
            inputs=inputs,
            blobs=self.blobs,
            on_part=on_part,
            id_column=id_column,
            spool_dir=spool,
            part_bytes=part_bytes,
            max_line_bytes=max_line_bytes,
        )
        return self.result.records

    def all(self):
        """Every record written, in order."""
        return pa.concat_tables(self.table(key) for *_, key in self.parts)

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


# --- parts -----------------------------------------------------------------------------------


def test_a_small_upload_is_one_part(upload):
    assert upload(csv_of(TEN)) == 10
    assert [(seq, start, count) for seq, start, count, _ in upload.parts] == [(0, 0, 10)]
    assert upload.parts[0][3] == keys.part_key("b1", 0)


@pytest.fixture
def tiny_batches(monkeypatch):
    """Record batches are written as they come, however small."""
    monkeypatch.setattr(ingest_module, "_MIN_BATCH_ROWS", 1)


def test_a_part_is_closed_once_it_holds_its_size_in_bytes(upload, tiny_batches):
    table = pa.table({"hp": [float(i) for i in range(10)], "cyl": list(range(10))})
    assert upload(arrow_stream(table, max_chunksize=3), ARROW_STREAM, part_bytes=1) == 10
    assert [(seq, start, count) for seq, start, count, _ in upload.parts] == [
        (0, 0, 3),
        (1, 3, 3),
        (2, 6, 3),
        (3, 9, 1),
    ]
    for _, start, count, key in upload.parts:
        assert upload.table(key).column("cyl").to_pylist() == list(range(start, start + count))


def test_part_keys_sort_in_part_order(upload, tiny_batches):
    table = pa.table({"hp": [float(i) for i in range(25)], "cyl": list(range(25))})
    upload(arrow_stream(table, max_chunksize=2), ARROW_STREAM, part_bytes=1)
    written = [key for *_, key in upload.parts]
    assert len(written) == 13
    assert upload.written() == sorted(written)


def test_small_record_batches_are_joined_into_larger_ones(upload):
    table = pa.table({"hp": [float(i) for i in range(10)], "cyl": list(range(10))})
    assert upload(arrow_stream(table, max_chunksize=3), ARROW_STREAM) == 10
    ((*_, key),) = upload.parts
    with upload.blobs.open_read(key) as f:
        part = pa.ipc.open_file(f)
        assert part.num_record_batches == 1
        assert part.read_all().column("cyl").to_pylist() == list(range(10))


def test_a_csv_is_read_in_blocks_of_whole_lines_in_order(upload, monkeypatch):
    monkeypatch.setattr(text_records, "_CSV_BLOCK_BYTES", 16)
    rows = [(i, i % 7, f"car{i}") for i in range(500)]
    assert upload(csv_of(rows)) == 500
    table = upload.all()
    assert table.column("hp").to_pylist() == [float(i) for i in range(500)]
    assert table.column("cyl").to_pylist() == [i % 7 for i in range(500)]


def test_a_csv_line_longer_than_a_block_is_read_whole(upload, monkeypatch):
    monkeypatch.setattr(text_records, "_CSV_BLOCK_BYTES", 8)
    data = b"hp,cyl,name\n1.5,4," + b"x" * 100 + b"\n2.5,6,y\n"
    assert upload(data) == 2
    assert upload.all().to_pylist() == [{"hp": 1.5, "cyl": 4}, {"hp": 2.5, "cyl": 6}]


def test_a_csv_without_a_last_line_end_keeps_its_last_record(upload, monkeypatch):
    monkeypatch.setattr(text_records, "_CSV_BLOCK_BYTES", 8)
    assert upload(b"hp,cyl\n1,2\n3,4") == 2
    assert upload.all().column("cyl").to_pylist() == [2, 4]


def test_empty_record_batches_in_an_arrow_stream_are_skipped(upload):
    schema = pa.schema([("hp", pa.float64()), ("cyl", pa.int64())])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.RecordBatch.from_pylist([], schema=schema))
        writer.write_batch(pa.RecordBatch.from_pylist([{"hp": 1.0, "cyl": 2}], schema=schema))
    assert upload(sink.getvalue().to_pybytes(), ARROW_STREAM) == 1
    assert len(upload.parts) == 1


# --- columns and types -----------------------------------------------------------------------


def test_only_the_input_columns_are_kept_in_declared_order(upload):
    upload(csv_of(TEN, header="name,cyl,hp"))
    assert upload.table(upload.parts[0][3]).column_names == ["hp", "cyl"]


def test_csv_columns_are_conformed_to_the_declared_types(upload):
    upload(csv_of([("1.5", "4", "a"), ("2", "6", "b")]))
    table = upload.table(upload.parts[0][3])
    assert table.schema.field("hp").type == pa.float64()
    assert table.schema.field("cyl").type == pa.int64()
    assert table.to_pylist() == [{"hp": 1.5, "cyl": 4}, {"hp": 2.0, "cyl": 6}]


def test_a_digits_column_declared_as_text_stays_text(upload):
    upload(b"zip\n01234\n98765\n", inputs={"zip": "str"})
    table = upload.table(upload.parts[0][3])
    assert table.column("zip").to_pylist() == ["01234", "98765"]


def test_a_bad_value_keeps_its_block_as_text_in_a_part_of_its_own(upload, monkeypatch):
    monkeypatch.setattr(text_records, "_CSV_BLOCK_BYTES", 12)
    monkeypatch.setattr(ingest_module, "_MIN_BATCH_ROWS", 1)
    upload(csv_of([(1, 4, "a"), ("abc", 4, "b"), (3, 4, "c"), (4, 4, "d")]))
    tables = [upload.table(key) for *_, key in upload.parts]
    (text,) = [t for t in tables if t.schema.field("hp").type == pa.string()]
    assert "abc" in text.column("hp").to_pylist()
    assert text.num_rows < 4  # only the block holding it
    typed = [t for t in tables if t.schema.field("hp").type == pa.float64()]
    assert typed, "the blocks without a bad value are typed"
    assert sum(t.num_rows for t in tables) == 4
    assert [start for _, start, _, _ in upload.parts] == sorted(
        start for _, start, _, _ in upload.parts
    )


def test_an_empty_csv_field_is_a_null(upload):
    upload(b"hp,cyl\n,4\n2.0,\n")
    table = upload.table(upload.parts[0][3])
    assert table.to_pylist() == [{"hp": None, "cyl": 4}, {"hp": 2.0, "cyl": None}]


def test_arrow_columns_are_conformed_to_the_declared_types(upload):
    table = pa.table(
        {"cyl": pa.array([4.0, 6.0]), "hp": pa.array([100, 110]), "other": pa.array(["x", "y"])}
    )
    upload(arrow_stream(table), ARROW_STREAM)
    written = upload.table(upload.parts[0][3])
    assert written.schema == pa.schema([("hp", pa.float64()), ("cyl", pa.int64())])


def test_tab_separated_records_are_read(upload):
    assert upload(csv_of(TEN, header="hp\tcyl\tname", sep="\t"), TSV) == 10
    assert upload.table(upload.parts[0][3]).column("cyl").to_pylist()[:3] == [4, 5, 6]


def test_quoted_csv_fields_keep_their_commas(upload):
    upload(b'label\n"a, b"\nc\n', inputs={"label": "str"})
    assert upload.table(upload.parts[0][3]).column("label").to_pylist() == ["a, b", "c"]


def test_a_column_other_than_the_inputs_that_changes_type_late_does_not_fail_the_upload(upload):
    # pyarrow infers the type of columns that are not inputs from the first block (1 MiB);
    # such columns are dropped anyway, so what they hold further down must not matter.
    rows = [f"{i},{i}" for i in range(150_000)]
    data = ("hp,note\n" + "\n".join(rows) + "\n1,a note\n").encode()
    assert len(data) > 1 << 20
    assert upload(data, inputs={"hp": "float"}) == 150_001


# --- refusals --------------------------------------------------------------------------------


def test_a_missing_column_is_refused_before_any_chunk_is_written(upload):
    with pytest.raises(SchemaError) as caught:
        upload(csv_of(TEN, header="hp,cylinders,name"))
    message = str(caught.value)
    assert "no column 'cyl'" in message
    assert "mtService v1" in message
    assert "hp (float), cyl (int)" in message
    assert "'hp', 'cylinders', 'name'" in message
    assert upload.parts == []
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
    assert upload.table(upload.parts[0][3]).to_pylist() == [
        {"hp": 1.0, "cyl": 2},
        {"hp": 3.0, "cyl": 4},
    ]


def test_quoted_column_names_are_matched(upload):
    assert upload(b'"hp","cyl"\n1,2\n') == 1


def test_an_empty_arrow_upload_is_refused(upload):
    with pytest.raises(SchemaError, match=f"cannot be read as {ARROW_STREAM}"):
        upload(b"", ARROW_STREAM)


# --- JSON Lines, Parquet, Arrow files ----------------------------------------------------------


def jsonl_of(rows):
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def parquet_of(table, row_group_size=None):
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue().to_pybytes()


def arrow_file(table, max_chunksize=None):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max_chunksize)
    return sink.getvalue().to_pybytes()


TEN_ROWS = [{"hp": 100.0 + i, "cyl": 4 + i % 3, "name": f"car{i}"} for i in range(10)]
TEN_TABLE = pa.Table.from_pylist(TEN_ROWS)


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        (JSONL, jsonl_of(TEN_ROWS)),
        (NDJSON, jsonl_of(TEN_ROWS)),
        (PARQUET, parquet_of(TEN_TABLE, row_group_size=3)),
        (ARROW_FILE, arrow_file(TEN_TABLE, max_chunksize=3)),
        (ARROW_STREAM, arrow_stream(TEN_TABLE, max_chunksize=3)),
        (CSV, csv_of(TEN)),
    ],
)
def test_each_format_makes_the_same_typed_part(upload, tmp_path, content_type, data):
    assert upload(data, content_type, spool=tmp_path / "spool") == 10
    assert [(start, count) for _, start, count, _ in upload.parts] == [(0, 10)]
    table = upload.all()
    assert table.schema == pa.schema([("hp", pa.float64()), ("cyl", pa.int64())])
    assert table.column("hp").to_pylist() == [100.0 + i for i in range(10)]
    assert table.column("cyl").to_pylist() == [4 + i % 3 for i in range(10)]


@pytest.mark.parametrize("content_type", [PARQUET, ARROW_FILE])
def test_a_spooled_upload_leaves_no_temporary_file(upload, tmp_path, content_type):
    data = parquet_of(TEN_TABLE) if content_type == PARQUET else arrow_file(TEN_TABLE)
    upload(data, content_type, spool=tmp_path / "spool")
    assert list((tmp_path / "spool").iterdir()) == []
    with pytest.raises(SchemaError):
        upload(b"garbage", content_type, spool=tmp_path / "spool")
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_json_value_of_the_wrong_type_is_kept_as_text_for_its_record_to_fail(upload):
    rows = [{"hp": 1.5, "cyl": 4}, {"hp": "abc", "cyl": 4}, {"hp": 2, "cyl": None}]
    assert upload(jsonl_of(rows), JSONL) == 3
    table = upload.table(upload.parts[0][3])
    assert table.column("hp").to_pylist() == ["1.5", "abc", "2"]
    assert table.column("cyl").to_pylist() == [4, 4, None]


def test_a_json_record_without_an_input_has_it_null(upload):
    upload(jsonl_of([{"hp": 1.0, "cyl": 2}, {"hp": 2.0}]), JSONL)
    assert upload.table(upload.parts[0][3]).column("cyl").to_pylist() == [2, None]


def test_blank_lines_and_a_byte_order_mark_in_json_lines_are_skipped(upload):
    data = b'\xef\xbb\xbf{"hp": 1, "cyl": 2}\n\n  \n{"hp": 3, "cyl": 4}'
    assert upload(data, JSONL) == 2


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"hp": 1, "cyl": 2}\n{"hp": 1, "cyl": \n', ["Line 2 ", "not valid JSON"]),
        (b'{"hp": 1, "cyl": 2}\n\n[1, 2]\n', ["Line 3 ", "array, not an object"]),
        (b'"just text"\n', ["Line 1 ", "string, not an object"]),
        (b"\xff\xfe\n", ["Line 1 ", "UTF-8"]),
    ],
)
def test_a_malformed_json_line_is_refused_naming_the_line(upload, data, words):
    with pytest.raises(SchemaError) as caught:
        upload(data, JSONL)
    for word in words:
        assert word in str(caught.value)
    assert upload.written() == []


def test_a_malformed_line_far_into_a_large_json_lines_upload_is_named(upload):
    rows = [json.dumps({"hp": i, "cyl": 1}) for i in range(100_000)]
    rows[80_000] = '{"hp": 1, "cyl": 2'
    data = ("\n".join(rows) + "\n").encode()
    assert len(data) > 2 << 20  # in a later block than the first
    with pytest.raises(SchemaError, match="Line 80001 "):
        upload(data, JSONL)


@pytest.mark.parametrize(
    ("content_type", "data", "match"),
    [
        (JSONL, b"", "no records"),
        (JSONL, b"\n\n", "no records"),
        (PARQUET, b"", "empty"),
        (ARROW_FILE, b"", "empty"),
        (PARQUET, b"PAR1 not really", "cannot be read as application/vnd.apache.parquet"),
        (ARROW_FILE, b"ARROW1 not really", "cannot be read as application/vnd.apache.arrow.file"),
    ],
)
def test_empty_and_malformed_files_are_refused(upload, content_type, data, match):
    with pytest.raises(SchemaError, match=match):
        upload(data, content_type)
    assert upload.written() == []


def test_a_parquet_file_without_rows_is_refused(upload):
    empty = pa.table({"hp": pa.array([], pa.float64()), "cyl": pa.array([], pa.int64())})
    with pytest.raises(SchemaError, match="no records"):
        upload(parquet_of(empty), PARQUET)


@pytest.mark.parametrize("content_type", [JSONL, PARQUET, ARROW_FILE])
def test_a_missing_column_in_a_file_is_refused_naming_it(upload, content_type):
    table = pa.table({"hp": [1.0], "cylinders": [4]})
    data = {
        JSONL: jsonl_of(table.to_pylist()),
        PARQUET: parquet_of(table),
        ARROW_FILE: arrow_file(table),
    }[content_type]
    with pytest.raises(SchemaError, match=r"no column 'cyl'.*'cylinders'"):
        upload(data, content_type)
    assert upload.written() == []


def test_an_unknown_content_type_is_an_unsupported_format(upload):
    with pytest.raises(UnsupportedFormat, match="application/xml"):
        upload(b"<x/>", "application/xml")


class CountingReader(io.RawIOBase):
    """A body that counts the bytes read from it."""

    def __init__(self, data):
        self._data = io.BytesIO(data)
        self.read_so_far = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        n = self._data.readinto(buffer)
        self.read_so_far += n
        return n


def test_a_large_json_lines_upload_writes_parts_while_it_is_still_being_read(blobs):
    rows = [{"hp": float(i), "cyl": i % 8, "note": "x" * 40} for i in range(200_000)]
    data = jsonl_of(rows)
    source = CountingReader(data)
    read_at_part = []
    total = ingest(
        source,
        JSONL,
        batch_id="b1",
        service="mtService v1",
        inputs=INPUTS,
        blobs=blobs,
        on_part=lambda *args: read_at_part.append(source.read_so_far),
        part_bytes=100_000,
    ).records
    assert total == 200_000
    assert len(read_at_part) >= 5
    # The first part is written once a few blocks are read, not after the whole upload.
    assert read_at_part[0] < len(data) / 4
    assert read_at_part == sorted(read_at_part)


def test_a_large_parquet_upload_is_read_row_group_by_row_group(blobs, tmp_path):
    table = pa.table(
        {
            "hp": pa.array(range(400_000), pa.float64()),
            "cyl": pa.array(range(400_000), pa.int64()),
            "note": pa.array(["y" * 30] * 400_000),
        }
    )
    data = parquet_of(table, row_group_size=20_000)
    allocated = []
    pa.default_memory_pool().release_unused()
    before = pa.total_allocated_bytes()
    total = ingest(
        io.BytesIO(data),
        PARQUET,
        batch_id="b1",
        service="mtService v1",
        inputs=INPUTS,
        blobs=blobs,
        on_part=lambda *args: allocated.append(pa.total_allocated_bytes() - before),
        spool_dir=tmp_path / "spool",
        part_bytes=100_000,
    ).records
    assert total == 400_000
    assert len(allocated) >= 5
    # Only a row group or two is decoded at a time: far less than the whole table.
    assert max(allocated) < table.nbytes / 4


# --- the record id column ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "data", "ids"),
    [
        (CSV, b"hp,cyl,key\n1,2,007\n3,4,008\n", ["007", "008"]),
        (JSONL, jsonl_of([{"hp": 1, "cyl": 2, "key": 7}, {"hp": 3, "cyl": 4, "key": 8}]), [7, 8]),
        (PARQUET, parquet_of(pa.table({"hp": [1.0, 3.0], "cyl": [2, 4], "key": [7, 8]})), [7, 8]),
        (
            ARROW_STREAM,
            arrow_stream(pa.table({"key": ["a", "b"], "hp": [1.0, 3.0], "cyl": [2, 4]})),
            ["a", "b"],
        ),
    ],
)
def test_the_id_column_is_kept_beside_the_inputs(upload, content_type, data, ids):
    upload(data, content_type, id_column="key")
    table = upload.table(upload.parts[0][3])
    assert table.column_names == ["hp", "cyl", ID_FIELD]
    assert table.column(ID_FIELD).to_pylist() == ids
    assert upload.result.id_type == table.schema.field(ID_FIELD).type


def test_an_input_used_as_id_keeps_its_raw_values_beside_the_converted_input(upload):
    upload(b"hp,cyl\n1,2\n3,4\n", id_column="cyl")
    table = upload.table(upload.parts[0][3])
    assert table.column("cyl").to_pylist() == [2, 4]
    assert table.column(ID_FIELD).to_pylist() == ["2", "4"]


@pytest.mark.parametrize(
    ("content_type", "data"),
    [(CSV, csv_of(TEN)), (JSONL, jsonl_of(TEN_ROWS)), (PARQUET, parquet_of(TEN_TABLE))],
)
def test_a_missing_id_column_is_refused_naming_it(upload, content_type, data):
    with pytest.raises(SchemaError, match=r"no column 'customer'.*id_column"):
        upload(data, content_type, id_column="customer")
    assert upload.written() == []


def test_json_ids_that_change_type_are_refused(upload):
    rows = [{"hp": 1, "cyl": 1, "key": i} for i in range(5)] + [{"hp": 1, "cyl": 1, "key": "x"}]
    with pytest.raises(SchemaError, match="id column 'key' holds values of different types"):
        upload(jsonl_of(rows), JSONL, id_column="key")


def test_json_ids_first_missing_then_given_take_the_given_type(upload):
    rows = [{"hp": 1, "cyl": 1}] * 3 + [{"hp": 1, "cyl": 1, "key": 5}]
    upload(jsonl_of(rows), JSONL, id_column="key")
    assert upload.result.id_type == pa.int64()


def test_a_nested_id_column_is_refused(upload):
    table = pa.table({"hp": [1.0], "cyl": [2], "key": [[1, 2]]})
    with pytest.raises(SchemaError, match="single values"):
        upload(arrow_stream(table), ARROW_STREAM, id_column="key")


def test_an_arrow_type_survives_its_text_form():
    for data_type in (pa.int64(), pa.string(), pa.timestamp("ms", tz="UTC"), pa.decimal128(9, 2)):
        assert decode_type(encode_type(data_type)) == data_type


def _cut_in_the_middle(data):
    return data[:200] + b"\0" * 64 + data[264:]


FIVE_HUNDRED = pa.table({"hp": [1.0] * 500, "cyl": [1] * 500})


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        (PARQUET, _cut_in_the_middle(parquet_of(FIVE_HUNDRED, row_group_size=50))),
        (ARROW_FILE, arrow_file(TEN_TABLE)[:300] + arrow_file(TEN_TABLE)[-200:]),
        (ARROW_STREAM, arrow_stream(TEN_TABLE, max_chunksize=2)[:-100]),
    ],
)
def test_damaged_binary_files_are_refused_as_unreadable(upload, content_type, data):
    with pytest.raises(SchemaError, match=f"cannot be read as {content_type}"):
        upload(data, content_type)
    assert upload.parts == []


# --- hostile uploads: bounded, and refused with a message ------------------------------------


class Endless(io.RawIOBase):
    """``size`` bytes of one byte value and no line break; counts what was read of them."""

    def __init__(self, size, fill=b"a", head=b""):
        self.left = size
        self.fill = fill
        self.head = head
        self.read_bytes = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
        else:
            n = min(len(buffer), self.left)
            buffer[:n] = self.fill * n
            self.left -= n
        self.read_bytes += n
        return n


@pytest.mark.parametrize(
    ("content_type", "head", "line"),
    [(JSONL, b'{"hp": 1, "cyl": 2}\n{"hp": "', 2), (CSV, b"hp,cyl\n1,2\n3,", 3)],
)
def test_a_line_past_the_limit_is_refused_before_it_is_read_whole(upload, content_type, head, line):
    body = Endless(64 << 20, head=head)
    with pytest.raises(PayloadTooLarge, match=f"Line {line} .* longer than the limit of 2097152"):
        upload(io.BufferedReader(body), content_type, max_line_bytes=2 << 20)
    assert body.read_bytes < 12 << 20  # about the limit and a block or two, not the whole line
    assert upload.parts == []


def test_a_line_up_to_the_limit_is_read(upload):
    long = "x" * (3 << 20)
    data = f'{{"hp": 1, "cyl": 2, "note": "{long}"}}\n{{"hp": 3, "cyl": 4}}\n'.encode()
    assert upload(data, JSONL, max_line_bytes=4 << 20) == 2


def test_a_csv_value_longer_than_pyarrows_block_is_read(upload):
    data = b"hp,cyl,note\n1,2," + b"x" * (10 << 20) + b"\n3,4,short\n"
    assert upload(data, CSV) == 2
    assert upload.all().column("cyl").to_pylist() == [2, 4]


def test_a_csv_header_name_over_the_csv_field_limit_is_refused(upload):
    data = b"hp,cyl," + b"n" * (200 << 10) + b"\n1,2,3\n"
    with pytest.raises(SchemaError, match=r"header row .* cannot be read"):
        upload(data, CSV)


def test_a_csv_header_line_without_end_is_refused(upload):
    with pytest.raises(SchemaError, match=r"header row .* longer than"):
        upload(io.BufferedReader(Endless(8 << 20, fill=b"h")), CSV)


@pytest.mark.parametrize(
    "column",
    [
        pa.array([{"a": 1.0}]),
        pa.array([[1.0]]),
        pa.array([b"1"]),
        pa.array([[("a", 1)]], pa.map_(pa.string(), pa.int64())),
    ],
    ids=["struct", "list", "binary", "map"],
)
@pytest.mark.parametrize("content_type", [PARQUET, ARROW_FILE, ARROW_STREAM])
def test_a_nested_or_binary_input_column_is_refused_naming_it(upload, column, content_type):
    table = pa.table({"hp": column, "cyl": [1]})
    data = {
        PARQUET: parquet_of,
        ARROW_FILE: arrow_file,
        ARROW_STREAM: arrow_stream,
    }[content_type](table)
    kind = str(column.type).split("<")[0]  # Parquet names a list's items otherwise
    with pytest.raises(SchemaError, match=f"input column 'hp' holds values of type {kind}"):
        upload(data, content_type)
    assert upload.parts == []


def test_other_columns_may_hold_anything(upload):
    table = pa.table({"hp": [1.0], "cyl": [1], "extra": [{"a": [b"x"]}]})
    assert upload(arrow_stream(table), ARROW_STREAM) == 1


@pytest.mark.parametrize("depth", [65, 50_000])
def test_json_lines_nested_too_deep_are_refused_before_parsing(upload, depth):
    deep = "[" * depth + "]" * depth
    data = f'{{"hp": 1, "cyl": 2}}\n{{"hp": 1, "cyl": 2, "x": {deep}}}\n'.encode()
    with pytest.raises(SchemaError, match=r"Line 2 of the JSON Lines records nests .* 64 levels"):
        upload(data, JSONL)


def test_json_lines_nested_up_to_the_limit_are_read(upload):
    deep = "[" * 60 + "]" * 60
    assert upload(f'{{"hp": 1, "cyl": 2, "x": {deep}}}\n'.encode(), JSONL) == 1
