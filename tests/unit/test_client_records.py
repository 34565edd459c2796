"""What the SDK sends for each kind of records given to ``Service.batch()``."""

from __future__ import annotations

import io
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchserve.client._records import (
    ARROW_FILE,
    ARROW_STREAM,
    CSV,
    FILE_PIECE_BYTES,
    JSONL,
    PARQUET,
    TSV,
    _arrow_pieces,
    records_body,
)
from batchserve.errors import InvalidRecordsError, UsageError

INPUTS = ["hp", "wt"]


def sent_table(body) -> pa.Table:
    """Decode an Arrow upload the way the server does: as one IPC stream."""
    assert body.content_type == ARROW_STREAM
    return pa.ipc.open_stream(b"".join(body.pieces())).read_all()


# -- in-memory records become an Arrow stream ---------------------------------------------------


def test_dataframe_sends_only_the_input_columns_in_declared_order():
    df = pd.DataFrame({"wt": [2.6, 3.2], "name": ["a", "b"], "hp": [110.0, 150.0]})
    body = records_body(df, INPUTS)
    table = sent_table(body)
    assert table.column_names == ["hp", "wt"]
    assert table.column("hp").to_pylist() == [110.0, 150.0]
    assert body.record_count == 2


def test_dataframe_missing_an_input_is_sent_whole_for_the_server_to_name_what_is_missing():
    df = pd.DataFrame({"hp": [110.0], "weight": [2.6]})
    assert sent_table(records_body(df, INPUTS)).column_names == ["hp", "weight"]


def test_dataframe_index_is_not_sent():
    df = pd.DataFrame({"hp": [1.0, 2.0], "wt": [3.0, 4.0]}, index=[10, 20])
    assert sent_table(records_body(df, INPUTS)).column_names == ["hp", "wt"]


def test_dataframe_nan_is_sent_as_null():
    df = pd.DataFrame({"hp": [1.0, np.nan], "wt": [3.0, 4.0]})
    assert sent_table(records_body(df, INPUTS)).column("hp").to_pylist() == [1.0, None]


def test_list_of_dicts_becomes_columns_with_missing_keys_as_null():
    rows = [{"hp": 110, "wt": 2.6}, {"wt": 3.2, "hp": 150}, {"hp": 93}]
    body = records_body(rows, INPUTS)
    table = sent_table(body)
    assert table.to_pydict() == {"hp": [110, 150, 93], "wt": [2.6, 3.2, None]}
    assert body.record_count == 3


def test_dict_of_columns_is_sent_as_columns():
    body = records_body({"hp": [110, 150], "wt": np.array([2.6, 3.2])}, INPUTS)
    assert sent_table(body).to_pydict() == {"hp": [110, 150], "wt": [2.6, 3.2]}
    assert body.record_count == 2


def test_pyarrow_table_is_sent_with_its_input_columns():
    table = pa.table({"x": [1], "wt": [2.0], "hp": [3.0]})
    assert sent_table(records_body(table, INPUTS)).column_names == ["hp", "wt"]


def test_column_of_mixed_types_is_sent_as_text_with_none_kept_null():
    rows = [{"hp": 1.0, "wt": 2.0}, {"hp": "abc", "wt": 2.0}, {"hp": None, "wt": 2.0}]
    table = sent_table(records_body(rows, INPUTS))
    assert table.schema.field("hp").type == pa.string()
    assert table.column("hp").to_pylist() == ["1.0", "abc", None]
    assert table.schema.field("wt").type == pa.float64()


def test_dataframe_column_of_mixed_types_is_sent_as_text_with_nan_kept_null():
    df = pd.DataFrame({"hp": pd.Series([1.5, "abc", np.nan], dtype=object), "wt": [1.0, 2.0, 3.0]})
    table = sent_table(records_body(df, INPUTS))
    assert table.column("hp").to_pylist() == ["1.5", "abc", None]


def test_arrow_upload_is_a_stream_of_pieces_written_one_record_batch_at_a_time():
    table = pa.table({"hp": list(range(25)), "wt": [1.0] * 25})
    pieces = _arrow_pieces(table, rows_per_batch=10)
    assert isinstance(pieces, types.GeneratorType)
    chunks = list(pieces)
    assert len(chunks) >= 3 and all(chunks)
    reader = pa.ipc.open_stream(b"".join(chunks))
    assert [batch.num_rows for batch in reader] == [10, 10, 5]


def test_upload_body_can_be_produced_again_for_a_retry():
    body = records_body([{"hp": 1, "wt": 2}], INPUTS)
    assert b"".join(body.pieces()) == b"".join(body.pieces())


# -- files are streamed as they are -------------------------------------------------------------


def test_csv_path_is_streamed_as_text_csv(tmp_path: Path):
    path = tmp_path / "cars.csv"
    path.write_text("hp,wt\n110,2.6\n150,3.2\n")
    body = records_body(str(path), INPUTS)
    assert body.content_type == CSV
    assert b"".join(body.pieces()) == path.read_bytes()
    assert body.record_count == 2  # a hint for chunk sizes, from the newlines


def test_the_row_count_hint_of_a_file_counts_a_last_line_without_newline(tmp_path: Path):
    path = tmp_path / "cars.csv"
    path.write_text("hp,wt\n110,2.6\n150,3.2")
    assert records_body(str(path), INPUTS).record_count == 2


def test_tsv_path_is_streamed_as_tab_separated_values(tmp_path: Path):
    path = tmp_path / "cars.tsv"
    path.write_text("hp\twt\n110\t2.6\n")
    body = records_body(path, INPUTS)
    assert body.content_type == TSV
    assert b"".join(body.pieces()) == path.read_bytes()


def test_txt_path_with_tabs_is_sent_as_tsv_and_without_as_csv(tmp_path: Path):
    tabs, commas = tmp_path / "a.txt", tmp_path / "b.txt"
    tabs.write_text("hp\twt\n1\t2\n")
    commas.write_text("hp,wt\n1,2\n")
    assert records_body(tabs, INPUTS).content_type == TSV
    assert records_body(commas, INPUTS).content_type == CSV


def test_large_file_is_read_in_pieces_of_one_mebibyte(tmp_path: Path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"hp,wt\n" + b"1,2\n" * (FILE_PIECE_BYTES // 2))
    pieces = list(records_body(path, INPUTS).pieces())
    assert len(pieces) == 3
    assert max(len(p) for p in pieces) == FILE_PIECE_BYTES
    assert b"".join(pieces) == path.read_bytes()


def test_file_of_another_format_is_refused_naming_the_accepted_extensions(tmp_path: Path):
    path = tmp_path / "cars.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(InvalidRecordsError) as caught:
        records_body(path, INPUTS)
    for extension in (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".arrow", ".arrows"):
        assert extension in str(caught.value)


def test_missing_file_is_refused_with_its_path(tmp_path: Path):
    with pytest.raises(InvalidRecordsError, match="no records file"):
        records_body(tmp_path / "nope.csv", INPUTS)


# -- records that cannot be sent ----------------------------------------------------------------


def test_dict_of_columns_with_unequal_lengths_is_refused():
    with pytest.raises(InvalidRecordsError, match=r"same length.*'hp' has 3.*'wt' has 2"):
        records_body({"hp": [1, 2, 3], "wt": [1, 2]}, INPUTS)


def test_dict_of_scalars_is_refused_with_a_hint_for_one_record():
    with pytest.raises(InvalidRecordsError, match="list of values"):
        records_body({"hp": 1.0, "wt": 2.0}, INPUTS)


def test_list_holding_something_other_than_dicts_is_refused_naming_the_record():
    with pytest.raises(InvalidRecordsError, match="Record 1 is a list"):
        records_body([{"hp": 1, "wt": 2}, [1, 2]], INPUTS)


@pytest.mark.parametrize("records", [[], {"hp": [], "wt": []}, pd.DataFrame({"hp": [], "wt": []})])
def test_empty_records_are_refused(records):
    with pytest.raises(InvalidRecordsError, match="no records"):
        records_body(records, INPUTS)


def test_unsupported_container_is_refused_listing_what_is_accepted():
    with pytest.raises(InvalidRecordsError, match="DataFrame, a list of dicts"):
        records_body(42, INPUTS)


def test_invalid_records_error_is_a_value_error_and_a_usage_error():
    with pytest.raises(ValueError):
        records_body(42, INPUTS)
    assert issubclass(InvalidRecordsError, UsageError)


# -- records files of every format, by path or open file --------------------------------------


TABLE = pa.table({"hp": [110.0, 150.0, 93.0], "wt": [2.6, 3.2, 2.3], "key": ["a", "b", "c"]})


def write_records(path: Path) -> Path:
    import json

    import pyarrow.csv as pacsv
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    suffix = path.suffix
    if suffix == ".jsonl" or suffix == ".ndjson":
        path.write_text("".join(json.dumps(r) + "\n" for r in TABLE.to_pylist()))
    elif suffix == ".parquet":
        pq.write_table(TABLE, path)
    elif suffix in (".arrow", ".feather", ".ipc"):
        feather.write_feather(TABLE, path)
    elif suffix == ".arrows":
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, TABLE.schema) as w:
            w.write_table(TABLE)
    else:
        pacsv.write_csv(TABLE, path)
    return path


@pytest.mark.parametrize(
    ("name", "content_type", "count"),
    [
        ("r.csv", CSV, 3),
        ("r.jsonl", JSONL, None),
        ("r.ndjson", JSONL, None),
        ("r.parquet", PARQUET, 3),
        ("r.arrow", ARROW_FILE, 3),
        ("r.feather", ARROW_FILE, 3),
        ("r.ipc", ARROW_FILE, 3),
        ("r.arrows", ARROW_STREAM, None),
    ],
)
def test_a_records_file_is_sent_as_it_is_with_its_format_and_a_cheap_count(
    tmp_path: Path, name, content_type, count
):
    path = write_records(tmp_path / name)
    body = records_body(path, INPUTS)
    assert body.content_type == content_type
    assert body.record_count == count
    assert b"".join(body.pieces()) == path.read_bytes()


def test_an_arrow_named_file_holding_a_stream_is_sent_as_a_stream(tmp_path: Path):
    path = tmp_path / "r.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, TABLE.schema) as w:
        w.write_table(TABLE)
    assert records_body(path, INPUTS).content_type == ARROW_STREAM


def test_format_overrides_the_extension(tmp_path: Path):
    path = write_records(tmp_path / "r.jsonl").rename(tmp_path / "records.data")
    assert records_body(path, INPUTS, format="jsonl").content_type == JSONL
    with pytest.raises(InvalidRecordsError, match="format='xls'"):
        records_body(path, INPUTS, format="xls")


def test_an_open_binary_file_takes_its_format_from_its_name_and_can_be_sent_again(tmp_path):
    path = write_records(tmp_path / "r.parquet")
    with open(path, "rb") as f:
        body = records_body(f, INPUTS)
        assert body.content_type == PARQUET
        assert b"".join(body.pieces()) == path.read_bytes()
        assert b"".join(body.pieces()) == path.read_bytes()  # a retry sends it all again


def test_a_nameless_file_needs_a_format():
    data = b'{"hp": 1, "wt": 2}\n'
    with pytest.raises(InvalidRecordsError, match="format="):
        records_body(io.BytesIO(data), INPUTS)
    body = records_body(io.BytesIO(data), INPUTS, format="ndjson")
    assert body.content_type == JSONL
    assert b"".join(body.pieces()) == data


def test_a_file_opened_in_text_mode_is_refused_with_how_to_open_it(tmp_path: Path):
    path = write_records(tmp_path / "r.csv")
    with open(path) as f:
        body = records_body(f, INPUTS)
        with pytest.raises(InvalidRecordsError, match="'rb'"):
            b"".join(body.pieces())


def test_format_is_refused_for_in_memory_records():
    with pytest.raises(InvalidRecordsError, match="format="):
        records_body([{"hp": 1, "wt": 2}], INPUTS, format="csv")


# -- an iterator of records ---------------------------------------------------------------------


def test_an_iterator_is_streamed_in_record_batches_read_as_the_upload_goes(monkeypatch):
    monkeypatch.setattr("batchserve.client._records.ROWS_PER_BATCH", 100)
    taken = []

    def records():
        for i in range(350):
            taken.append(i)
            yield {"wt": float(i), "hp": i, "other": "x"}

    body = records_body(records(), {"hp": "float", "wt": "float"})
    assert len(taken) == 1  # only the first record is read to check it
    pieces = body.pieces()
    first = next(pieces)
    assert len(taken) < 350 and first
    rest = list(pieces)
    table = pa.ipc.open_stream(b"".join([first, *rest])).read_all()
    assert table.column_names == ["hp", "wt"]
    assert table.schema.field("hp").type == pa.float64()  # the declared type
    assert table.column("hp").to_pylist() == [float(i) for i in range(350)]
    assert [b.num_rows for b in pa.ipc.open_stream(b"".join([first, *rest]))] == [
        100,
        100,
        100,
        50,
    ]
    assert body.record_count is None


def test_an_iterator_keeps_the_id_column_beside_the_inputs():
    body = records_body(iter([{"hp": 1, "wt": 2, "id": 7, "x": 0}]), INPUTS, id_column="id")
    assert sent_table(body).column_names == ["hp", "wt", "id"]


def test_an_iterator_can_be_sent_only_once():
    body = records_body(iter([{"hp": 1, "wt": 2}]), INPUTS)
    list(body.pieces())
    with pytest.raises(InvalidRecordsError, match="only once"):
        list(body.pieces())


def test_a_bad_value_in_the_first_records_sends_the_column_as_text(monkeypatch):
    monkeypatch.setattr("batchserve.client._records.ROWS_PER_BATCH", 2)
    rows = [{"hp": "abc", "wt": 1.0}, {"hp": 2.0, "wt": 1.0}, {"hp": 3.0, "wt": 1.0}]
    table = sent_table(records_body(iter(rows), {"hp": "float", "wt": "float"}))
    assert table.column("hp").to_pylist() == ["abc", "2.0", "3.0"]


def test_a_later_value_of_another_type_is_refused_naming_its_record(monkeypatch):
    monkeypatch.setattr("batchserve.client._records.ROWS_PER_BATCH", 2)
    rows = [{"hp": 1.0, "wt": 1.0}] * 3 + [{"hp": "abc", "wt": 1.0}]
    body = records_body(iter(rows), {"hp": "float", "wt": "float"})
    with pytest.raises(InvalidRecordsError, match="Record 3 has hp='abc'"):
        list(body.pieces())


@pytest.mark.parametrize("records", [iter([]), (r for r in [])])
def test_an_empty_iterator_is_refused(records):
    with pytest.raises(InvalidRecordsError, match="no records"):
        records_body(records, INPUTS)


def test_an_iterator_of_something_other_than_dicts_is_refused():
    with pytest.raises(InvalidRecordsError, match="Record 0 is a int"):
        records_body(iter([1, 2]), INPUTS)


# -- the id column --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "records",
    [
        pd.DataFrame({"key": ["a"], "hp": [1.0], "wt": [2.0], "x": [0]}),
        [{"key": "a", "hp": 1.0, "wt": 2.0, "x": 0}],
        {"key": ["a"], "hp": [1.0], "wt": [2.0], "x": [0]},
        pa.table({"key": ["a"], "hp": [1.0], "wt": [2.0], "x": [0]}),
    ],
)
def test_the_id_column_is_sent_after_the_inputs(records):
    table = sent_table(records_body(records, INPUTS, id_column="key"))
    assert table.column_names == ["hp", "wt", "key"]
    assert table.column("key").to_pylist() == ["a"]


def test_an_id_column_that_is_an_input_is_sent_once():
    table = sent_table(records_body({"hp": [1.0], "wt": [2.0]}, INPUTS, id_column="hp"))
    assert table.column_names == ["hp", "wt"]


def test_a_missing_id_column_is_refused_before_anything_is_sent():
    with pytest.raises(InvalidRecordsError, match=r"no column 'key'.*'hp', 'wt'"):
        records_body({"hp": [1.0], "wt": [2.0]}, INPUTS, id_column="key")
