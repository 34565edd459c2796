"""The worker channel and the task wire format: data only, bounded, with descriptors beside."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

from batchserve.engine.inputs import PartRef
from batchserve.engine.tasks import (
    ChunkTask,
    ConsumeTask,
    LoadTask,
    ServiceSpec,
    chunk_result,
    task_from_wire,
    task_to_wire,
)
from batchserve.worker.channel import Channel, ChannelError
from batchserve.worker.grants import GrantedBlobs

SPEC = ServiceSpec("k", "services/k.bundle", "row", {"x": "float"}, {"y": "float"}, ("a.png",), "7")


@pytest.fixture
def pair():  # type: ignore[no-untyped-def]
    a, b = socket.socketpair()
    yield Channel(a), Channel(b)
    a.close()
    b.close()


def test_messages_cross_with_their_descriptors_and_payload(pair) -> None:  # type: ignore[no-untyped-def]
    left, right = pair
    with tempfile.TemporaryFile() as f:
        f.write(b"part bytes")
        f.flush()
        left.send({"type": "task", "n": 1}, fds=[f.fileno()], payload=b"xyz")
        message, fds, size = right.recv()
        assert message == {"type": "task", "n": 1}
        assert size == 3 and right.read_payload(size) == b"xyz"
        assert len(fds) == 1 and os.pread(fds[0], 100, 0) == b"part bytes"
        os.close(fds[0])


def test_a_frame_that_is_not_json_or_too_large_is_refused(pair) -> None:  # type: ignore[no-untyped-def]
    left, right = pair
    left.sock.sendall((4).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"\x80\x04K.")
    with pytest.raises(ChannelError, match="not JSON"):
        right.recv()
    left.sock.sendall((1 << 31).to_bytes(4, "big") + (0).to_bytes(4, "big"))
    with pytest.raises(ChannelError, match="over the limit"):
        right.recv()


def test_a_closed_channel_ends_between_frames_and_breaks_within_one(pair) -> None:  # type: ignore[no-untyped-def]
    left, right = pair
    left.sock.sendall((10).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"{}")
    left.sock.close()
    with pytest.raises(ChannelError, match="hung up"):
        right.recv()
    a, b = socket.socketpair()
    a.close()
    with pytest.raises(EOFError):
        Channel(b).recv()
    b.close()


@pytest.mark.parametrize(
    "task",
    [
        ChunkTask(
            "t",
            "b",
            3,
            100,
            50,
            1,
            (PartRef("p0", 0, 120), PartRef("p1", 120, 80)),
            "r",
            SPEC,
            {"A": "1"},
            2,
            1.5,
        ),
        ConsumeTask("t", {"x": 1.5}, SPEC),
        LoadTask("t", SPEC),
    ],
)
def test_tasks_survive_the_wire(task) -> None:  # type: ignore[no-untyped-def]
    import json

    assert task_from_wire(json.loads(json.dumps(task_to_wire(task)))) == task


def test_a_chunk_result_is_checked_as_data() -> None:
    assert chunk_result("nonsense", 10) == {"error": "the worker sent an unreadable result"}
    assert chunk_result({"error": "x" * 20_000}, 10)["error"] == "x" * 10_000
    checked = chunk_result(
        {"succeeded": 99, "failed": -3, "cpu_user": float("nan"), "run_seconds": "1", "evil": 1},
        10,
    )
    assert checked["succeeded"] == 10 and checked["failed"] == 0
    assert checked["cpu_user"] == 0.0 and checked["run_seconds"] == 0.0
    assert "evil" not in checked


def test_granted_files_are_all_a_worker_can_touch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    part = tmp_path / "part.arrow"
    table = pa.table({"x": [1.0, 2.0, 3.0]})
    with pa.ipc.new_file(str(part), table.schema) as w:
        w.write_table(table)
    out = tmp_path / "result"
    granted = GrantedBlobs(
        {"p": os.open(part, os.O_RDONLY)}, {"r": os.open(out, os.O_WRONLY | os.O_CREAT)}
    )
    with granted.open_input_file("p") as f:
        assert pa.ipc.open_file(f).read_all().equals(table)
    with granted.open_append_stream("r") as f:
        f.write(b"ok")
    assert out.read_bytes() == b"ok"
    with pytest.raises(KeyError):
        granted.read_bytes("batches/other/results/0.arrow")
    with pytest.raises(PermissionError):
        granted.write_bytes("users.db", b"")
    with pytest.raises(PermissionError):
        granted.list("")
    granted.close()


def test_a_consume_result_keeps_only_what_the_service_declared() -> None:
    from batchserve.engine.tasks import consume_result

    row = consume_result(
        {
            "status": "succeeded",
            "outputs": {"y": 2.0, "z": {"nested": 1}, "y2": 3},
            "artifacts": ["a.png", "../../etc/passwd"],
            "artifact_data": {"a.png": "aGk=", "b.png": 5},
            "console_output": 7,
            "attempts": "many",
        },
        {"y": "float"},
        ("a.png",),
    )
    assert row["outputs"] == {"y": 2.0}
    assert row["artifacts"] == ["a.png"] and row["artifact_data"] == {"a.png": "aGk="}
    assert row["console_output"] == "7" and row["attempts"] == 1
    failed = consume_result({"error": "the bundle is missing"}, {"y": "float"}, ())
    assert failed["status"] == "failed" and failed["error"] == "the bundle is missing"
