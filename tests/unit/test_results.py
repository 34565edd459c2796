"""Result stream files and their views (batchserve.engine.results)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from batchserve.blobs import LocalBlobStore
from batchserve.engine.results import (
    BASE_COLUMNS,
    STATUS_CANCELLED,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    ResultWriter,
    cancelled_rows,
    failed_rows,
    flatten,
    read_results,
    result_schema,
    row_to_json,
)

OUTPUTS = {"answer": "float", "label": "str"}
KEY = "batches/b1/results/000000-1.arrow"


@pytest.fixture
def blobs(tmp_path):
    return LocalBlobStore(tmp_path / "blobs")


def ok(index, answer=0.5, label="x", **extra):
    return {
        "index": index,
        "status": STATUS_SUCCEEDED,
        "outputs": {"answer": answer, "label": label},
        "artifacts": [],
        "console_output": "",
        "duration_ms": 1.0,
        "attempts": 1,
        **extra,
    }


def bad(index, error="boom", error_type="ValueError"):
    return {
        "index": index,
        "status": STATUS_FAILED,
        "error": error,
        "error_type": error_type,
        "artifacts": [],
        "console_output": "",
        "duration_ms": 1.0,
        "attempts": 1,
    }


def write(blobs, batches, outputs=OUTPUTS):
    """Write each list of rows as one flushed record batch; returns the file size after each."""
    sizes = []
    writer = ResultWriter(blobs.open_append_stream(KEY), outputs)
    for rows in batches:
        for row in rows:
            writer.add(row)
        writer.flush()
        sizes.append(blobs.size(KEY))
    writer.close()
    return sizes


# --- writing and reading ---------------------------------------------------------------------


def test_rows_written_are_read_back_in_order(blobs):
    write(blobs, [[ok(0, 1.5, "a"), bad(1)], [ok(2, 2.5, "b")]])
    table = read_results(blobs.read_bytes(KEY), OUTPUTS)
    rows = table.to_pylist()
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert rows[0]["outputs"] == {"answer": 1.5, "label": "a"}
    assert rows[1]["status"] == STATUS_FAILED
    assert rows[1]["error"] == "boom"
    assert rows[1]["error_type"] == "ValueError"
    assert rows[1]["outputs"] is None


def test_read_results_accepts_an_open_file(blobs):
    write(blobs, [[ok(0)]])
    with blobs.open_read(KEY) as f:
        assert read_results(f, OUTPUTS).num_rows == 1


def test_rows_are_visible_once_flushed_before_the_writer_is_closed(blobs):
    writer = ResultWriter(blobs.open_append_stream(KEY), OUTPUTS)
    writer.add(ok(0))
    assert read_results(blobs.read_bytes(KEY), OUTPUTS).num_rows == 0
    writer.flush()
    assert read_results(blobs.read_bytes(KEY), OUTPUTS).num_rows == 1
    writer.add(ok(1))
    writer.close()
    assert read_results(blobs.read_bytes(KEY), OUTPUTS).num_rows == 2


def test_the_table_read_has_the_result_schema(blobs):
    write(blobs, [[ok(0)]])
    assert read_results(blobs.read_bytes(KEY), OUTPUTS).schema == result_schema(OUTPUTS)


def test_the_result_schema_has_the_base_columns_and_one_typed_field_per_output():
    schema = result_schema({"n": "int", "ok": "bool"})
    assert schema.names == [*BASE_COLUMNS, "outputs"]
    assert schema.field("outputs").type == pa.struct([("n", pa.int64()), ("ok", pa.bool_())])


def test_nothing_read_is_an_empty_table_with_the_schema():
    table = read_results(b"", OUTPUTS)
    assert table.num_rows == 0
    assert table.schema == result_schema(OUTPUTS)


def test_a_stream_cut_anywhere_yields_exactly_the_batches_complete_before_the_cut(blobs):
    batch_rows = [[ok(0), ok(1)], [bad(2)], [ok(3), ok(4), ok(5)]]
    ends = write(blobs, batch_rows)
    data = blobs.read_bytes(KEY)
    for cut in range(len(data) + 1):
        expected = sum(len(rows) for rows, end in zip(batch_rows, ends, strict=True) if end <= cut)
        table = read_results(data[:cut], OUTPUTS)
        assert table.column("index").to_pylist() == list(range(expected)), cut


def test_a_stream_cut_in_the_middle_of_its_last_batch_keeps_the_earlier_ones(blobs):
    ends = write(blobs, [[ok(0)], [ok(1)], [ok(2)]])
    data = blobs.read_bytes(KEY)
    cut = (ends[1] + ends[2]) // 2
    assert read_results(data[:cut], OUTPUTS).column("index").to_pylist() == [0, 1]


def test_rows_given_as_columns_read_back_as_the_same_rows_given_one_by_one(blobs):
    by_rows = [
        ok(5, 1.5, "a"),
        {**bad(6, "no label", "SchemaError"), "console_output": "printed\n", "attempts": 3},
        ok(7, 2.5, "c", console_output="more\n"),
    ]
    write(blobs, [by_rows])
    expected = read_results(blobs.read_bytes(KEY), OUTPUTS).to_pylist()

    writer = ResultWriter(blobs.open_append_stream("by-columns"), OUTPUTS)
    writer.add_columns(
        5,
        [[1.5, None, 2.5], ["a", None, "c"]],
        [1.0, 1.0, 1.0],
        1,
        failures={1: ("no label", "SchemaError")},
        consoles={1: "printed\n", 2: "more\n"},
        retries={1: 2},
    )
    writer.close()
    assert read_results(blobs.read_bytes("by-columns"), OUTPUTS).to_pylist() == expected


def test_rows_given_as_columns_without_failures_have_no_errors(blobs):
    writer = ResultWriter(blobs.open_append_stream(KEY), {"n": "int"})
    writer.add_columns(0, [[1, 2]], [0.5, 0.25], 2, failures={}, consoles={}, retries={})
    writer.close()
    rows = read_results(blobs.read_bytes(KEY), {"n": "int"}).to_pylist()
    assert rows == [
        {
            "index": i,
            "status": STATUS_SUCCEEDED,
            "error": None,
            "error_type": None,
            "console_output": "",
            "artifacts": [],
            "duration_ms": duration,
            "attempts": 2,
            "outputs": {"n": n},
        }
        for i, n, duration in [(0, 1, 0.5), (1, 2, 0.25)]
    ]


def test_rows_of_a_service_without_outputs_can_be_given_as_columns(blobs):
    writer = ResultWriter(blobs.open_append_stream(KEY), {})
    writer.add_columns(
        0, [], [1.0, 1.0], 1, failures={0: ("boom", "ValueError")}, consoles={}, retries={}
    )
    writer.close()
    rows = read_results(blobs.read_bytes(KEY), {}).to_pylist()
    assert [(r["status"], r["outputs"]) for r in rows] == [
        (STATUS_FAILED, None),
        (STATUS_SUCCEEDED, {}),
    ]


def test_rows_added_one_by_one_and_as_columns_keep_their_order(blobs):
    writer = ResultWriter(blobs.open_append_stream(KEY), OUTPUTS)
    writer.add(ok(0))
    writer.add_columns(1, [[0.5], ["x"]], [1.0], 1, failures={}, consoles={}, retries={})
    writer.add(ok(2))
    writer.close()
    indexes = read_results(blobs.read_bytes(KEY), OUTPUTS).column("index").to_pylist()
    assert indexes == [0, 1, 2]


def test_the_writer_counts_the_bytes_it_wrote(blobs):
    writer = ResultWriter(blobs.open_append_stream(KEY), OUTPUTS)
    writer.add(ok(0))
    writer.flush()
    assert writer.bytes_written == blobs.size(KEY)
    writer.add_columns(1, [[0.5], ["x"]], [1.0], 1, failures={}, consoles={}, retries={})
    writer.close()
    assert writer.bytes_written == blobs.size(KEY)


# --- cancelled and failed filler rows --------------------------------------------------------


def test_cancelled_rows_have_the_message_no_outputs_and_no_attempts():
    rows = cancelled_rows([4, 5], OUTPUTS, "cancelled by ann").to_pylist()
    assert [r["index"] for r in rows] == [4, 5]
    for row in rows:
        assert row["status"] == STATUS_CANCELLED
        assert row["error"] == "cancelled by ann"
        assert row["outputs"] is None
        assert row["artifacts"] == []
        assert row["attempts"] == 0


def test_cancelled_rows_have_the_result_schema():
    assert cancelled_rows([1], OUTPUTS, "x").schema == result_schema(OUTPUTS)


def test_no_indexes_make_no_cancelled_rows():
    assert cancelled_rows([], OUTPUTS, "x").num_rows == 0


def test_failed_rows_carry_the_error_its_type_and_the_attempts():
    rows = failed_rows([7], OUTPUTS, "the worker died", "ChunkFailed", 3).to_pylist()
    assert rows == [
        {
            "index": 7,
            "status": STATUS_FAILED,
            "error": "the worker died",
            "error_type": "ChunkFailed",
            "console_output": None,
            "artifacts": [],
            "duration_ms": None,
            "attempts": 3,
            "outputs": None,
        }
    ]


# --- flatten ---------------------------------------------------------------------------------


def test_flatten_names_a_column_after_each_output(blobs):
    write(blobs, [[ok(0, 1.5, "a")]])
    flat = flatten(read_results(blobs.read_bytes(KEY), OUTPUTS))
    assert flat.column_names == [
        "index",
        "status",
        "answer",
        "label",
        "error",
        "error_type",
        "console_output",
        "duration_ms",
        "attempts",
    ]
    assert flat.to_pylist()[0]["answer"] == 1.5
    assert flat.schema.field("answer").type == pa.float64()


def test_flatten_keeps_nulls_for_failed_records_outputs(blobs):
    write(blobs, [[ok(0, 1.5, "a"), bad(1)], [ok(2, 2.5, "b")]])
    flat = flatten(read_results(blobs.read_bytes(KEY), OUTPUTS))
    assert flat.column("answer").to_pylist() == [1.5, None, 2.5]
    assert flat.column("label").to_pylist() == ["a", None, "b"]
    assert flat.column("error").to_pylist() == [None, "boom", None]


def test_flatten_keeps_nulls_even_where_a_null_record_holds_stale_output_values():
    outputs = pa.StructArray.from_arrays(
        [pa.array([1.0, 2.0]), pa.array(["a", "b"])],
        names=["answer", "label"],
        mask=pa.array([False, True]),
    )
    base = {name: pa.nulls(2, result_schema(OUTPUTS).field(name).type) for name in BASE_COLUMNS}
    base["index"] = pa.array([0, 1])
    table = pa.table({**base, "outputs": outputs}, schema=result_schema(OUTPUTS))
    assert flatten(table).column("answer").to_pylist() == [1.0, None]


def test_flatten_of_a_slice_keeps_rows_and_outputs_together(blobs):
    write(blobs, [[ok(0, 0.0, "a"), ok(1, 1.0, "b"), bad(2), ok(3, 3.0, "d")]])
    flat = flatten(read_results(blobs.read_bytes(KEY), OUTPUTS).slice(1, 3))
    assert flat.select(["index", "answer", "label"]).to_pylist() == [
        {"index": 1, "answer": 1.0, "label": "b"},
        {"index": 2, "answer": None, "label": None},
        {"index": 3, "answer": 3.0, "label": "d"},
    ]


def test_an_output_named_like_a_result_column_gets_a_prefix(blobs):
    outputs = {"status": "str", "error": "float"}
    write(
        blobs,
        [
            [
                {
                    "index": 0,
                    "status": STATUS_SUCCEEDED,
                    "outputs": {"status": "fine", "error": 0.1},
                    "artifacts": [],
                }
            ]
        ],
        outputs,
    )
    flat = flatten(read_results(blobs.read_bytes(KEY), outputs))
    row = flat.to_pylist()[0]
    assert row["status"] == STATUS_SUCCEEDED
    assert row["output_status"] == "fine"
    assert row["output_error"] == 0.1
    assert row["error"] is None


def test_flatten_of_no_results_has_the_columns():
    flat = flatten(read_results(b"", OUTPUTS))
    assert flat.num_rows == 0
    assert "answer" in flat.column_names and "label" in flat.column_names


# --- row_to_json -----------------------------------------------------------------------------


def test_a_succeeded_row_as_json_has_its_outputs(blobs):
    write(blobs, [[ok(3, 0.64, "y", artifacts=["plot.png"], console_output="hi\n")]])
    row = read_results(blobs.read_bytes(KEY), OUTPUTS).to_pylist()[0]
    assert row_to_json(row) == {
        "index": 3,
        "status": STATUS_SUCCEEDED,
        "outputs": {"answer": 0.64, "label": "y"},
        "error": None,
        "error_type": None,
        "console_output": "hi\n",
        "artifacts": ["plot.png"],
        "duration_ms": 1.0,
        "attempts": 1,
    }


def test_a_failed_row_as_json_has_no_outputs_and_its_error(blobs):
    write(blobs, [[bad(1, "bad input", "SchemaError")]])
    got = row_to_json(read_results(blobs.read_bytes(KEY), OUTPUTS).to_pylist()[0])
    assert got["outputs"] == {}
    assert got["error"] == "bad input"
    assert got["error_type"] == "SchemaError"


def test_a_failed_row_never_shows_outputs_even_if_present():
    got = row_to_json({"index": 0, "status": STATUS_FAILED, "outputs": {"answer": 1.0}})
    assert got["outputs"] == {}


def test_a_cancelled_row_as_json_fills_in_defaults():
    row = cancelled_rows([9], OUTPUTS, "stopped").to_pylist()[0]
    assert row_to_json(row) == {
        "index": 9,
        "status": STATUS_CANCELLED,
        "outputs": {},
        "error": "stopped",
        "error_type": None,
        "console_output": "",
        "artifacts": [],
        "duration_ms": None,
        "attempts": 0,
    }


def test_a_succeeded_row_without_outputs_as_json_has_empty_outputs():
    got = row_to_json({"index": 0, "status": STATUS_SUCCEEDED, "outputs": None})
    assert got["outputs"] == {}
    assert got["attempts"] == 0
