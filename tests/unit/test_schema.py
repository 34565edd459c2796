"""Declared schemas and the checks of values against them (batchserve.schema)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchserve.schema import (
    SchemaError,
    check_columns,
    check_json_depth,
    coerce,
    coerce_record,
    conform_column,
    describe,
    json_too_deep,
    normalize_schema,
)

# Tests assert behaviour, never timings.
no_deadline = settings(deadline=None)


# --- normalize_schema ------------------------------------------------------------------------


def test_no_schema_is_an_empty_schema():
    assert normalize_schema(None, "inputs") == {}


def test_a_valid_schema_is_returned_unchanged():
    schema = {"hp": "float", "cyl": "int", "name": "str", "manual": "bool"}
    assert normalize_schema(schema, "inputs") == schema


def test_a_schema_that_is_not_a_mapping_is_refused():
    with pytest.raises(SchemaError, match=r"^outputs must be an object mapping names to types"):
        normalize_schema(["hp"], "outputs")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["1st", "with space", "a-b", ""])
def test_a_parameter_name_must_be_an_identifier(name):
    with pytest.raises(SchemaError, match="not a valid parameter name"):
        normalize_schema({name: "int"}, "inputs")


def test_an_unknown_type_name_is_refused_with_the_supported_types():
    with pytest.raises(SchemaError) as caught:
        normalize_schema({"hp": "decimal"}, "inputs")
    assert str(caught.value) == (
        "inputs: 'hp' has type 'decimal'; declare it as int, float, str or bool "
        "(or R's integer, numeric, character, logical)."
    )


def test_a_python_type_is_not_a_type_name():
    with pytest.raises(SchemaError, match="declare it as int, float, str or bool"):
        normalize_schema({"hp": float}, "inputs")


def test_r_type_names_are_read_as_batchserve_types():
    declared = {"hp": "numeric", "cyl": "integer", "name": "character", "am": "logical"}
    assert normalize_schema(declared, "inputs") == {
        "hp": "float",
        "cyl": "int",
        "name": "str",
        "am": "bool",
    }


def test_describe_lists_names_and_types():
    assert describe({"hp": "float", "wt": "float"}) == "hp (float), wt (float)"
    assert describe({}) == "no inputs"


# --- coerce: floats --------------------------------------------------------------------------


@no_deadline
@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_an_int_is_accepted_for_a_float(value):
    for kind in ("input", "output"):
        got = coerce(value, "float", "x", kind)
        assert type(got) is float
        assert got == value


@no_deadline
@given(st.floats(allow_nan=False))
def test_a_float_is_accepted_for_a_float(value):
    assert coerce(value, "float", "x") == value


def test_nan_is_a_float_value_not_a_missing_one():
    assert math.isnan(coerce(float("nan"), "float", "x"))


@pytest.mark.parametrize("type_name", ["float", "int"])
@pytest.mark.parametrize("kind", ["input", "output"])
@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_refused_for_a_number(type_name, kind, value):
    with pytest.raises(SchemaError) as caught:
        coerce(value, type_name, "x", kind)
    assert str(caught.value) == f"{kind} 'x' must be {type_name}, got bool {value}."


def test_text_is_parsed_leniently_for_a_float_input():
    assert coerce(" 2.5 ", "float", "x") == 2.5
    assert coerce("3", "float", "x") == 3.0


def test_text_that_is_no_number_is_refused_for_a_float_input():
    with pytest.raises(SchemaError) as caught:
        coerce("abc", "float", "hp")
    assert str(caught.value) == "input 'hp' must be float, got str 'abc'."


def test_text_is_refused_for_a_float_output():
    with pytest.raises(SchemaError) as caught:
        coerce("2.5", "float", "answer", kind="output")
    assert str(caught.value) == "output 'answer' must be float, got str '2.5'."


# --- coerce: ints ----------------------------------------------------------------------------


@no_deadline
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_text_of_an_int_is_parsed_for_an_int_input_only(value):
    assert coerce(str(value), "int", "n") == value
    with pytest.raises(SchemaError):
        coerce(str(value), "int", "n", kind="output")


def test_a_whole_float_is_accepted_for_an_int():
    got = coerce(3.0, "int", "n")
    assert type(got) is int
    assert got == 3


def test_a_fractional_float_is_refused_for_an_int():
    with pytest.raises(SchemaError, match=r"^input 'n' must be int, got float 2\.5\.$"):
        coerce(2.5, "int", "n")


def test_text_of_a_fraction_is_refused_for_an_int_input():
    with pytest.raises(SchemaError, match=r"must be int, got str '2\.5'"):
        coerce("2.5", "int", "n")


# --- coerce: bools and text ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["true", "T", " yes ", "Y", "1"])
def test_true_words_are_true_for_a_bool_input(text):
    assert coerce(text, "bool", "flag") is True


@pytest.mark.parametrize("text", ["false", "F", "no", "N", "0"])
def test_false_words_are_false_for_a_bool_input(text):
    assert coerce(text, "bool", "flag") is False


def test_other_words_are_refused_for_a_bool_input():
    with pytest.raises(SchemaError, match="input 'flag' must be bool, got str 'maybe'"):
        coerce("maybe", "bool", "flag")


def test_zero_and_one_are_accepted_for_a_bool_but_two_is_not():
    assert coerce(1, "bool", "flag") is True
    assert coerce(0, "bool", "flag") is False
    with pytest.raises(SchemaError):
        coerce(2, "bool", "flag")


def test_text_is_refused_for_a_bool_output():
    with pytest.raises(SchemaError, match="output 'flag' must be bool"):
        coerce("true", "bool", "flag", kind="output")


def test_a_number_is_accepted_as_text_for_a_str_input():
    assert coerce(42, "str", "code") == "42"
    assert coerce(1.5, "str", "code") == "1.5"


def test_a_number_is_refused_for_a_str_output():
    with pytest.raises(SchemaError, match="output 'label' must be str, got int 42"):
        coerce(42, "str", "label", kind="output")


def test_a_bool_is_refused_for_a_str_input():
    with pytest.raises(SchemaError, match="must be str, got bool True"):
        coerce(True, "str", "code")


def test_a_long_wrong_value_is_shortened_in_the_message():
    with pytest.raises(SchemaError) as caught:
        coerce("x" * 500, "float", "hp")
    message = str(caught.value)
    assert "..." in message
    assert len(message) < 120


# --- coerce: missing values ------------------------------------------------------------------


@pytest.mark.parametrize("type_name", ["int", "float", "str", "bool"])
def test_a_missing_input_says_it_is_missing(type_name):
    with pytest.raises(SchemaError) as caught:
        coerce(None, type_name, "hp")
    assert str(caught.value) == f"input 'hp' is missing (no value given; expected {type_name})."


def test_a_missing_output_says_to_return_one():
    with pytest.raises(SchemaError) as caught:
        coerce(None, "float", "answer", kind="output")
    assert str(caught.value) == "output 'answer' has no value (expected float); return one."


@pytest.mark.parametrize("type_name", ["int", "str", "bool"])
def test_nan_counts_as_missing_for_a_non_float(type_name):
    with pytest.raises(SchemaError, match="is missing"):
        coerce(float("nan"), type_name, "hp")


# --- coerce: numpy scalars -------------------------------------------------------------------


def test_numpy_scalars_become_python_values():
    got_float = coerce(np.float32(1.5), "float", "x")
    got_int = coerce(np.int64(7), "int", "x", kind="output")
    got_bool = coerce(np.bool_(True), "bool", "x", kind="output")
    assert type(got_float) is float and got_float == 1.5
    assert type(got_int) is int and got_int == 7
    assert got_bool is True


def test_a_numpy_int_is_accepted_for_a_float_output():
    got = coerce(np.int32(4), "float", "y", kind="output")
    assert type(got) is float and got == 4.0


def test_a_numpy_bool_is_refused_for_an_int():
    with pytest.raises(SchemaError, match="must be int, got bool True"):
        coerce(np.bool_(True), "int", "x")


def test_a_numpy_nan_is_missing_for_an_int():
    with pytest.raises(SchemaError, match="is missing"):
        coerce(np.float64("nan"), "int", "x")


# --- coerce_record ---------------------------------------------------------------------------


def test_coerce_record_checks_every_declared_input_and_drops_the_rest():
    got = coerce_record({"hp": "120", "wt": 2, "extra": "x"}, {"hp": "float", "wt": "float"})
    assert got == {"hp": 120.0, "wt": 2.0}


def test_coerce_record_names_the_missing_input():
    with pytest.raises(SchemaError, match=r"^input 'wt' is missing"):
        coerce_record({"hp": 1.0}, {"hp": "float", "wt": "float"})


# --- check_columns ---------------------------------------------------------------------------


def test_check_columns_accepts_extra_columns():
    check_columns(["hp", "wt", "name"], {"hp": "float", "wt": "float"}, "mtService v1")


def test_check_columns_names_the_missing_column_the_inputs_and_the_columns_present():
    with pytest.raises(SchemaError) as caught:
        check_columns(["hp", "weight"], {"hp": "float", "wt": "float"}, "mtService v1")
    assert str(caught.value) == (
        "The records have no column 'wt'; service mtService v1 takes the inputs hp (float), "
        "wt (float). The records have the columns 'hp', 'weight'. Rename the columns to match "
        "the inputs."
    )


def test_check_columns_names_every_missing_column():
    with pytest.raises(SchemaError) as caught:
        check_columns(["a"], {"hp": "float", "wt": "float"}, "svc 1")
    assert "no columns 'hp', 'wt';" in str(caught.value)


def test_check_columns_says_when_there_are_no_columns():
    with pytest.raises(SchemaError, match=r"have the columns \(none\)"):
        check_columns([], {"hp": "float"}, "svc 1")


# --- conform_column --------------------------------------------------------------------------


def test_a_column_of_the_declared_type_is_kept_as_is():
    column = pa.array([1.0, 2.0])
    assert conform_column(column, "float") is column


def test_text_that_all_parses_is_cast_to_the_declared_type():
    got = conform_column(pa.array(["1.5", "2", None]), "float")
    assert got.type == pa.float64()
    assert got.to_pylist() == [1.5, 2.0, None]


def test_ints_are_cast_to_floats():
    got = conform_column(pa.array([1, 2]), "float")
    assert got.type == pa.float64()
    assert got.to_pylist() == [1.0, 2.0]


def test_whole_floats_are_cast_to_ints():
    got = conform_column(pa.array([1.0, None, 3.0]), "int")
    assert got.type == pa.int64()
    assert got.to_pylist() == [1, None, 3]


def test_one_bad_value_keeps_the_column_as_text_so_only_its_record_fails():
    got = conform_column(pa.array(["1.5", "abc", "3"]), "float")
    assert got.type == pa.string()
    values = got.to_pylist()
    assert coerce(values[0], "float", "hp") == 1.5
    assert coerce(values[2], "float", "hp") == 3.0
    with pytest.raises(SchemaError, match="got str 'abc'"):
        coerce(values[1], "float", "hp")


def test_a_fractional_float_keeps_an_int_column_as_text():
    got = conform_column(pa.array([1.0, 2.5]), "int")
    assert got.type == pa.string()
    with pytest.raises(SchemaError, match="must be int"):
        coerce(got.to_pylist()[1], "int", "n")


def test_text_booleans_stay_text_and_are_parsed_per_record():
    got = conform_column(pa.array(["yes", "no"]), "bool")
    assert got.type == pa.string()
    assert [coerce(v, "bool", "flag") for v in got.to_pylist()] == [True, False]


def test_conform_column_works_on_chunked_arrays():
    got = conform_column(pa.chunked_array([["1"], ["2"]]), "int")
    assert got.type == pa.int64()
    assert got.to_pylist() == [1, 2]


@pytest.mark.parametrize("type_name", ["int", "float"])
def test_a_boolean_in_a_number_column_fails_its_record_as_it_would_alone(type_name):
    # coerce() refuses a bool for an int or a float: an uploaded column must not be more lenient.
    values = conform_column(pa.array([True, False]), type_name).to_pylist()
    with pytest.raises(SchemaError):
        coerce(values[0], type_name, "n")


def test_a_two_in_a_bool_column_fails_its_record_as_it_would_alone():
    # coerce() refuses 2 for a bool; a cast to bool would silently make it True.
    values = conform_column(pa.array([0, 1, 2]), "bool").to_pylist()
    assert [coerce(v, "bool", "flag") for v in values[:2]] == [False, True]
    with pytest.raises(SchemaError):
        coerce(values[2], "bool", "flag")


# --- JSON nesting, measured without parsing ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (b"[" * 65 + b"]" * 65, 1),
        (b"[" * 64 + b"]" * 64, None),
        (b"[" * 50_000 + b"]" * 50_000, 1),
        (b'{"a": "' + b"[" * 100 + b'"}', None),  # brackets in a string are text
        (b'{"a": "\\"' + b"[" * 100 + b'"}', None),  # an escaped quote does not end it
        (b'{"a": "\\\\", "b": ' + b"[" * 100 + b"]" * 100 + b"}", 1),  # an escaped backslash
        (b'{"a": 1}\n' * 3 + b"[" * 70, 4),
    ],
)
def test_json_nesting_is_measured_without_parsing(text, line):
    assert json_too_deep(text, lines=True) == line


def test_json_lines_are_measured_one_by_one():
    forty = (b"[" * 40 + b"]" * 40 + b"\n") * 3
    assert json_too_deep(forty + b'{"a": "unended\n' + b"[" * 70, lines=True) == 5
    assert json_too_deep(b"[" * 40 + b"\n" + b"[" * 40, lines=True) is None
    assert json_too_deep(b"[" * 40 + b"\n" + b"[" * 40) == 2  # one document over two lines


def test_too_deep_json_is_refused_naming_the_line():
    with pytest.raises(SchemaError, match=r"Line 12 of the records nests .* more than 64 levels"):
        check_json_depth(b"{}\n" + b"[" * 65, "the records", lines=True, lines_before=10)
    with pytest.raises(SchemaError, match=r"^The body nests"):
        check_json_depth("[" * 65, "the body")


def _depth(value):
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n\t'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=30,
)


@no_deadline
@given(value=_JSON, limit=st.integers(0, 6))
def test_json_nesting_measured_without_parsing_agrees_with_the_parsed_value(value, limit):
    text = json.dumps(value).encode()
    assert (json_too_deep(text, limit=limit) is not None) == (_depth(value) > limit)
