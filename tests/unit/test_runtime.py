"""The service runtime (batchserve.worker.runtime and bundles), run in-process.

Service functions are defined inside the tests so that cloudpickle stores them by value, as it
does for functions a data scientist defines in a notebook.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import os

import cloudpickle
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchserve.blobs import LocalBlobStore
from batchserve.engine.inputs import PartRef
from batchserve.engine.results import STATUS_FAILED, STATUS_SUCCEEDED, read_results
from batchserve.engine.tasks import ChunkTask, ConsumeTask, ServiceSpec
from batchserve.schema import ARROW_TYPES
from batchserve.worker import frames as frames_module
from batchserve.worker import rows as rows_module
from batchserve.worker import runtime as runtime_module
from batchserve.worker.bundles import BundleError, frame_outputs
from batchserve.worker.runtime import MAX_CONSOLE_CHARS, Runtime, artifact_key

_keys = itertools.count()


@pytest.fixture(autouse=True)
def start_in_tmp_path(tmp_path, monkeypatch):
    # Records change the working directory; whatever a test does, the next one starts clean.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def every_record_flushed_and_reported(monkeypatch):
    monkeypatch.setattr(runtime_module, "FLUSH_INTERVAL", 0)
    monkeypatch.setattr(rows_module, "MAX_BLOCK", 1)  # records run in blocks of one


@pytest.fixture
def blobs(tmp_path):
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def scratch(tmp_path):
    return tmp_path / "scratch"


@pytest.fixture
def runtime(blobs, scratch):
    return Runtime(blobs, scratch=str(scratch))


@pytest.fixture
def publish(blobs):
    def publish(code, *, inputs, outputs, init=None, models=None, objects=None, artifacts=()):
        kind = "code" if isinstance(code, str) else "callable"
        bundle = {
            "format": 1,
            "kind": kind,
            "code": code,
            "init": init,
            "models": models or {},
            "objects": objects or {},
        }
        key = f"services/svc/{next(_keys)}/bundle.pkl"
        blobs.write_bytes(key, cloudpickle.dumps(bundle))
        return ServiceSpec(
            key=key,
            bundle_key=key,
            mode="row",
            inputs=inputs,
            outputs=outputs,
            artifacts=tuple(artifacts),
        )

    return publish


def run(runtime, spec, inputs, index=0, sink=None):
    return runtime.run_record(spec, inputs, index=index, artifact_sink=sink)


def write_chunk(blobs, table, key="batches/b1/inputs/000000.arrow"):
    with blobs.open_write(key) as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)
    return key


def chunk_task(
    spec,
    input_key,
    *,
    start_index=0,
    count,
    attempt=1,
    batch_id="b1",
    environment=None,
    result_key="batches/b1/results/000000-1.arrow",
    retries=0,
    timeout=None,
):
    return ChunkTask(
        task_id=f"t-{next(_keys)}",
        batch_id=batch_id,
        chunk_id=1,
        start_index=start_index,
        count=count,
        attempt=attempt,
        # One part holding exactly the chunk's records.
        parts=(PartRef(input_key, start_index, count),),
        result_key=result_key,
        service=spec,
        environment=environment or {},
        max_task_retry_count=retries,
        task_timeout=timeout,
    )


def counts_of(result):
    """The record counts of a finished chunk's result (which also has its statistics)."""
    return {"succeeded": result["succeeded"], "failed": result["failed"]}


def test_the_runtime_creates_its_scratch_folder(blobs, scratch):
    Runtime(blobs, scratch=str(scratch))
    assert scratch.is_dir()


# --- calling a function ----------------------------------------------------------------------


def test_inputs_are_passed_as_keyword_arguments(runtime, publish):
    def service(wt, hp):
        return hp - wt

    spec = publish(service, inputs={"hp": "float", "wt": "float"}, outputs={"answer": "float"})
    row = run(runtime, spec, {"hp": 120.0, "wt": 20.0})
    assert row["status"] == STATUS_SUCCEEDED
    assert row["outputs"] == {"answer": 100.0}


def test_inputs_are_coerced_to_their_declared_types_before_the_call(runtime, publish):
    def service(hp, cyl, manual):
        return f"{type(hp).__name__} {type(cyl).__name__} {manual!r}"

    spec = publish(
        service, inputs={"hp": "float", "cyl": "int", "manual": "bool"}, outputs={"kinds": "str"}
    )
    row = run(runtime, spec, {"hp": "110", "cyl": "6", "manual": "yes"})
    assert row["outputs"] == {"kinds": "float int True"}


def test_a_dict_return_is_mapped_to_outputs_by_name(runtime, publish):
    def service(x):
        return {"double": x * 2, "label": "even" if x % 2 == 0 else "odd", "ignored": 1}

    spec = publish(service, inputs={"x": "int"}, outputs={"label": "str", "double": "int"})
    assert run(runtime, spec, {"x": 3})["outputs"] == {"label": "odd", "double": 6}


def test_a_single_value_becomes_the_first_output(runtime, publish):
    def service(x):
        return x + 1

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    assert run(runtime, spec, {"x": 1})["outputs"] == {"y": 2}


def test_a_tuple_is_mapped_to_outputs_by_position(runtime, publish):
    def service(x):
        return x, str(x)

    spec = publish(service, inputs={"x": "int"}, outputs={"number": "int", "text": "str"})
    assert run(runtime, spec, {"x": 7})["outputs"] == {"number": 7, "text": "7"}


def test_an_int_return_is_accepted_for_a_float_output(runtime, publish):
    def service(x):
        return 3

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "float"})
    row = run(runtime, spec, {"x": 1})
    assert row["outputs"] == {"y": 3.0}
    assert type(row["outputs"]["y"]) is float


def test_a_numpy_return_becomes_a_python_value(runtime, publish):
    def service(x):
        import numpy

        return numpy.float64(x) / 2

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "float"})
    row = run(runtime, spec, {"x": 3})
    assert row["outputs"] == {"y": 1.5}
    assert type(row["outputs"]["y"]) is float


def test_a_result_row_has_its_index_and_a_duration(runtime, publish):
    def service(x):
        return x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    row = run(runtime, spec, {"x": 1}, index=41)
    assert row["index"] == 41
    assert row["duration_ms"] >= 0
    assert row["artifacts"] == []


# --- code strings ----------------------------------------------------------------------------


def test_code_sees_inputs_as_variables_and_outputs_are_read_back(runtime, publish):
    spec = publish(
        "answer = hp / wt\nlabel = 'heavy' if wt > 3 else 'light'",
        inputs={"hp": "float", "wt": "float"},
        outputs={"answer": "float", "label": "str"},
    )
    row = run(runtime, spec, {"hp": 120, "wt": 4})
    assert row["outputs"] == {"answer": 30.0, "label": "heavy"}


def test_code_that_does_not_set_an_output_fails_naming_it(runtime, publish):
    spec = publish("other = x", inputs={"x": "int"}, outputs={"y": "int"})
    row = run(runtime, spec, {"x": 1})
    assert row["status"] == STATUS_FAILED
    assert row["error_type"] == "NameError"
    assert "output variable(s) y" in row["error"]


def test_variables_set_by_one_record_are_not_seen_by_the_next(runtime, publish):
    code = "y = seen if 'seen' in dir() else 'fresh'\nseen = 'stale'"
    spec = publish(code, inputs={"x": "int"}, outputs={"y": "str"})
    assert run(runtime, spec, {"x": 1})["outputs"] == {"y": "fresh"}
    assert run(runtime, spec, {"x": 2})["outputs"] == {"y": "fresh"}


# --- init ------------------------------------------------------------------------------------


def test_an_init_function_runs_once_per_loaded_service(runtime, publish, tmp_path):
    log = tmp_path / "init.log"

    def init():
        with open(log, "a") as f:
            f.write("init\n")

    def service(x):
        return x

    spec = publish(service, init=init, inputs={"x": "int"}, outputs={"y": "int"})
    for i in range(3):
        assert run(runtime, spec, {"x": i})["status"] == STATUS_SUCCEEDED
    assert log.read_text() == "init\n"


def test_a_second_runtime_loads_the_service_and_runs_init_again(blobs, scratch, publish, tmp_path):
    log = tmp_path / "init.log"

    def init():
        with open(log, "a") as f:
            f.write("init\n")

    def service(x):
        return x

    spec = publish(service, init=init, inputs={"x": "int"}, outputs={"y": "int"})
    for _ in range(2):
        fresh = Runtime(blobs, scratch=str(scratch))
        run(fresh, spec, {"x": 1})
        run(fresh, spec, {"x": 2})
    assert log.read_text() == "init\ninit\n"


def test_an_init_string_runs_once_per_loaded_service(runtime, publish, tmp_path):
    log = tmp_path / "init.log"
    spec = publish(
        "y = x + offset",
        init="open(LOG, 'a').write('init\\n')\noffset = 10",
        objects={"LOG": str(log)},
        inputs={"x": "int"},
        outputs={"y": "int"},
    )
    assert [run(runtime, spec, {"x": i})["outputs"] for i in range(3)] == [
        {"y": 10},
        {"y": 11},
        {"y": 12},
    ]
    assert log.read_text() == "init\n"


def test_globals_set_by_an_init_function_are_seen_by_the_function(runtime, publish):
    def init():
        global offset
        offset = 10

    def service(x):
        return x + offset  # a global set by init

    spec = publish(service, init=init, inputs={"x": "int"}, outputs={"y": "int"})
    assert run(runtime, spec, {"x": 1})["outputs"] == {"y": 11}


def test_a_dict_returned_by_init_becomes_globals_of_the_function(runtime, publish):
    def init():
        return {"offset": 5}

    def service(x):
        return x + offset  # returned by init

    spec = publish(service, init=init, inputs={"x": "int"}, outputs={"y": "int"})
    assert run(runtime, spec, {"x": 1})["outputs"] == {"y": 6}


def test_an_init_string_defines_globals_of_the_function(runtime, publish):
    def service(x):
        return x + offset  # defined by the init string

    spec = publish(service, init="offset = 100", inputs={"x": "int"}, outputs={"y": "int"})
    assert run(runtime, spec, {"x": 1})["outputs"] == {"y": 101}


def test_a_dict_returned_by_init_is_seen_by_code(runtime, publish):
    def init():
        return {"offset": 5}

    spec = publish("y = x + offset", init=init, inputs={"x": "int"}, outputs={"y": "int"})
    assert run(runtime, spec, {"x": 1})["outputs"] == {"y": 6}


def test_globals_set_by_an_init_function_are_seen_by_code(runtime, publish):
    # "code ... run in a namespace holding ... what the init code defined" (bundles.py), as a
    # function's globals are for a callable.
    def init():
        global offset
        offset = 10

    spec = publish("y = x + offset", init=init, inputs={"x": "int"}, outputs={"y": "int"})
    row = run(runtime, spec, {"x": 1})
    assert row.get("error") is None
    assert row["outputs"] == {"y": 11}


def test_a_failing_init_fails_every_record_with_a_bundle_error(runtime, publish, tmp_path):
    log = tmp_path / "init.log"

    def init():
        with open(log, "a") as f:
            f.write("init\n")
        raise RuntimeError("model file not found")

    def service(x):
        return x

    spec = publish(service, init=init, inputs={"x": "int"}, outputs={"y": "int"})
    rows = [run(runtime, spec, {"x": i}, index=i) for i in range(3)]
    for row in rows:
        assert row["status"] == STATUS_FAILED
        assert row["error_type"] == "BundleError"
        assert row["error"] == "the service's init failed: RuntimeError: model file not found"
    assert log.read_text() == "init\n"  # the failure is remembered, not retried per record


def test_a_failing_init_string_fails_records_with_a_bundle_error(runtime, publish):
    spec = publish("y = x", init="1 / 0", inputs={"x": "int"}, outputs={"y": "int"})
    row = run(runtime, spec, {"x": 1})
    assert row["error_type"] == "BundleError"
    assert "ZeroDivisionError" in row["error"]


def test_a_bundle_that_cannot_be_unpickled_fails_records_with_a_bundle_error(runtime, blobs):
    blobs.write_bytes("services/broken", b"not a pickle")
    spec = ServiceSpec(
        key="services/broken",
        bundle_key="services/broken",
        mode="row",
        inputs={"x": "int"},
        outputs={"y": "int"},
        artifacts=(),
    )
    row = run(runtime, spec, {"x": 1})
    assert row["error_type"] == "BundleError"
    assert row["error"].startswith("the service bundle cannot be loaded:")


def test_a_pickle_that_is_no_bundle_fails_records_with_a_bundle_error(runtime, blobs):
    blobs.write_bytes("services/other", cloudpickle.dumps(["not", "a", "bundle"]))
    spec = ServiceSpec(
        key="services/other",
        bundle_key="services/other",
        mode="row",
        inputs={"x": "int"},
        outputs={"y": "int"},
        artifacts=(),
    )
    row = run(runtime, spec, {"x": 1})
    assert row["error_type"] == "BundleError"
    assert row["error"] == "the service bundle is not a batchserve bundle"


def test_a_missing_bundle_fails_records_with_a_bundle_error(runtime):
    # BundleError: "The bundle cannot be loaded or its init failed".
    spec = ServiceSpec(
        key="services/gone",
        bundle_key="services/gone",
        mode="row",
        inputs={"x": "int"},
        outputs={"y": "int"},
        artifacts=(),
    )
    row = run(runtime, spec, {"x": 1})
    assert row["status"] == STATUS_FAILED
    assert row["error_type"] == "BundleError"


def test_an_unknown_bundle_kind_is_a_bundle_error(runtime, blobs):
    blobs.write_bytes("services/k", cloudpickle.dumps({"kind": "notebook", "code": "y = 1"}))
    spec = ServiceSpec(
        key="services/k",
        bundle_key="services/k",
        mode="row",
        inputs={"x": "int"},
        outputs={"y": "int"},
        artifacts=(),
    )
    row = run(runtime, spec, {"x": 1})
    assert row["error_type"] == "BundleError"
    assert "unknown bundle kind 'notebook'" in row["error"]


def test_runtime_service_raises_the_remembered_bundle_error(runtime, publish):
    spec = publish("y = x", init="1 / 0", inputs={"x": "int"}, outputs={"y": "int"})
    with pytest.raises(BundleError):
        runtime.service(spec)
    with pytest.raises(BundleError):
        runtime.service(spec)


# --- models and objects ----------------------------------------------------------------------


def test_models_and_objects_are_globals_of_the_function(runtime, publish):
    def service(x):
        return model["slope"] * x + intercept  # noqa: F821 - published models and objects

    spec = publish(
        service,
        models={"model": {"slope": 2}},
        objects={"intercept": 1},
        inputs={"x": "int"},
        outputs={"y": "int"},
    )
    assert run(runtime, spec, {"x": 5})["outputs"] == {"y": 11}


def test_models_and_objects_are_variables_of_code(runtime, publish):
    spec = publish(
        "y = model['slope'] * x + intercept",
        models={"model": {"slope": 3}},
        objects={"intercept": 2},
        inputs={"x": "int"},
        outputs={"y": "int"},
    )
    assert run(runtime, spec, {"x": 5})["outputs"] == {"y": 17}


def test_init_sees_models_and_objects(runtime, publish):
    def init():
        return {"offset": model * 10}  # noqa: F821 - a published model

    def service(x):
        return x + offset  # returned by init

    spec = publish(
        service, init=init, models={"model": 4}, inputs={"x": "int"}, outputs={"y": "int"}
    )
    assert run(runtime, spec, {"x": 1})["outputs"] == {"y": 41}


# --- console output --------------------------------------------------------------------------


def test_console_output_is_captured_per_record(runtime, publish, capsys):
    def service(x):
        print(f"working on {x}")
        return x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    first = run(runtime, spec, {"x": 1})
    second = run(runtime, spec, {"x": 2})
    assert first["console_output"] == "working on 1\n"
    assert second["console_output"] == "working on 2\n"
    assert "working on" not in capsys.readouterr().out


def test_console_output_is_kept_when_the_record_fails(runtime, publish):
    def service(x):
        print("about to fail")
        raise ValueError("nope")

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    row = run(runtime, spec, {"x": 1})
    assert row["status"] == STATUS_FAILED
    assert row["console_output"] == "about to fail\n"


def test_very_long_console_output_is_truncated(runtime, publish):
    def service(x):
        print("x" * (MAX_CONSOLE_CHARS + 100))
        return x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    text = run(runtime, spec, {"x": 1})["console_output"]
    assert text.endswith("[console output truncated]\n")
    assert len(text) < MAX_CONSOLE_CHARS + 100


# --- failures --------------------------------------------------------------------------------


def test_an_exception_fails_the_record_with_its_message_and_type(runtime, publish):
    def service(x):
        raise ValueError(f"cannot score {x}")

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    row = run(runtime, spec, {"x": 3})
    assert row["status"] == STATUS_FAILED
    assert row["error"] == "cannot score 3"
    assert row["error_type"] == "ValueError"
    assert "outputs" not in row


def test_an_exception_without_a_message_is_described_by_its_repr(runtime, publish):
    def service(x):
        raise KeyError

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    row = run(runtime, spec, {"x": 3})
    assert row["error"] == "KeyError()"
    assert row["error_type"] == "KeyError"


def test_a_wrongly_typed_input_fails_the_record_before_the_call(runtime, publish, tmp_path):
    called = tmp_path / "called"

    def service(hp):
        called.write_text("yes")
        return hp

    spec = publish(service, inputs={"hp": "float"}, outputs={"y": "float"})
    row = run(runtime, spec, {"hp": "fast"})
    assert row["status"] == STATUS_FAILED
    assert row["error_type"] == "SchemaError"
    assert row["error"] == "input 'hp' must be float, got str 'fast'."
    assert not called.exists()


def test_a_missing_input_fails_the_record_saying_it_is_missing(runtime, publish):
    def service(hp, wt):
        return hp

    spec = publish(service, inputs={"hp": "float", "wt": "float"}, outputs={"y": "float"})
    row = run(runtime, spec, {"hp": 1.0})
    assert row["error_type"] == "SchemaError"
    assert row["error"] == "input 'wt' is missing (no value given; expected float)."


def test_an_output_of_the_wrong_type_fails_the_record(runtime, publish):
    def service(x):
        return "high"

    spec = publish(service, inputs={"x": "int"}, outputs={"score": "float"})
    row = run(runtime, spec, {"x": 1})
    assert row["status"] == STATUS_FAILED
    assert row["error_type"] == "SchemaError"
    assert row["error"] == "output 'score' must be float, got str 'high'."


def test_an_output_left_out_of_a_returned_dict_fails_the_record(runtime, publish):
    def service(x):
        return {"a": 1}

    spec = publish(service, inputs={"x": "int"}, outputs={"a": "int", "b": "int"})
    row = run(runtime, spec, {"x": 1})
    assert row["error"] == "output 'b' has no value (expected int); return one."


def test_a_tuple_of_the_wrong_length_is_not_spread_over_the_outputs(runtime, publish):
    def service(x):
        return (1, 2, 3)

    spec = publish(service, inputs={"x": "int"}, outputs={"a": "int", "b": "int"})
    row = run(runtime, spec, {"x": 1})
    assert row["status"] == STATUS_FAILED
    assert "output 'a' must be int, got tuple" in row["error"]


# --- artifacts and the working directory -----------------------------------------------------


def test_declared_files_written_in_the_working_directory_become_artifacts(runtime, publish):
    def service(x):
        with open("plot.txt", "w") as f:
            f.write(f"plot of {x}")
        with open("notes.txt", "w") as f:
            f.write("not declared")
        return x

    spec = publish(
        service, inputs={"x": "int"}, outputs={"y": "int"}, artifacts=["plot.txt", "table.csv"]
    )
    received = []
    row = run(
        runtime,
        spec,
        {"x": 4},
        index=9,
        sink=lambda index, name, data: received.append((index, name, data)),
    )
    assert row["artifacts"] == ["plot.txt"]
    assert received == [(9, "plot.txt", b"plot of 4")]


def test_each_record_has_its_own_working_directory(runtime, publish, scratch):
    def service(x):
        if x == 0:
            with open("plot.txt", "w") as f:
                f.write("only for record 0")
        with open("cwd.txt", "w") as f:
            f.write(os.getcwd())
        return x

    spec = publish(
        service, inputs={"x": "int"}, outputs={"y": "int"}, artifacts=["plot.txt", "cwd.txt"]
    )
    files = {}
    rows = [
        run(
            runtime,
            spec,
            {"x": i},
            index=i,
            sink=lambda index, name, data: files.__setitem__((index, name), data),
        )
        for i in range(2)
    ]
    assert rows[0]["artifacts"] == ["plot.txt", "cwd.txt"]
    assert rows[1]["artifacts"] == ["cwd.txt"]
    first, second = files[(0, "cwd.txt")].decode(), files[(1, "cwd.txt")].decode()
    assert first != second
    assert os.path.dirname(first) == os.path.realpath(scratch)


def test_record_working_directories_are_removed_afterwards(runtime, publish, scratch):
    def service(x):
        with open("plot.txt", "w") as f:
            f.write("x")
        return x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"}, artifacts=["plot.txt"])
    run(runtime, spec, {"x": 1}, sink=lambda *args: None)
    assert list(scratch.iterdir()) == []


def test_artifacts_of_a_failed_record_are_still_collected(runtime, publish):
    def service(x):
        with open("debug.txt", "w") as f:
            f.write("state before the failure")
        raise RuntimeError("late failure")

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"}, artifacts=["debug.txt"])
    received = []
    row = run(runtime, spec, {"x": 1}, sink=lambda *args: received.append(args))
    assert row["status"] == STATUS_FAILED
    assert row["artifacts"] == ["debug.txt"]
    assert received == [(0, "debug.txt", b"state before the failure")]


def test_the_working_directory_is_restored_after_a_record(runtime, publish):
    def service(x):
        os.chdir("/")
        if x:
            raise ValueError("fails after changing directory")
        return x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"}, artifacts=["a.txt"])
    before = os.getcwd()
    run(runtime, spec, {"x": 0}, sink=lambda *args: None)
    assert os.getcwd() == before
    run(runtime, spec, {"x": 1}, sink=lambda *args: None)
    assert os.getcwd() == before


# --- run_chunk -------------------------------------------------------------------------------


def test_run_chunk_writes_one_result_per_record_in_index_order(runtime, publish, blobs):
    def service(x):
        if x == 2:
            raise ValueError("two is not allowed")
        return x * 10

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    key = write_chunk(blobs, pa.table({"x": [0, 1, 2, 3]}))
    task = chunk_task(spec, key, start_index=8, count=4, attempt=2)
    counts = runtime.run_chunk(task, lambda *args: None)
    assert counts_of(counts) == {"succeeded": 3, "failed": 1}
    rows = read_results(blobs.read_bytes(task.result_key), spec.outputs).to_pylist()
    assert [r["index"] for r in rows] == [8, 9, 10, 11]
    assert [r["status"] for r in rows] == ["succeeded", "succeeded", "failed", "succeeded"]
    assert [r["outputs"] and r["outputs"]["y"] for r in rows] == [0, 10, None, 30]
    assert rows[2]["error"] == "two is not allowed"
    assert rows[2]["error_type"] == "ValueError"
    assert {r["attempts"] for r in rows} == {2}


def test_run_chunk_fails_only_the_record_with_a_bad_value(runtime, publish, blobs):
    def service(hp):
        return hp * 2

    spec = publish(service, inputs={"hp": "float"}, outputs={"y": "float"})
    key = write_chunk(blobs, pa.table({"hp": ["1.5", "abc", None]}))
    task = chunk_task(spec, key, count=3)
    assert counts_of(runtime.run_chunk(task, lambda *args: None)) == {"succeeded": 1, "failed": 2}
    rows = read_results(blobs.read_bytes(task.result_key), spec.outputs).to_pylist()
    assert rows[0]["outputs"] == {"y": 3.0}
    assert rows[1]["error"] == "input 'hp' must be float, got str 'abc'."
    assert rows[2]["error"] == "input 'hp' is missing (no value given; expected float)."


@pytest.mark.usefixtures("every_record_flushed_and_reported")
def test_run_chunk_reports_progress_through_the_callback(runtime, publish, blobs):
    def service(x):
        if x < 0:
            raise ValueError("negative")
        return x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    key = write_chunk(blobs, pa.table({"x": [1, -1, 2]}))
    reports = []
    runtime.run_chunk(
        chunk_task(spec, key, count=3), lambda s, f: reports.append((s, f)), progress_interval=0
    )
    assert reports == [(1, 0), (1, 1), (2, 1)]


@pytest.mark.usefixtures("every_record_flushed_and_reported")
def test_rows_reported_as_progress_are_already_readable(runtime, publish, blobs):
    def service(x):
        return x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    task = chunk_task(spec, write_chunk(blobs, pa.table({"x": [1, 2, 3]})), count=3)
    seen = []

    def report(succeeded, failed):
        data = blobs.read_bytes(task.result_key)
        seen.append((succeeded, read_results(data, spec.outputs).num_rows))

    runtime.run_chunk(task, report, progress_interval=0)
    assert seen == [(1, 1), (2, 2), (3, 3)]


def test_run_chunk_gives_the_function_values_of_the_declared_types(runtime, publish, blobs):
    def service(n, hp, label):
        return f"{type(n).__name__} {type(hp).__name__} {type(label).__name__}"

    spec = publish(
        service, inputs={"n": "int", "hp": "float", "label": "str"}, outputs={"kinds": "str"}
    )
    # n arrives typed, hp as ints for a float input, label as digits for a text input.
    key = write_chunk(blobs, pa.table({"n": [1, 2], "hp": [110, 120], "label": [7, 8]}))
    task = chunk_task(spec, key, count=2)
    assert counts_of(runtime.run_chunk(task, lambda *args: None)) == {"succeeded": 2, "failed": 0}
    rows = read_results(blobs.read_bytes(task.result_key), spec.outputs).to_pylist()
    assert [r["outputs"]["kinds"] for r in rows] == ["int float str"] * 2


def test_run_chunk_ignores_columns_that_are_not_inputs(runtime, publish, blobs):
    def service(x):
        return x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    key = write_chunk(blobs, pa.table({"x": [5], "other": ["ignored"]}))
    task = chunk_task(spec, key, count=1)
    assert counts_of(runtime.run_chunk(task, lambda *args: None)) == {"succeeded": 1, "failed": 0}


def test_run_chunk_stores_artifacts_under_the_batch_and_record(runtime, publish, blobs):
    def service(x):
        with open("plot.txt", "w") as f:
            f.write(f"plot {x}")
        return x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"}, artifacts=["plot.txt"])
    key = write_chunk(blobs, pa.table({"x": [1, 2]}))
    task = chunk_task(spec, key, start_index=4, count=2, attempt=3)
    runtime.run_chunk(task, lambda *args: None)
    # Under the chunk's try: a try that lost its claim cannot write over the owner's.
    assert blobs.read_bytes(artifact_key("b1", 4, "plot.txt", 3)) == b"plot 1"
    assert blobs.read_bytes(artifact_key("b1", 5, "plot.txt", 3)) == b"plot 2"
    assert not blobs.exists(artifact_key("b1", 4, "plot.txt", 2))
    rows = read_results(blobs.read_bytes(task.result_key), spec.outputs).to_pylist()
    assert [r["artifacts"] for r in rows] == [["plot.txt"], ["plot.txt"]]


def test_run_chunk_sets_the_batch_environment(runtime, publish, blobs, monkeypatch):
    monkeypatch.setenv("BATCHSERVE_TEST_SETTING", "outer")

    def service(x):
        return os.environ.get("BATCHSERVE_TEST_SETTING", "")

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "str"})
    key = write_chunk(blobs, pa.table({"x": [1]}))
    task = chunk_task(spec, key, count=1, environment={"BATCHSERVE_TEST_SETTING": "inner"})
    runtime.run_chunk(task, lambda *args: None)
    rows = read_results(blobs.read_bytes(task.result_key), spec.outputs).to_pylist()
    assert rows[0]["outputs"] == {"y": "inner"}


def test_a_batch_environment_does_not_leak_into_the_next_chunk(
    runtime, publish, blobs, monkeypatch
):
    monkeypatch.setenv("BATCHSERVE_TEST_SETTING", "")
    monkeypatch.delenv("BATCHSERVE_TEST_SETTING")

    def service(x):
        return os.environ.get("BATCHSERVE_TEST_SETTING", "unset")

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "str"})
    key = write_chunk(blobs, pa.table({"x": [1]}))
    first = chunk_task(
        spec,
        key,
        count=1,
        batch_id="b1",
        environment={"BATCHSERVE_TEST_SETTING": "from b1"},
        result_key="batches/b1/results/000000-1.arrow",
    )
    second = chunk_task(
        spec, key, count=1, batch_id="b2", result_key="batches/b2/results/000000-1.arrow"
    )
    runtime.run_chunk(first, lambda *args: None)
    runtime.run_chunk(second, lambda *args: None)
    rows = read_results(blobs.read_bytes(second.result_key), spec.outputs).to_pylist()
    assert rows[0]["outputs"] == {"y": "unset"}
    assert "BATCHSERVE_TEST_SETTING" not in os.environ


def test_an_int_output_too_large_for_the_results_fails_only_its_record(runtime, publish, blobs):
    def service(x):
        return 2**70 if x == 1 else x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    key = write_chunk(blobs, pa.table({"x": [0, 1, 2]}))
    task = chunk_task(spec, key, count=3)
    assert counts_of(runtime.run_chunk(task, lambda *args: None)) == {"succeeded": 2, "failed": 1}
    rows = read_results(blobs.read_bytes(task.result_key), spec.outputs).to_pylist()
    assert [r["status"] for r in rows] == ["succeeded", "failed", "succeeded"]
    assert "'y'" in rows[1]["error"]


# --- run_consume -----------------------------------------------------------------------------


def test_run_consume_returns_the_record_with_artifact_data(runtime, publish):
    def service(x):
        with open("plot.png", "wb") as f:
            f.write(b"\x89PNG" + bytes([x]))
        print("drawn")
        return x * 2

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"}, artifacts=["plot.png"])
    row = runtime.run_consume(ConsumeTask(task_id="c1", inputs={"x": 3}, service=spec))
    assert row["status"] == STATUS_SUCCEEDED
    assert row["index"] == 0
    assert row["outputs"] == {"y": 6}
    assert row["console_output"] == "drawn\n"
    assert row["attempts"] == 1
    assert row["artifacts"] == ["plot.png"]
    assert base64.b64decode(row["artifact_data"]["plot.png"]) == b"\x89PNG\x03"


def test_run_consume_does_not_store_artifacts_in_the_blob_store(runtime, publish, blobs):
    def service(x):
        with open("plot.png", "wb") as f:
            f.write(b"data")
        return x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"}, artifacts=["plot.png"])
    runtime.run_consume(ConsumeTask(task_id="c1", inputs={"x": 3}, service=spec))
    assert blobs.list("batches") == []


def test_run_consume_reports_a_failure_in_the_row(runtime, publish):
    def service(x):
        raise ValueError("bad")

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    row = runtime.run_consume(ConsumeTask(task_id="c1", inputs={"x": 3}, service=spec))
    assert row["status"] == STATUS_FAILED
    assert row["error"] == "bad"
    assert row["artifact_data"] == {}


# -- vectorized services: one call per chunk with a DataFrame ----------------------------------


def vectorized(spec):  # type: ignore[no-untyped-def]
    return dataclasses.replace(spec, mode="vectorized")


def run_chunk(runtime, blobs, spec, table, start_index=0):  # type: ignore[no-untyped-def]
    key = write_chunk(blobs, table)
    task = chunk_task(spec, key, start_index=start_index, count=table.num_rows)
    counts = runtime.run_chunk(task, lambda s, f: None)
    with blobs.open_read(task.result_key) as f:
        rows = read_results(f, spec.outputs).to_pylist()
    return counts, rows


def double(frame):  # type: ignore[no-untyped-def]
    return frame["x"] * 2


def calls_counted(frame):  # type: ignore[no-untyped-def]
    print(f"rows {len(frame)}")
    return pd.DataFrame({"y": frame["x"] + 1, "z": frame["x"].astype(str)})


def fails_on_seven(frame):  # type: ignore[no-untyped-def]
    if (frame["x"] == 7).any():
        raise ValueError("seven is not allowed")
    return np.asarray(frame["x"]) * 10


def test_a_vectorized_service_is_called_with_a_frame_of_the_chunk(runtime, blobs, publish):  # type: ignore[no-untyped-def]
    spec = vectorized(publish(calls_counted, inputs={"x": "int"}, outputs={"y": "int", "z": "str"}))
    counts, rows = run_chunk(runtime, blobs, spec, pa.table({"x": [1, 2, 3]}), start_index=10)
    assert counts_of(counts) == {"succeeded": 3, "failed": 0}
    assert [r["index"] for r in rows] == [10, 11, 12]
    assert [r["outputs"] for r in rows] == [
        {"y": 2, "z": "1"},
        {"y": 3, "z": "2"},
        {"y": 4, "z": "3"},
    ]
    assert rows[0]["console_output"] == "rows 3\n"  # one call for the whole chunk


def test_a_failing_call_is_split_until_only_the_bad_record_fails(runtime, blobs, publish):  # type: ignore[no-untyped-def]
    spec = vectorized(publish(fails_on_seven, inputs={"x": "int"}, outputs={"y": "int"}))
    counts, rows = run_chunk(runtime, blobs, spec, pa.table({"x": list(range(16))}))
    assert counts_of(counts) == {"succeeded": 15, "failed": 1}
    bad = rows[7]
    assert bad["status"] == "failed"
    assert bad["error"] == "seven is not allowed"
    assert bad["error_type"] == "ValueError"
    assert [r["outputs"]["y"] for i, r in enumerate(rows) if i != 7] == [
        i * 10 for i in range(16) if i != 7
    ]


def test_a_record_with_a_bad_input_fails_alone_and_is_left_out_of_the_frame(
    runtime, blobs, publish
):  # type: ignore[no-untyped-def]
    spec = vectorized(publish(double, inputs={"x": "float"}, outputs={"y": "float"}))
    counts, rows = run_chunk(runtime, blobs, spec, pa.table({"x": ["1.5", "abc", None, "4"]}))
    assert counts_of(counts) == {"succeeded": 2, "failed": 2}
    assert [r["status"] for r in rows] == ["succeeded", "failed", "failed", "succeeded"]
    assert rows[1]["error_type"] == "SchemaError" and "abc" in rows[1]["error"]
    assert rows[3]["outputs"] == {"y": 8.0}


def test_consume_runs_a_vectorized_service_on_a_one_row_frame(runtime, publish):  # type: ignore[no-untyped-def]
    spec = vectorized(publish(double, inputs={"x": "float"}, outputs={"y": "float"}))
    row = runtime.run_record(spec, {"x": 2.5}, index=0, artifact_sink=None)
    assert row["outputs"] == {"y": 5.0}


@pytest.mark.parametrize(
    "value",
    [
        pd.DataFrame({"a": [1, 2], "b": [3, 4]}),
        {"a": [1, 2], "b": [3, 4]},
        np.array([[1, 3], [2, 4]]),
    ],
)
def test_frames_dicts_and_2d_arrays_map_to_outputs(value):  # type: ignore[no-untyped-def]
    assert frame_outputs(value, ["a", "b"], 2) == {"a": [1, 2], "b": [3, 4]}


def test_a_series_or_list_is_the_first_output():  # type: ignore[no-untyped-def]
    assert frame_outputs(pd.Series([0.5, 1.5]), ["p"], 2) == {"p": [0.5, 1.5]}
    assert frame_outputs([True, False], ["ok"], 2) == {"ok": [True, False]}


def test_a_result_of_the_wrong_length_is_an_error_naming_the_counts():  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="3 values for 2 input rows"):
        frame_outputs([1, 2, 3], ["y"], 2)
    with pytest.raises(ValueError, match="expected the outputs"):
        frame_outputs(pd.DataFrame({"q": [1], "r": [2], "s": [3]}), ["a", "b"], 1)


# --- vectorized services: inputs and outputs as columns ----------------------------------------


def frame_described(frame):  # type: ignore[no-untyped-def]
    """What the service was called with, one text per row: the dtypes and the row's values."""
    dtypes = ",".join(f"{n}:{t}" for n, t in frame.dtypes.items())
    return pd.DataFrame(
        {"seen": [f"{dtypes} {row}" for row in frame.itertuples(index=False)]},
    )


def test_clean_columns_skip_the_per_value_check_and_give_the_same_results(
    runtime, publish, blobs, monkeypatch
):
    inputs = {"n": "int", "hp": "float", "label": "str", "ok": "bool"}
    spec = vectorized(publish(frame_described, inputs=inputs, outputs={"seen": "str"}))
    clean = pa.table(
        {
            "n": [1, 2, 3],
            "hp": [1.5, 2.0, -3.25],
            "label": ["a", "b", "c"],
            "ok": [True, False, True],
        }
    )
    # The same values in columns not of the declared types, checked value by value.
    unclean = pa.table(
        {
            "n": ["1", "2", "3"],
            "hp": ["1.5", "2", "-3.25"],
            "label": pa.array(["a", "b", "c"], pa.large_string()),
            "ok": ["true", "no", "yes"],
        }
    )
    checks = []
    checked_value = frames_module.coerce

    def counted(value, type_name, name, kind="input"):  # type: ignore[no-untyped-def]
        checks.append((name, kind))
        return checked_value(value, type_name, name, kind)

    monkeypatch.setattr(frames_module, "coerce", counted)
    clean_result, clean_rows = run_rows(runtime, blobs, spec, clean)
    assert checks == []
    unclean_result, unclean_rows = run_rows(runtime, blobs, spec, unclean)
    assert sorted(set(checks)) == [
        ("hp", "input"),
        ("label", "input"),
        ("n", "input"),
        ("ok", "input"),
    ]
    assert counts_of(clean_result) == counts_of(unclean_result) == {"succeeded": 3, "failed": 0}
    strip = [{k: v for k, v in r.items() if k != "duration_ms"} for r in clean_rows]
    assert strip == [{k: v for k, v in r.items() if k != "duration_ms"} for r in unclean_rows]
    assert clean_rows[0]["outputs"]["seen"] == (
        "n:int64,hp:float64,label:str,ok:bool Pandas(n=1, hp=1.5, label='a', ok=True)"
    )


def test_a_column_with_one_missing_value_fails_only_that_record(runtime, publish, blobs):
    def service(frame):
        assert frame["x"].dtype == np.int64
        return frame["x"] * 10

    spec = vectorized(publish(service, inputs={"x": "int"}, outputs={"y": "int"}))
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": pa.array([1, None, 3, 4])}))
    assert counts_of(result) == {"succeeded": 3, "failed": 1}
    assert [r["outputs"] and r["outputs"]["y"] for r in rows] == [10, None, 30, 40]
    assert rows[1]["error_type"] == "SchemaError"
    assert rows[1]["error"] == "input 'x' is missing (no value given; expected int)."


def test_a_record_failing_two_inputs_reports_the_first_declared(runtime, publish, blobs):
    spec = vectorized(publish(double, inputs={"x": "float", "b": "int"}, outputs={"y": "float"}))
    table = pa.table({"x": ["1", "one", "3"], "b": ["1", "two", "3"]})
    _, rows = run_rows(runtime, blobs, spec, table)
    assert [r["status"] for r in rows] == ["succeeded", "failed", "succeeded"]
    assert rows[1]["error"] == "input 'x' must be float, got str 'one'."


def test_a_chunk_whose_every_record_has_a_bad_input_makes_no_call(runtime, publish, blobs):
    def service(frame):
        raise AssertionError("called")

    spec = vectorized(publish(service, inputs={"x": "float"}, outputs={"y": "float"}))
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": ["a", None]}))
    assert counts_of(result) == {"succeeded": 0, "failed": 2}
    assert [r["error_type"] for r in rows] == ["SchemaError", "SchemaError"]
    assert [r["outputs"] for r in rows] == [None, None]


def test_an_integer_input_too_large_for_the_frame_fails_its_record(runtime, publish, blobs):
    spec = vectorized(publish(double, inputs={"x": "int"}, outputs={"y": "int"}))
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": ["4", str(2**70)]}))
    assert rows[0]["outputs"] == {"y": 8}
    assert rows[1]["error_type"] == "SchemaError"
    assert "outside the 64-bit integer range" in rows[1]["error"]


def test_a_service_without_inputs_gets_a_frame_of_the_chunks_rows(runtime, publish, blobs):
    def service(frame):
        return np.arange(len(frame))

    spec = vectorized(publish(service, inputs={}, outputs={"i": "int"}))
    _, rows = run_rows(runtime, blobs, spec, pa.table({"unused": [5, 6, 7]}))
    assert [r["outputs"] for r in rows] == [{"i": 0}, {"i": 1}, {"i": 2}]


def as_dataframe(frame):  # type: ignore[no-untyped-def]
    return pd.DataFrame({"ok": frame["x"] > 1, "y": frame["x"] * 0.5, "s": frame["x"].astype(str)})


def as_unnamed_dataframe(frame):  # type: ignore[no-untyped-def]
    return pd.DataFrame([[x * 0.5, str(x), x > 1] for x in frame["x"]])


def as_dict_of_lists(frame):  # type: ignore[no-untyped-def]
    xs = frame["x"].tolist()
    return {"s": [str(x) for x in xs], "y": [x / 2 for x in xs], "ok": [x > 1 for x in xs]}


def as_dict_of_arrays(frame):  # type: ignore[no-untyped-def]
    x = frame["x"].to_numpy()
    return {"y": x * 0.5, "s": x.astype(str), "ok": x > 1}


@pytest.mark.parametrize(
    "service", [as_dataframe, as_unnamed_dataframe, as_dict_of_lists, as_dict_of_arrays]
)
def test_frames_and_dicts_of_columns_map_to_outputs_in_a_chunk(runtime, publish, blobs, service):
    outputs = {"y": "float", "s": "str", "ok": "bool"}
    spec = vectorized(publish(service, inputs={"x": "int"}, outputs=outputs))
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1, 2, 3]}))
    assert counts_of(result) == {"succeeded": 3, "failed": 0}
    assert [r["outputs"] for r in rows] == [
        {"y": 0.5, "s": "1", "ok": False},
        {"y": 1.0, "s": "2", "ok": True},
        {"y": 1.5, "s": "3", "ok": True},
    ]


def as_series(frame):  # type: ignore[no-untyped-def]
    return frame["x"] * 2


def as_array(frame):  # type: ignore[no-untyped-def]
    return frame["x"].to_numpy() * 2


def as_2d_array(frame):  # type: ignore[no-untyped-def]
    return (frame["x"].to_numpy() * 2).reshape(-1, 1)


def as_list(frame):  # type: ignore[no-untyped-def]
    return [x * 2 for x in frame["x"]]


def as_series_of_another_index(frame):  # type: ignore[no-untyped-def]
    return pd.Series((frame["x"] * 2).to_numpy(), index=[f"r{i}" for i in range(len(frame))])


@pytest.mark.parametrize(
    "service", [as_series, as_array, as_2d_array, as_list, as_series_of_another_index]
)
def test_a_series_array_or_list_is_the_single_output_in_a_chunk(runtime, publish, blobs, service):
    spec = vectorized(publish(service, inputs={"x": "int"}, outputs={"y": "int"}))
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1, 2, 3]}))
    assert counts_of(result) == {"succeeded": 3, "failed": 0}
    assert [r["outputs"] for r in rows] == [{"y": 2}, {"y": 4}, {"y": 6}]


def test_an_output_of_the_wrong_length_fails_the_call_and_is_split(runtime, publish, blobs):
    def service(frame):  # drops the rows without a value: one row fewer than given
        return frame["x"].dropna() * 2

    spec = vectorized(publish(service, inputs={"x": "float"}, outputs={"y": "float"}))
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1.0, 2.0, float("nan"), 4.0]}))
    assert counts_of(result) == {"succeeded": 3, "failed": 1}
    assert [r["outputs"] and r["outputs"]["y"] for r in rows] == [2.0, 4.0, None, 8.0]
    assert rows[2]["error_type"] == "ValueError"
    assert rows[2]["error"] == "output 'y' has 0 values for 1 input rows; return one per row"


def test_an_output_that_is_no_column_fails_every_record_saying_so(runtime, publish, blobs):
    def service(frame):
        return {"y": 5}

    spec = vectorized(publish(service, inputs={"x": "int"}, outputs={"y": "int"}))
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1, 2]}))
    assert counts_of(result) == {"succeeded": 0, "failed": 2}
    assert {r["error"] for r in rows} == {
        "output 'y' is a single int, not a column; return one value per input row"
    }


def test_a_wrongly_typed_output_in_one_row_fails_only_that_record_in_one_call(
    runtime, publish, blobs
):
    def service(frame):
        print(f"rows {len(frame)}")
        return pd.DataFrame(
            {
                "y": [x * 1.5 if x != 1 else "many" for x in frame["x"]],
                "n": [x if x != 2 else 2.5 for x in frame["x"]],
            }
        )

    spec = vectorized(publish(service, inputs={"x": "int"}, outputs={"y": "float", "n": "int"}))
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [0, 1, 2, 3]}))
    assert counts_of(result) == {"succeeded": 2, "failed": 2}
    assert [r["outputs"] for r in rows] == [{"y": 0.0, "n": 0}, None, None, {"y": 4.5, "n": 3}]
    assert rows[1]["error_type"] == rows[2]["error_type"] == "SchemaError"
    assert rows[1]["error"] == "output 'y' must be float, got str 'many'."
    assert rows[2]["error"] == "output 'n' must be int, got float 2.5."
    assert [r["console_output"] for r in rows] == ["rows 4\n", "", "", ""]  # one call


def test_a_returned_list_keeps_its_values_types(runtime, publish, blobs):
    def service(frame):
        return [1, True, 3]  # as an array, True would be the int 1

    spec = vectorized(publish(service, inputs={"x": "int"}, outputs={"y": "int"}))
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1, 2, 3]}))
    assert [r["outputs"] for r in rows] == [{"y": 1}, None, {"y": 3}]
    assert rows[1]["error"] == "output 'y' must be int, got bool True."


def test_a_record_failing_two_outputs_reports_the_first_declared(runtime, publish, blobs):
    def service(frame):
        return {"a": ["x", None], "b": [1, None]}

    spec = vectorized(publish(service, inputs={"x": "int"}, outputs={"b": "int", "a": "str"}))
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1, 2]}))
    assert rows[0]["outputs"] == {"b": 1, "a": "x"}
    assert rows[1]["error"] == "output 'b' has no value (expected int); return one."


def reference_output(values, type_name):  # type: ignore[no-untyped-def]
    """What checking each value alone makes of a column: values and the errors by position."""
    from batchserve.schema import SchemaError, coerce

    checked, errors = [], {}
    for position, value in enumerate(values):
        try:
            checked.append(coerce(value, type_name, "y", kind="output"))
        except SchemaError as exc:
            checked.append(None)
            errors[position] = str(exc)
    return checked, errors


@pytest.mark.parametrize(
    ("column", "type_name"),
    [
        (np.array([1.5, float("nan"), float("inf")]), "float"),
        (np.array([1.5, 2.25], dtype=np.float32), "float"),
        (np.array([1, -2], dtype=np.int8), "float"),
        (np.array([True, False]), "float"),
        (np.array([1, 2**63 - 1]), "int"),
        (np.array([1, 2**64 - 1], dtype=np.uint64), "int"),
        (np.array([1.0, -4.0, 2.0**62]), "int"),
        (np.array([1.0, 2.5, float("nan"), float("inf"), 2.0**63]), "int"),
        (np.array([True, False]), "int"),
        (np.array([0, 1, 1]), "bool"),
        (np.array([0, 2]), "bool"),
        (np.array([1.0, 0.0]), "bool"),
        (np.array(["a", "b"]), "str"),
        (np.array(["a", 1, None, b"x"], dtype=object), "str"),
        (np.array([1, 2]), "str"),
        (pd.Series(["naïve", None]), "str"),
        (pd.Series(["a", "b"], dtype="string"), "str"),
        (pd.Series([1, None], dtype="Int64"), "int"),
        (pd.Series([0.5, None], dtype="Float64"), "float"),
        (pd.Series([True, False], dtype="boolean"), "bool"),
        (pd.Series([1.5, 2.0]), "float"),
        ([1, 2.0, True, "3"], "float"),
        ([1, 2.0, 2.5, None], "int"),
        (np.array(["lone \ud800 surrogate", "fine"], dtype=object), "str"),
    ],
)
def test_outputs_converted_as_columns_match_the_check_of_each_value(column, type_name):
    array, errors = frames_module.output_array(column, type_name, "y")
    values = column.tolist() if hasattr(column, "tolist") else list(column)
    expected_values, expected_errors = reference_output(values, type_name)
    assert array.type == ARROW_TYPES[type_name]
    assert {p: str(e) for p, e in errors.items()} == expected_errors
    assert [_nan_as_text(v) for v in array.to_pylist()] == [
        _nan_as_text(v) for v in expected_values
    ]


def _nan_as_text(value):  # type: ignore[no-untyped-def]
    return "nan" if isinstance(value, float) and value != value else value


def test_bad_inputs_and_a_failing_call_fail_their_own_records_in_index_order(
    runtime, publish, blobs
):
    spec = vectorized(publish(fails_on_seven, inputs={"x": "int"}, outputs={"y": "int"}))
    table = pa.table({"x": ["1", "x", "7", "3", None, "5", "6", "y"]})
    result, rows = run_rows(runtime, blobs, spec, table)
    assert counts_of(result) == {"succeeded": 4, "failed": 4}
    assert [r["index"] for r in rows] == list(range(8))
    assert [r["error_type"] for r in rows] == [
        None, "SchemaError", "ValueError", None, "SchemaError", None, None, "SchemaError"
    ]  # fmt: skip
    assert [r["outputs"] and r["outputs"]["y"] for r in rows] == [
        10, None, None, 30, None, 50, 60, None
    ]  # fmt: skip


def test_each_successful_call_gives_its_console_output_to_its_first_record(runtime, publish, blobs):
    def service(frame):
        print(f"rows {len(frame)}")
        if (frame["x"] == 7).any():
            raise ValueError("seven is not allowed")
        return frame["x"]

    spec = vectorized(publish(service, inputs={"x": "int"}, outputs={"y": "int"}))
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": list(range(16))}))
    consoles = {r["index"]: r["console_output"] for r in rows if r["console_output"]}
    # [0, 16), [0, 8) and [4, 8) fail; [0, 4), [4, 6), [6, 7) and [8, 16) succeed; 7 fails alone.
    assert consoles == {0: "rows 4\n", 4: "rows 2\n", 6: "rows 1\n", 7: "rows 1\n", 8: "rows 8\n"}


def test_the_records_of_one_call_share_its_duration(runtime, publish, blobs):
    spec = vectorized(publish(fails_on_seven, inputs={"x": "int"}, outputs={"y": "int"}))
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1, 2, 3, 4, 5, 6, 7, 8]}))
    durations = [r["duration_ms"] for r in rows]
    assert all(d > 0 for d in durations)
    # [0, 4) is one call, [4, 6) another; 7 fails alone with its own.
    assert len(set(durations[0:4])) == 1 and len(set(durations[4:6])) == 1
    assert rows[6]["status"] == STATUS_FAILED and rows[6]["duration_ms"] > 0


@pytest.mark.usefixtures("every_record_flushed_and_reported")
def test_a_split_chunk_reports_progress_after_each_call_with_its_rows_readable(
    runtime, publish, blobs
):
    spec = vectorized(publish(fails_on_seven, inputs={"x": "int"}, outputs={"y": "int"}))
    task = chunk_task(spec, write_chunk(blobs, pa.table({"x": list(range(16))})), count=16)
    seen = []

    def report(succeeded, failed):
        data = blobs.read_bytes(task.result_key)
        seen.append((succeeded, failed, read_results(data, spec.outputs).num_rows))

    runtime.run_chunk(task, report, progress_interval=0)
    # After [0, 4), [4, 6), [6, 7), 7 alone, and [8, 16).
    assert seen == [(4, 0, 4), (6, 0, 6), (7, 0, 7), (7, 1, 8), (15, 1, 16)]


def test_run_chunk_sets_the_batch_environment_for_a_vectorized_service(runtime, publish, blobs):
    def service(frame):
        return [os.environ.get("BATCHSERVE_TEST_GREETING", "unset")] * len(frame)

    spec = vectorized(publish(service, inputs={"x": "int"}, outputs={"g": "str"}))
    key = write_chunk(blobs, pa.table({"x": [1, 2]}))
    task = chunk_task(spec, key, count=2, environment={"BATCHSERVE_TEST_GREETING": "hello"})
    runtime.run_chunk(task, lambda s, f: None)
    rows = read_results(blobs.read_bytes(task.result_key), spec.outputs).to_pylist()
    assert [r["outputs"] for r in rows] == [{"g": "hello"}, {"g": "hello"}]
    assert "BATCHSERVE_TEST_GREETING" not in os.environ


def test_a_vectorized_chunk_of_a_service_that_cannot_load_fails_every_record(
    runtime, publish, blobs
):
    def init():
        raise RuntimeError("no model")

    spec = vectorized(publish(double, inputs={"x": "float"}, outputs={"y": "float"}, init=init))
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": ["1", "abc", "3"]}))
    assert counts_of(result) == {"succeeded": 0, "failed": 3}
    assert [r["error_type"] for r in rows] == ["BundleError", "SchemaError", "BundleError"]
    assert "no model" in rows[0]["error"]


def test_a_vectorized_call_failing_for_good_uses_every_retry(runtime, publish, blobs):
    def service(frame):
        if (frame["x"] == 2).any():
            raise ConnectionError("down")
        return frame["x"]

    spec = vectorized(publish(service, inputs={"x": "int"}, outputs={"y": "int"}))
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1, 2, 3]}), retries=2)
    assert [r["status"] for r in rows] == ["succeeded", "failed", "succeeded"]
    assert [r["attempts"] for r in rows] == [1, 3, 1]
    assert rows[1]["error"] == "down"
    assert result["retried"] == 2


# --- row mode: the chunk loop ----------------------------------------------------------------


def run_rows(runtime, blobs, spec, table, **task_options):  # type: ignore[no-untyped-def]
    """Run a chunk of ``table``; returns the chunk's result and its result rows."""
    key = write_chunk(blobs, table)
    task = chunk_task(spec, key, count=table.num_rows, **task_options)
    result = runtime.run_chunk(task, lambda s, f: None)
    rows = read_results(blobs.read_bytes(task.result_key), spec.outputs).to_pylist()
    return result, rows


def with_artifacts(spec):  # type: ignore[no-untyped-def]
    """The same service declaring an artifact it never writes: its records run one by one."""
    return dataclasses.replace(spec, artifacts=("never-written.txt",))


def test_each_record_of_a_chunk_keeps_what_it_printed(runtime, publish, blobs, capsys):
    def service(x):
        if x % 2:
            print(f"odd {x}")
            print("second line", end="")
        if x == 3:
            raise ValueError("three")
        return x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": [0, 1, 2, 3]}))
    assert [r["console_output"] for r in rows] == [
        "",
        "odd 1\nsecond line",
        "",
        "odd 3\nsecond line",
    ]
    assert rows[3]["status"] == STATUS_FAILED
    assert "odd" not in capsys.readouterr().out
    print("the test's own output")
    assert capsys.readouterr().out == "the test's own output\n"


def test_writing_bytes_to_stdout_fails_the_record_and_not_the_chunk(runtime, publish, blobs):
    def service(x):
        import sys

        if x == 1:
            sys.stdout.write(b"bytes")
        print("text")
        return x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    for path, options in [("loop", {}), ("one-by-one", {"artifacts": ("none.txt",)})]:
        _result, rows = run_rows(
            runtime,
            blobs,
            dataclasses.replace(spec, **options),
            pa.table({"x": [0, 1, 2]}),
            result_key=f"batches/b1/results/{path}",
        )
        assert [r["status"] for r in rows] == ["succeeded", "failed", "succeeded"], path
        assert rows[1]["error_type"] == "TypeError"
        assert [r["console_output"] for r in rows] == ["text\n", "", "text\n"]


def test_very_long_console_output_of_a_chunk_record_is_truncated(runtime, publish, blobs):
    def service(x):
        for _ in range(3):
            print("x" * MAX_CONSOLE_CHARS)
        return x

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1]}))
    text = rows[0]["console_output"]
    assert text.endswith("[console output truncated]\n")
    assert len(text) < MAX_CONSOLE_CHARS + 100


def test_a_wrongly_typed_output_fails_only_its_record_naming_the_output(runtime, publish, blobs):
    def service(x):
        return "many" if x == 1 else x * 1.5

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "float"})
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [0, 1, 2]}))
    assert counts_of(result) == {"succeeded": 2, "failed": 1}
    assert [r["outputs"] and r["outputs"]["y"] for r in rows] == [0.0, None, 3.0]
    assert rows[1]["error_type"] == "SchemaError"
    assert rows[1]["error"] == "output 'y' must be float, got str 'many'."


@pytest.mark.parametrize(
    ("output_type", "returned", "expected"),
    [
        ("float", 3, 3.0),
        ("float", np.float32(0.5), 0.5),
        ("float", float("inf"), float("inf")),
        ("int", 2.0, 2),
        ("int", np.int64(7), 7),
        ("bool", 1, True),
        ("str", "naïve", "naïve"),
    ],
)
def test_outputs_of_another_type_that_coerce_accepts_are_converted(
    runtime, publish, blobs, output_type, returned, expected
):
    def service(x):
        return returned

    spec = publish(service, inputs={"x": "int"}, outputs={"y": output_type})
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1]}))
    assert rows[0]["status"] == STATUS_SUCCEEDED
    assert rows[0]["outputs"] == {"y": expected}


@pytest.mark.parametrize(
    ("output_type", "returned"),
    [
        ("float", True),
        ("int", True),
        ("int", 2**63),
        ("int", 1.5),
        ("bool", 2),
        ("str", 5),
        ("str", "lone \ud800 surrogate"),
        ("float", None),
    ],
)
def test_outputs_that_coerce_refuses_fail_their_record(
    runtime, publish, blobs, output_type, returned
):
    def service(x):
        return returned

    spec = publish(service, inputs={"x": "int"}, outputs={"y": output_type})
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1]}))
    assert rows[0]["status"] == STATUS_FAILED
    assert rows[0]["error_type"] == "SchemaError"
    assert "'y'" in rows[0]["error"]


def test_a_function_is_called_with_inputs_matched_by_name_whatever_its_parameter_order(
    runtime, publish, blobs
):
    def service(wt, hp, scale=1.0):
        return {"ratio": hp / wt * scale, "label": f"{hp}/{wt}"}

    spec = publish(
        service, inputs={"hp": "float", "wt": "float"}, outputs={"label": "str", "ratio": "float"}
    )
    _, rows = run_rows(runtime, blobs, spec, pa.table({"hp": [120.0], "wt": [2.0]}))
    assert rows[0]["outputs"] == {"label": "120.0/2.0", "ratio": 60.0}


def test_functions_taking_keyword_arguments_get_their_inputs_by_name(runtime, publish, blobs):
    import functools

    def logged(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            return f"{args} {sorted(kwargs)}"

        return wrapper

    @logged
    def service(x, y):
        return x

    spec = publish(service, inputs={"x": "int", "y": "int"}, outputs={"seen": "str"})
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1], "y": [2]}))
    assert rows[0]["outputs"] == {"seen": "() ['x', 'y']"}

    def by_keywords(**inputs):
        return inputs["x"] - inputs["y"]

    spec = publish(by_keywords, inputs={"x": "int", "y": "int"}, outputs={"d": "int"})
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": [5], "y": [2]}))
    assert rows[0]["outputs"] == {"d": 3}


def test_code_runs_per_record_in_a_chunk(runtime, publish, blobs):
    spec = publish(
        "total = a + b\nprint(total)\nlabel = str(total)",
        inputs={"a": "int", "b": "int"},
        outputs={"total": "int", "label": "str"},
    )
    _, rows = run_rows(runtime, blobs, spec, pa.table({"a": [1, 2], "b": [10, 20]}))
    assert [r["outputs"] for r in rows] == [
        {"total": 11, "label": "11"},
        {"total": 22, "label": "22"},
    ]
    assert [r["console_output"] for r in rows] == ["11\n", "22\n"]


def test_a_service_without_inputs_or_outputs_runs_once_per_record(runtime, publish, blobs):
    def service():
        print("called")

    spec = publish(service, inputs={}, outputs={})
    result, rows = run_rows(runtime, blobs, spec, pa.table({"unused": [1, 2, 3]}))
    assert counts_of(result) == {"succeeded": 3, "failed": 0}
    assert [r["console_output"] for r in rows] == ["called\n"] * 3


def test_a_chunk_of_a_service_that_cannot_load_fails_every_record(runtime, publish, blobs):
    def init():
        raise RuntimeError("no model")

    def service(x):
        return x

    spec = publish(service, inputs={"x": "float"}, outputs={"y": "float"}, init=init)
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": ["1", "abc"]}))
    assert counts_of(result) == {"succeeded": 0, "failed": 2}
    assert [r["error_type"] for r in rows] == ["BundleError", "SchemaError"]
    assert "no model" in rows[0]["error"]


def mixed_service(a, b, tag):  # type: ignore[no-untyped-def]
    """Succeeds, prints, raises and returns wrong types depending on its inputs."""
    if tag == "print":
        print(f"a={a} b={b}")
    if tag == "raise":
        raise ArithmeticError(f"cannot do {a}")
    if tag == "wrong":
        return {"total": "not a number", "half": 0.0}
    if tag == "tuple":
        return a + b, a / 2
    return {"total": a + b, "half": a / 2, "extra": "ignored"}


MIXED_INPUTS = pa.table(
    {
        "a": [1, 2, 3, 4, 5, 6, None, 8],
        "b": ["10", "20", "x", "40", "50", "60", "70", "80"],
        "tag": ["ok", "print", "ok", "raise", "wrong", "tuple", "ok", "print"],
    }
)


def test_records_give_the_same_results_with_and_without_a_working_directory_each(
    runtime, publish, blobs
):
    spec = publish(
        mixed_service,
        inputs={"a": "int", "b": "float", "tag": "str"},
        outputs={"total": "float", "half": "float"},
    )
    fast_result, fast = run_rows(runtime, blobs, spec, MIXED_INPUTS)
    slow_result, slow = run_rows(
        runtime, blobs, with_artifacts(spec), MIXED_INPUTS, result_key="batches/b1/results/slow"
    )
    assert counts_of(fast_result) == counts_of(slow_result) == {"succeeded": 4, "failed": 4}
    for row in fast + slow:
        assert row["duration_ms"] is not None and row["duration_ms"] >= 0
        del row["duration_ms"]
    assert fast == slow
    assert [r["status"] for r in fast] == [
        "succeeded",
        "succeeded",
        "failed",
        "failed",
        "failed",
        "succeeded",
        "failed",
        "succeeded",
    ]


# --- retries -----------------------------------------------------------------------------------


@pytest.fixture
def flaky(tmp_path):
    """A service failing the first ``failures`` tries of each record, counting tries in files."""
    tries = tmp_path / "tries"
    tries.mkdir()

    def make(failures, *, print_tries=False):  # type: ignore[no-untyped-def]
        def service(x):
            marker = tries / str(x)
            n = int(marker.read_text()) + 1 if marker.exists() else 1
            marker.write_text(str(n))
            if print_tries:
                print(f"try {n}")
            if n <= failures:
                raise ConnectionError(f"try {n} of {x} failed")
            return x * 10

        return service

    make.tries = lambda x: int((tries / str(x)).read_text())  # type: ignore[attr-defined]
    return make


@pytest.mark.parametrize("path", ["loop", "one by one"])
def test_a_failing_record_is_tried_again_in_place_until_it_succeeds(
    runtime, publish, blobs, flaky, path
):
    spec = publish(flaky(2), inputs={"x": "int"}, outputs={"y": "int"})
    spec = with_artifacts(spec) if path == "one by one" else spec
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1, 2, 3]}), retries=3)
    assert counts_of(result) == {"succeeded": 3, "failed": 0}
    assert [r["outputs"]["y"] for r in rows] == [10, 20, 30]
    assert [r["attempts"] for r in rows] == [3, 3, 3]
    assert result["retried"] == 6
    assert [flaky.tries(x) for x in (1, 2, 3)] == [3, 3, 3]


@pytest.mark.parametrize("path", ["loop", "one by one"])
def test_a_record_fails_with_its_last_error_once_its_retries_are_spent(
    runtime, publish, blobs, flaky, path
):
    spec = publish(flaky(5), inputs={"x": "int"}, outputs={"y": "int"})
    spec = with_artifacts(spec) if path == "one by one" else spec
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1]}), retries=2)
    assert rows[0]["status"] == STATUS_FAILED
    assert rows[0]["error"] == "try 3 of 1 failed"
    assert rows[0]["error_type"] == "ConnectionError"
    assert rows[0]["attempts"] == 3
    assert result["retried"] == 2
    assert flaky.tries(1) == 3


def test_a_record_is_tried_only_once_without_retries(runtime, publish, blobs, flaky):
    spec = publish(flaky(1), inputs={"x": "int"}, outputs={"y": "int"})
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1]}), retries=0)
    assert rows[0]["status"] == STATUS_FAILED
    assert rows[0]["attempts"] == 1
    assert result["retried"] == 0
    assert flaky.tries(1) == 1


def test_unlimited_retries_try_a_record_until_it_succeeds(runtime, publish, blobs, flaky):
    spec = publish(flaky(12), inputs={"x": "int"}, outputs={"y": "int"})
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1, 2]}), retries=-1)
    assert [r["status"] for r in rows] == [STATUS_SUCCEEDED] * 2
    assert [r["attempts"] for r in rows] == [13, 13]
    assert result["retried"] == 24


def test_attempts_count_the_tries_of_earlier_runs_of_the_chunk(runtime, publish, blobs, flaky):
    spec = publish(flaky(1), inputs={"x": "int"}, outputs={"y": "int"})
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1]}), retries=1, attempt=2)
    assert rows[0]["attempts"] == 3


def test_the_console_output_of_a_retried_record_is_that_of_its_last_try(
    runtime, publish, blobs, flaky
):
    spec = publish(flaky(2, print_tries=True), inputs={"x": "int"}, outputs={"y": "int"})
    for key, options in [("loop", {}), ("one-by-one", {"artifacts": ("none.txt",)})]:
        _, rows = run_rows(
            runtime,
            blobs,
            dataclasses.replace(spec, **options),
            pa.table({"x": [len(key)]}),
            retries=2,
            result_key=f"batches/b1/results/{key}",
        )
        assert rows[0]["console_output"] == "try 3\n"


def test_schema_errors_are_not_tried_again(runtime, publish, blobs, tmp_path):
    calls = tmp_path / "calls"

    def service(x):
        with calls.open("a") as f:
            f.write(f"{x}\n")
        return "not an int"

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"})
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": ["1", "abc"]}), retries=-1)
    assert [r["error_type"] for r in rows] == ["SchemaError", "SchemaError"]
    assert [r["attempts"] for r in rows] == [1, 1]
    assert result["retried"] == 0
    assert calls.read_text() == "1\n"  # the bad input is never passed to the function


def test_artifacts_of_a_retried_record_are_those_of_its_last_try(runtime, publish, blobs, flaky):
    failing = flaky(1)

    def service(x):
        with open(f"try-{x}.txt" if os.path.exists("never") else "out.txt", "a") as f:
            f.write("written once per try\n")
        return failing(x)

    spec = publish(service, inputs={"x": "int"}, outputs={"y": "int"}, artifacts=["out.txt"])
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": [4]}), retries=1)
    assert rows[0]["attempts"] == 2
    assert blobs.read_bytes(artifact_key("b1", 0, "out.txt", 1)) == b"written once per try\n"


@pytest.mark.usefixtures("every_record_flushed_and_reported")
def test_a_record_being_retried_keeps_reporting_progress(runtime, publish, blobs, flaky):
    spec = publish(flaky(3), inputs={"x": "int"}, outputs={"y": "int"})
    key = write_chunk(blobs, pa.table({"x": [1, 2]}))
    reports = []
    runtime.run_chunk(
        chunk_task(spec, key, count=2, retries=3),
        lambda s, f: reports.append((s, f)),
        progress_interval=0,
    )
    # Three reports while record 1 is retried (nothing flushed yet), then one per record.
    assert reports[:3] == [(0, 0)] * 3
    assert (1, 0) in reports and reports[-1] == (2, 0)


# --- timeouts ----------------------------------------------------------------------------------


def sleepy(x):  # type: ignore[no-untyped-def]
    import time

    if x < 0:
        time.sleep(30)
    return x


def test_a_record_running_past_the_task_timeout_fails_and_the_next_one_runs(
    runtime, publish, blobs
):
    spec = publish(sleepy, inputs={"x": "float"}, outputs={"y": "float"})
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1.0, -1.0, 2.0]}), timeout=0.2)
    assert [r["status"] for r in rows] == ["succeeded", "failed", "succeeded"]
    assert rows[1]["error_type"] == "TaskTimeout"
    assert "task_timeout of 0.2 s" in rows[1]["error"]
    assert rows[1]["duration_ms"] < 30_000
    assert result["timed_out"] == 1


def test_a_timeout_is_not_caught_by_service_code_catching_exceptions(runtime, publish, blobs):
    def service(x):
        try:
            while True:  # busy, not sleeping: pure Python code is stopped too
                pass
        except Exception:
            return -1.0

    spec = publish(service, inputs={"x": "float"}, outputs={"y": "float"})
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1.0]}), timeout=0.2)
    assert rows[0]["error_type"] == "TaskTimeout"


@pytest.mark.parametrize("path", ["loop", "one by one"])
def test_a_record_that_timed_out_is_tried_again(runtime, publish, blobs, tmp_path, path):
    def service(x):
        marker = tmp_path / "slept"
        if not marker.exists():
            marker.write_text("once")
            sleepy(-1)
        return x

    spec = publish(service, inputs={"x": "float"}, outputs={"y": "float"})
    spec = with_artifacts(spec) if path == "one by one" else spec
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [5.0]}), timeout=0.2, retries=1)
    assert rows[0]["status"] == STATUS_SUCCEEDED
    assert rows[0]["attempts"] == 2
    assert (result["timed_out"], result["retried"]) == (1, 1)


def test_the_timer_is_cleared_and_the_alarm_handler_restored_after_a_chunk(runtime, publish, blobs):
    import signal

    def previous(signum, frame):  # type: ignore[no-untyped-def]
        pass

    signal.signal(signal.SIGALRM, previous)
    try:
        spec = publish(sleepy, inputs={"x": "float"}, outputs={"y": "float"})
        run_rows(runtime, blobs, spec, pa.table({"x": [-1.0, 1.0]}), timeout=0.2)
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        assert signal.getsignal(signal.SIGALRM) is previous
    finally:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_without_a_timeout_no_alarm_handler_is_installed(runtime, publish, blobs):
    import signal

    def service(x):
        import signal

        print(repr(signal.getsignal(signal.SIGALRM)))
        return x

    spec = publish(service, inputs={"x": "float"}, outputs={"y": "float"})
    _, rows = run_rows(runtime, blobs, spec, pa.table({"x": [1.0]}))
    assert rows[0]["console_output"] == repr(signal.getsignal(signal.SIGALRM)) + "\n"


def test_a_vectorized_call_past_the_timeout_is_split_until_the_slow_record_fails_alone(
    runtime, publish, blobs
):
    def service(frame):
        import time

        if (frame["x"] < 0).any():
            time.sleep(30)
        return frame["x"] * 2

    spec = vectorized(publish(service, inputs={"x": "float"}, outputs={"y": "float"}))
    table = pa.table({"x": [1.0, 2.0, -3.0, 4.0]})
    result, rows = run_rows(runtime, blobs, spec, table, timeout=0.2)
    assert [r["status"] for r in rows] == ["succeeded", "succeeded", "failed", "succeeded"]
    assert rows[2]["error_type"] == "TaskTimeout"
    assert [r["outputs"] and r["outputs"]["y"] for r in rows] == [2.0, 4.0, None, 8.0]
    assert result["timed_out"] == 3  # the whole chunk, its half with -3, and -3 alone


def test_a_vectorized_record_failing_alone_is_tried_again(runtime, publish, blobs, tmp_path):
    def service(frame):
        marker = tmp_path / "failed-once"
        if (frame["x"] == 7).any() and len(frame) == 1 and not marker.exists():
            marker.write_text("yes")
            raise ConnectionError("flaky")
        if (frame["x"] == 7).any() and len(frame) > 1:
            raise ValueError("seven fails in company")
        return frame["x"] * 10

    spec = vectorized(publish(service, inputs={"x": "int"}, outputs={"y": "int"}))
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": list(range(8))}), retries=1)
    assert counts_of(result) == {"succeeded": 8, "failed": 0}
    assert rows[7]["outputs"] == {"y": 70}
    assert [r["attempts"] for r in rows] == [1] * 7 + [2]
    assert result["retried"] == 1


# --- task statistics ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["row", "vectorized", "row with artifacts"])
def test_a_finished_chunk_reports_its_statistics(runtime, publish, blobs, mode):
    def service(x):
        return sum(i * i for i in range(20_000)) + x

    def frame_service(frame):
        return frame["x"].map(service)

    spec = publish(
        frame_service if mode == "vectorized" else service,
        inputs={"x": "int"},
        outputs={"y": "int"},
    )
    if mode == "vectorized":
        spec = vectorized(spec)
    elif mode == "row with artifacts":
        spec = with_artifacts(spec)
    key = write_chunk(blobs, pa.table({"x": list(range(100))}))
    task = chunk_task(spec, key, count=100)
    result = runtime.run_chunk(task, lambda s, f: None)
    assert set(result) == {
        "succeeded",
        "failed",
        "retried",
        "timed_out",
        "cpu_user",
        "cpu_system",
        "bytes_in",
        "bytes_out",
        "run_seconds",
        "records_seconds",
        "load_seconds",
    }
    assert counts_of(result) == {"succeeded": 100, "failed": 0}
    # The records' time is part of the task's time, and the first task loaded the service.
    assert 0 < result["records_seconds"] <= result["run_seconds"]
    assert result["load_seconds"] > 0
    assert result["retried"] == result["timed_out"] == 0
    assert result["cpu_user"] > 0
    assert result["cpu_system"] >= 0
    assert result["bytes_in"] == pa.table({"x": list(range(100))}).nbytes  # the range's data
    assert result["bytes_out"] == blobs.size(task.result_key)
    again = runtime.run_chunk(chunk_task(spec, key, count=100), lambda s, f: None)
    assert again["load_seconds"] == 0


def test_a_vectorized_record_is_tried_until_it_succeeds_with_unlimited_retries(
    runtime, publish, blobs
):
    def service(frame, tries=[0]):  # noqa: B006 - the loaded service's own try counter
        tries[0] += 1
        if tries[0] <= 1100:  # more tries than Python's recursion limit allows frames
            raise ConnectionError(f"try {tries[0]}")
        return frame["x"]

    spec = vectorized(publish(service, inputs={"x": "int"}, outputs={"y": "int"}))
    result, rows = run_rows(runtime, blobs, spec, pa.table({"x": [3]}), retries=-1)
    assert rows[0]["status"] == STATUS_SUCCEEDED
    assert rows[0]["attempts"] == 1101
    assert result["retried"] == 1100
