"""The ML Server face's pure parts: type mapping, JSON records to Arrow, code bundles."""

from __future__ import annotations

import io

import dill
import pyarrow as pa
import pytest

from batchserve.engine.errors import BadRequest
from batchserve.server.mlserver.batches import records_stream
from batchserve.server.mlserver.bundle import build_bundle
from batchserve.server.mlserver.schemas import ParameterDefinition, types_in, types_out
from batchserve.worker import bundles


def defs(**types: str) -> list[ParameterDefinition]:
    return [ParameterDefinition(name=n, type=t) for n, t in types.items()]


def test_ml_server_type_names_map_onto_batchserve_types_in_order():
    schema = types_in(defs(b="logical", a="integer", c="numeric", d="character"), "Input")
    assert list(schema.items()) == [("b", "bool"), ("a", "int"), ("c", "float"), ("d", "str")]
    assert types_out(schema) == defs(b="logical", a="integer", c="numeric", d="character")


def test_python_type_names_are_accepted_too():
    assert types_in(defs(x="float", y="str"), "Input") == {"x": "float", "y": "str"}


@pytest.mark.parametrize("kind", ["vector", "matrix", "data.frame"])
def test_collection_types_are_refused_with_a_way_forward(kind):
    with pytest.raises(BadRequest, match="one record per row"):
        types_in(defs(x=kind), "Input")


def read(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(io.BytesIO(data)).read_all()


def test_json_records_become_typed_arrow_columns_of_the_inputs_only():
    data, count = records_stream(
        [{"x": 1, "s": "a", "junk": 0}, {"x": 2, "s": None}], {"x": "int", "s": "str"}, "svc v1"
    )
    table = read(data)
    assert count == 2
    assert table.schema.names == ["x", "s"]
    assert table.column("x").type == pa.int64()
    assert table.to_pylist() == [{"x": 1, "s": "a"}, {"x": 2, "s": None}]


def test_a_value_of_the_wrong_type_keeps_its_column_as_text_for_the_engine_to_judge():
    table = read(records_stream([{"x": 1}, {"x": "one"}], {"x": "int"}, "svc v1")[0])
    assert table.column("x").to_pylist() == ["1", "one"]


def test_records_that_are_not_an_array_of_objects_are_refused():
    with pytest.raises(BadRequest, match="JSON array"):
        records_stream({"x": [1]}, {"x": "int"}, "svc v1")
    with pytest.raises(BadRequest, match="Record 1"):
        records_stream([{"x": 1}, 2], {"x": "int"}, "svc v1")


def test_a_code_bundle_opens_its_dill_objects_only_in_the_worker_runtime():
    data = build_bundle("y = x * factor + offset", "offset = 1", {"factor": dill.dumps(3)})
    service = bundles.load(data, {"y": "int"})
    assert service.call({"x": 2}) == {"y": 7}


def test_a_bundle_with_an_unreadable_object_names_it():
    data = build_bundle("y = x", None, {"model": b"garbage"})
    with pytest.raises(bundles.BundleError, match="'model'"):
        bundles.load(data, {"y": "int"})


def test_code_that_does_not_compile_is_refused_before_it_is_stored():
    with pytest.raises(BadRequest, match="initCode"):
        build_bundle("y = 1", "def (", {})
