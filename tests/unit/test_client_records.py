"""What the SDK sends for each kind of records given to ``Service.batch()``."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchserve.client._records import (
    ARROW_STREAM,
    CSV,
    FILE_PIECE_BYTES,
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
