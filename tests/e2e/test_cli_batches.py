"""The ``batchserve`` command line's batches against a real server: ``run``, the live progress bar
on a pseudo-terminal and Ctrl-C's question, plain output in a pipe, and the ``batch`` commands."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from batchserve.cli.batches import PAGE_MOST

from .cli_helpers import COMMAND, Cli, Terminal
from .conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = pytest.mark.e2e

MODEL = textwrap.dedent(
    """
    import os
    import pathlib
    import time


    def predict(hp: float, wt: float) -> float:
        if hp < 0:
            raise ValueError("hp must not be negative")
        pathlib.Path("note.txt").write_text(f"hp={hp}")
        return hp * 2 + wt


    def slow(x: int) -> int:
        time.sleep(0.2)
        return x * 2


    def greet(x: int) -> str:
        return os.environ.get("GREETING", "unset") + str(x)
    """
)

FAST_RECORDS = 20
SLOW_RECORDS = 60


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-batches")
    (path / "model.py").write_text(MODEL)
    rows = "\n".join(f"{i * 10},{i / 10}" for i in range(FAST_RECORDS))
    (path / "cars.csv").write_text(f"hp,wt\n{rows}\n")
    (path / "xs.csv").write_text("x\n" + "\n".join(str(i) for i in range(SLOW_RECORDS)) + "\n")
    return path


@pytest.fixture(scope="module")
def admin(server: ServerProcess, workdir: Path) -> Cli:
    cli = Cli(workdir / "admin" / "config.json", workdir)
    cli("login", server.url, "--username", "admin", "--password", ADMIN_PASSWORD)
    return cli


@pytest.fixture(scope="module")
def predict(admin: Cli) -> str:
    admin(
        "publish", "model.py:predict", "--name", "clibatchpredict", "--version", "v1",
        "--output", "answer=float", "--artifact", "note.txt",
    )  # fmt: skip
    return "clibatchpredict:v1"


@pytest.fixture(scope="module")
def slow(admin: Cli) -> str:
    """A service that takes 0.2 s a record: its batches run long enough to be interrupted."""
    admin("publish", "model.py:slow", "--name", "clibatchslow", "--output", "y=int")
    return "clibatchslow"


@pytest.fixture(scope="module")
def greet(admin: Cli) -> str:
    admin("publish", "model.py:greet", "--name", "clibatchgreet", "--output", "text=str")
    return "clibatchgreet"


def start_slow(admin: Cli, slow: str) -> str:
    """A batch of the slow service, one chunk of two records at a time (about 6 s of work)."""
    return admin("run", slow, "xs.csv", "--parallel", "1", "--chunk-size", "2").stdout.strip()


def show(admin: Cli, batch_id: str) -> dict:  # type: ignore[type-arg]
    return json.loads(admin("batch", "show", batch_id, "--json").stdout)  # type: ignore[no-any-return]


# -- progress on a terminal, and Ctrl-C -----------------------------------------------------


def test_run_wait_draws_a_progress_bar_with_done_and_total_on_a_terminal(
    admin: Cli, predict: str, workdir: Path
) -> None:
    term = Terminal(
        ["run", predict, "cars.csv", "--wait", "--output", "bar-results.csv"], admin.env(), workdir
    )
    try:
        term.expect(rf"/{FAST_RECORDS} records")
        term.expect(rf"{FAST_RECORDS}/{FAST_RECORDS} records +[\d.,]+ records/s .*0 failed")
        term.expect(rf"completed: {FAST_RECORDS} succeeded, 0 failed, 0 cancelled")
        assert term.finish() == 0
    finally:
        term.close()
    assert "\x1b[" in term.raw  # drawn with terminal escapes
    lines = (workdir / "bar-results.csv").read_text().splitlines()
    assert len(lines) == FAST_RECORDS + 1


def test_batch_wait_follows_a_started_batch_with_the_same_bar(
    admin: Cli, predict: str, workdir: Path
) -> None:
    batch_id = admin("run", predict, "cars.csv").stdout.strip()
    term = Terminal(["batch", "wait", batch_id], admin.env(), workdir)
    try:
        term.expect(rf"{FAST_RECORDS}/{FAST_RECORDS} records")
        term.expect(f"Batch {batch_id} completed")
        assert term.finish() == 0
    finally:
        term.close()


def test_ctrl_c_asks_and_stop_watching_leaves_the_batch_running(
    admin: Cli, slow: str, workdir: Path
) -> None:
    batch_id = start_slow(admin, slow)
    term = Terminal(["batch", "wait", batch_id], admin.env(), workdir)
    try:
        term.expect(rf"\d+/{SLOW_RECORDS} records")
        term.interrupt()
        term.expect(rf"Cancel batch {batch_id} \(c\), stop watching .* keep watching \(w\)\?")
        term.send("w\n")  # keep watching: the bar comes back
        term.expect(rf"\d+/{SLOW_RECORDS} records")
        term.interrupt()
        term.expect(rf"Cancel batch {batch_id}")
        term.send("s\n")
        term.expect(f"Stopped watching batch {batch_id}")
        assert term.finish() == 130
    finally:
        term.close()
    assert show(admin, batch_id)["state"] in ("pending", "running", "completed")
    cancelled = admin("batch", "cancel", batch_id).stdout
    assert f"batch {batch_id}" in cancelled


def test_ctrl_c_asks_and_cancel_cancels_the_batch(admin: Cli, slow: str, workdir: Path) -> None:
    term = Terminal(
        ["run", slow, "xs.csv", "--parallel", "1", "--chunk-size", "2", "--wait"],
        admin.env(),
        workdir,
    )
    try:
        batch_id = term.expect(r"Batch (\w+) of clibatchslow").group(1)
        term.expect(rf"\d+/{SLOW_RECORDS} records")
        term.interrupt()
        term.expect(rf"Cancel batch {batch_id} \(c\)")
        term.send("c\n")
        term.expect(f"Cancelled batch {batch_id} \\(cancelled\\)")
        assert term.finish() == 130
    finally:
        term.close()
    info = show(admin, batch_id)
    assert info["state"] == "cancelled"
    assert info["completed_item_count"] < SLOW_RECORDS


def test_ctrl_c_without_a_terminal_to_ask_on_stops_watching(
    admin: Cli, slow: str, workdir: Path
) -> None:
    batch_id = start_slow(admin, slow)
    process = subprocess.Popen(
        [*COMMAND, "batch", "wait", batch_id],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=admin.env(),
        cwd=workdir,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # the first progress line: the watch has begun
        assert f"{batch_id} " in first and f"/{SLOW_RECORDS} records" in first
        process.send_signal(2)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert f"Stopped watching batch {batch_id}" in stdout
    assert "Traceback" not in stderr
    assert show(admin, batch_id)["state"] != "cancelled"
    admin("batch", "cancel", batch_id)


# -- plain output in a pipe -------------------------------------------------------------------


def test_run_in_a_pipe_prints_only_the_batch_id(admin: Cli, predict: str) -> None:
    out = admin("run", predict, "cars.csv").stdout
    assert len(out.splitlines()) == 1
    batch_id = out.strip()
    assert show(admin, batch_id)["total_item_count"] == FAST_RECORDS


def test_run_wait_in_a_pipe_prints_plain_progress_lines_and_a_summary(
    admin: Cli, predict: str, workdir: Path
) -> None:
    result = admin("run", predict, "cars.csv", "--wait", "-o", "pipe-results.jsonl")
    assert "\x1b" not in result.stdout + result.stderr
    summary = result.stdout.splitlines()
    assert summary[0].startswith("Batch ")
    assert (
        f"completed: {FAST_RECORDS} succeeded, 0 failed, 0 cancelled of {FAST_RECORDS}"
        in (summary[0])
    )
    assert summary[1] == "Results written to pipe-results.jsonl."
    progress = result.stderr.splitlines()
    assert progress[-1].endswith(f"completed: {FAST_RECORDS}/{FAST_RECORDS} records, 0 failed")
    rows = [json.loads(line) for line in (workdir / "pipe-results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(FAST_RECORDS))
    assert [r["answer"] for r in rows] == [i * 20 + i / 10 for i in range(FAST_RECORDS)]


def test_run_wait_json_prints_the_finished_batch_only(admin: Cli, predict: str) -> None:
    result = admin("run", predict, "cars.csv", "--wait", "--json", "--priority", "5")
    (line,) = result.stdout.splitlines()
    info = json.loads(line)
    assert info["state"] == "completed"
    assert info["succeeded_item_count"] == FAST_RECORDS
    assert info["priority"] == 5
    assert result.stderr == ""


def test_failed_records_are_counted_and_the_batch_still_completes(
    admin: Cli, predict: str, workdir: Path
) -> None:
    (workdir / "some-bad.csv").write_text("hp,wt\n1,1\n-1,1\n2,1\n-5,1\n")
    result = admin("run", predict, "some-bad.csv", "--wait")
    assert "completed: 2 succeeded, 2 failed, 0 cancelled of 4 records" in result.stdout
    assert result.stderr.splitlines()[-1].endswith("completed: 4/4 records, 2 failed")


def test_a_batch_cancelled_while_waited_for_ends_the_wait_with_an_error(
    admin: Cli, slow: str, workdir: Path
) -> None:
    batch_id = start_slow(admin, slow)
    process = subprocess.Popen(
        [*COMMAND, "batch", "wait", batch_id],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=admin.env(),
        cwd=workdir,
    )
    try:
        assert process.stderr is not None
        process.stderr.readline()  # watching
        admin("batch", "terminate", batch_id, "--reason", "enough")
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert stderr.splitlines()[-1] == f"error: Batch {batch_id} ended cancelled: enough"
    assert f"Batch {batch_id} cancelled:" in stdout


# -- batch list / show / results / artifacts / download ---------------------------------------


def test_batch_list_filters_by_status_and_service(admin: Cli, predict: str, slow: str) -> None:
    finished = json.loads(admin("run", predict, "cars.csv", "--wait", "--json").stdout)["id"]
    lines = admin(
        "batch", "list", "--service", predict, "--status", "completed"
    ).stdout.splitlines()
    assert lines[0].split("\t")[:4] == ["id", "service", "state", "done"]
    rows = [line.split("\t") for line in lines[1:]]
    assert finished in [r[0] for r in rows]
    assert {r[1] for r in rows} == {predict}
    assert {r[2] for r in rows} == {"completed"}
    assert next(r for r in rows if r[0] == finished)[3] == f"{FAST_RECORDS}/{FAST_RECORDS}"

    limited = admin("batch", "list", "--limit", "1", "--json").stdout.splitlines()
    assert len(limited) == 1
    assert "id" in json.loads(limited[0])
    none = admin("batch", "list", "--service", slow, "--status", "paused", "--json").stdout
    assert none == ""
    assert "Unknown status 'done'" in admin.error("batch", "list", "--status", "done")


def test_batch_show_prints_state_counts_and_options(admin: Cli, predict: str) -> None:
    info = json.loads(admin("run", predict, "cars.csv", "--wait", "--json", "-P", "3").stdout)
    fields = dict(
        line.split("\t", 1) for line in admin("batch", "show", info["id"]).stdout.splitlines()
    )
    assert fields["id"] == info["id"]
    assert fields["service"] == predict
    assert fields["state"] == "completed (was running)"
    assert fields["records"] == f"{FAST_RECORDS}/{FAST_RECORDS} finished"
    assert fields["parallel"] == "3"


def test_batch_results_in_every_format(admin: Cli, predict: str, workdir: Path) -> None:
    batch_id = json.loads(admin("run", predict, "cars.csv", "--wait", "--json").stdout)["id"]
    printed = admin("batch", "results", batch_id).stdout.splitlines()
    assert printed[0].split("\t")[:3] == ["index", "status", "answer"]
    assert printed[4].split("\t")[:3] == ["3", "succeeded", "60.3"]
    as_json = [
        json.loads(x) for x in admin("batch", "results", batch_id, "--json").stdout.splitlines()
    ]
    assert [r["answer"] for r in as_json][:3] == [0.0, 20.1, 40.2]

    for name in ("r.csv", "r.jsonl", "r.parquet"):
        message = admin("batch", "results", batch_id, "-o", name).stdout
        assert message.strip() == f"Wrote the results of {FAST_RECORDS} records to {name}."
    assert (workdir / "r.csv").read_text().splitlines()[0].startswith('"index","status","answer"')
    assert len((workdir / "r.jsonl").read_text().splitlines()) == FAST_RECORDS
    assert pq.read_table(workdir / "r.parquet").column("answer").to_pylist()[1] == 20.1
    assert "use a .csv, .jsonl or .parquet" in admin.error(
        "batch", "results", batch_id, "-o", "r.xlsx"
    )
    assert "does not exist" in admin.error("batch", "results", batch_id, "-o", "nowhere/r.csv")


def test_batch_artifacts_and_download(admin: Cli, predict: str, tmp_path: Path) -> None:
    batch_id = json.loads(admin("run", predict, "cars.csv", "--wait", "--json").stdout)["id"]
    assert admin("batch", "artifacts", batch_id, "3").stdout.splitlines() == ["note.txt"]
    assert json.loads(admin("batch", "artifacts", batch_id, "3", "--json").stdout) == ["note.txt"]
    target = tmp_path / "new" / "dir"
    saved = admin("batch", "download", batch_id, "3", "-d", str(target)).stdout.splitlines()
    assert saved == [str(target / "note.txt")]
    assert (target / "note.txt").read_text() == "hp=30.0"
    one = admin("batch", "download", batch_id, "4", "note.txt", "--dir", str(tmp_path)).stdout
    assert one.strip() == str(tmp_path / "note.txt")
    assert (tmp_path / "note.txt").read_text() == "hp=40.0"
    assert "there is no record 99" in admin.error("batch", "artifacts", batch_id, "99")
    assert "has no artifact 'other.png'" in admin.error(
        "batch", "download", batch_id, "3", "other.png", "-d", str(tmp_path)
    )
    assert not (tmp_path / "other.png").exists()


# -- control: pause, resume, terminate, cancel, delete ---------------------------------------


def test_pause_resume_terminate_and_delete(admin: Cli, slow: str) -> None:
    batch_id = start_slow(admin, slow)
    paused = admin("batch", "pause", batch_id).stdout.strip()
    assert paused in (
        f"Paused batch {batch_id}: now pausing.",
        f"Paused batch {batch_id}: now paused.",
    )
    deadline = time.monotonic() + 60
    while (state := show(admin, batch_id)["state"]) != "paused":
        assert state == "pausing"
        if time.monotonic() > deadline:
            pytest.fail(f"batch {batch_id} is still {state} after 60 s")
        time.sleep(0.2)
    assert "paused" in admin.error("batch", "pause", batch_id)  # not twice
    resumed = admin("batch", "resume", batch_id).stdout.strip()
    assert resumed in (
        f"Resumed batch {batch_id}: now enabling.",
        f"Resumed batch {batch_id}: now pending.",
        f"Resumed batch {batch_id}: now running.",
    )

    terminated = json.loads(
        admin("batch", "terminate", batch_id, "--reason", "NoLongerNeeded", "--json").stdout
    )
    assert terminated["state"] in ("cancelling", "cancelled")
    assert show(admin, batch_id)["termination_reason"] == "NoLongerNeeded"

    assert admin("batch", "delete", batch_id).stdout.strip() == f"Deleted batch {batch_id}."
    assert f"No batch '{batch_id}'" in admin.error("batch", "show", batch_id)


def test_pause_mode_must_be_known(admin: Cli) -> None:
    assert "--mode must be requeue, terminate or wait" in admin.error(
        "batch", "pause", "f00d", "--mode", "later"
    )


# -- records files ------------------------------------------------------------------------------


def test_run_reads_jsonl_json_and_parquet_records(admin: Cli, predict: str, workdir: Path) -> None:
    import pyarrow as pa

    records = [{"hp": 100.0, "wt": 1.5}, {"hp": 50.0, "wt": 0.5}]
    (workdir / "r.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (workdir / "r.json").write_text(json.dumps(records))
    pq.write_table(pa.Table.from_pylist(records), workdir / "in.parquet")
    for name in ("r.jsonl", "r.json", "in.parquet"):
        info = json.loads(admin("run", predict, name, "--wait", "--json").stdout)
        assert info["succeeded_item_count"] == 2, name
        answers = admin("batch", "results", info["id"], "--json").stdout.splitlines()
        assert [json.loads(a)["answer"] for a in answers] == [201.5, 100.5]


def test_records_file_errors_are_one_clear_line(admin: Cli, predict: str, workdir: Path) -> None:
    assert "There is no records file at 'missing.csv'" in admin.error("run", predict, "missing.csv")
    (workdir / "cars.xlsx").write_bytes(b"PK")
    assert "use a .csv, .tsv" in admin.error("run", predict, "cars.xlsx")
    (workdir / "wrong.csv").write_text("speed,wt\n1,2\n")
    assert "hp" in admin.error("run", predict, "wrong.csv")
    (workdir / "broken.jsonl").write_text("{not json\n")
    broken = admin.error("run", predict, "broken.jsonl")
    assert "Line 1 of the JSON Lines records is not valid JSON" in broken
    (workdir / "broken.json").write_text("[{not json")
    assert "Cannot read records from 'broken.json'" in admin.error("run", predict, "broken.json")
    assert "No service" in admin.error("run", "no-such-service", "cars.csv")


# -- every batch option -------------------------------------------------------------------------


def test_run_sends_every_batch_option_and_the_server_keeps_it(admin: Cli, predict: str) -> None:
    first = json.loads(admin("run", predict, "cars.csv", "--wait", "--json").stdout)["id"]
    info = json.loads(
        admin(
            "run", predict, "cars.csv", "--wait", "--json",
            "--parallel", "3", "--chunk-size", "5", "--priority", "7",
            "--display-name", "every option",
            "--metadata", "team=risk", "-m", "query=a=b",
            "--env", "GREETING=hi", "-e", "EMPTY=",
            "--max-task-retry-count", "2",
            "--max-wall-clock-time", "1h30m",
            "--task-timeout", "PT45S",
            "--task-failure-mode", "terminatejob",
            "--max-failed-records", "4",
            "--allow-preemption",
            "--depends-on", first,
            "--id-column", "wt",
        ).stdout
    )  # fmt: skip
    stored = show(admin, info["id"])
    assert stored["state"] == "completed"
    assert stored["parallel_count"] == 3
    assert stored["chunk_size"] == 5
    assert stored["chunk_count"] == FAST_RECORDS // 5
    assert stored["priority"] == 7
    assert stored["display_name"] == "every option"
    assert stored["metadata"] == {"team": "risk", "query": "a=b"}
    assert stored["environment"] == {"GREETING": "hi", "EMPTY": ""}
    assert stored["max_task_retry_count"] == 2
    assert stored["max_wall_clock_time"] == 5400
    assert stored["task_timeout"] == 45
    assert stored["task_failure_mode"] == "terminatejob"
    assert stored["max_failed_records"] == 4
    assert stored["allow_preemption"] is True
    assert stored["depends_on"] == [first]
    results = [
        json.loads(line)
        for line in admin("batch", "results", info["id"], "--json").stdout.splitlines()
    ]
    assert [r["id"] for r in results] == [str(i / 10) for i in range(FAST_RECORDS)]

    fields = dict(
        line.split("\t", 1) for line in admin("batch", "show", info["id"]).stdout.splitlines()
    )
    assert fields["limits"] == "wall clock 5400 s, record 45 s"
    assert fields["failures"] == "2 retries, at most 4 failed records, terminatejob"
    assert fields["environment"] == "GREETING, EMPTY"  # names only: values may be secrets
    assert fields["preemption"] == "allowed"
    assert fields["depends on"] == first


def test_run_leaves_unset_options_at_the_servers_defaults(admin: Cli, predict: str) -> None:
    stored = show(admin, admin("run", predict, "cars.csv").stdout.strip())
    assert stored["metadata"] == {} and stored["environment"] == {}
    assert stored["max_task_retry_count"] == 0
    assert stored["max_wall_clock_time"] is None and stored["task_timeout"] is None
    assert stored["task_failure_mode"] == "noaction"
    assert stored["allow_preemption"] is False and stored["depends_on"] == []


def test_run_parallel_unlimited_leaves_the_limit_to_the_workers(admin: Cli, predict: str) -> None:
    info = json.loads(admin("run", predict, "cars.csv", "-P", "unlimited", "--json").stdout)
    assert show(admin, info["id"])["parallel_count"] == -1
    assert "'0' is not a parallel count" in admin.usage_error("run", predict, "cars.csv", "-P", "0")


def test_env_is_set_for_the_service_code(admin: Cli, greet: str, workdir: Path) -> None:
    (workdir / "two.csv").write_text("x\n1\n2\n")
    batch_id = json.loads(
        admin("run", greet, "two.csv", "--env", "GREETING=hello", "--wait", "--json").stdout
    )["id"]
    results = admin("batch", "results", batch_id, "--json").stdout.splitlines()
    assert [json.loads(r)["text"] for r in results] == ["hello1", "hello2"]


def test_format_reads_a_file_whose_extension_does_not_say_it(
    admin: Cli, predict: str, workdir: Path
) -> None:
    (workdir / "cars.data").write_text((workdir / "cars.csv").read_text())
    assert "give its format with --format" in admin.error("run", predict, "cars.data")
    info = json.loads(
        admin("run", predict, "cars.data", "--format", "csv", "--wait", "--json").stdout
    )
    assert info["succeeded_item_count"] == FAST_RECORDS


def test_terminatejob_fails_the_batch_at_the_first_failed_record(
    admin: Cli, predict: str, workdir: Path
) -> None:
    (workdir / "one-bad.csv").write_text("hp,wt\n1,1\n-1,1\n2,1\n")
    result = admin(
        "run", predict, "one-bad.csv", "--task-failure-mode", "terminatejob", "--wait", expect=1
    )
    assert "ended failed" in result.stderr
    failed = show(admin, result.stdout.split()[1])
    assert failed["state"] == "failed"

    after = admin("run", predict, "cars.csv", "--depends-on", failed["id"], "--wait", expect=1)
    dependent = after.stdout.split()[1]
    fields = dict(
        line.split("\t", 1) for line in admin("batch", "show", dependent).stdout.splitlines()
    )
    assert show(admin, dependent)["scheduling_error"]["code"] == "DependencyFailed"
    assert failed["id"] in fields["cannot run"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metadata", "nokey"], "'nokey' is not KEY=VALUE; write it like team=risk"),
        (["--env", "=value"], "'=value' is not KEY=VALUE"),
        (["-m", "a=1", "-m", "a=2"], "'a' is given twice, as '1' and '2'"),
        (["--max-wall-clock-time", "1h30"], "'1h30' is not a duration: give seconds (90)"),
        (["--max-wall-clock-time", "0"], "'0': give a duration longer than 0 seconds"),
        (["--task-timeout", "soon"], "'soon' is not a duration"),
        (["--task-failure-mode", "sometimes"], "'sometimes' is not one of 'noaction'"),
        (["--max-task-retry-count", "-2"], "--max-task-retry-count"),
        (["--max-failed-records", "many"], "--max-failed-records"),
        (["--priority", "1001"], "--priority"),
        (["--format", "xlsx"], "'xlsx' is not one of csv, tsv, jsonl"),
    ],
)
def test_run_refuses_a_malformed_option_as_a_usage_error(
    admin: Cli, predict: str, args: list[str], message: str
) -> None:
    assert message in admin.usage_error("run", predict, "cars.csv", *args)


def test_an_open_batch_takes_more_records_until_it_is_closed(
    admin: Cli, predict: str, workdir: Path
) -> None:
    batch_id = admin("run", predict, "cars.csv", "--open").stdout.strip()
    assert show(admin, batch_id)["on_all_tasks_complete"] == "noaction"
    fields = dict(
        line.split("\t", 1) for line in admin("batch", "show", batch_id).stdout.splitlines()
    )
    assert fields["open"].startswith("yes")
    (workdir / "more.csv").write_text("hp,wt\n1000,1\n2000,2\n")
    added = admin("batch", "add", batch_id, "more.csv").stdout.strip()
    assert (
        added
        == f"Added 2 records to batch {batch_id}: indexes {FAST_RECORDS} to {FAST_RECORDS + 1}."
    )
    (workdir / "more.data").write_text("hp,wt\n3000,3\n")
    as_json = json.loads(
        admin("batch", "add", batch_id, "more.data", "--format", "csv", "--json").stdout
    )
    assert as_json == {"id": batch_id, "first_index": FAST_RECORDS + 2, "count": 1}
    closed = admin("batch", "close", batch_id).stdout.strip()
    assert closed.startswith(f"Closed batch {batch_id} (")
    done = json.loads(admin("batch", "wait", batch_id, "--json").stdout)
    assert done["state"] == "completed"
    assert done["succeeded_item_count"] == FAST_RECORDS + 3
    results = admin("batch", "results", batch_id, "--json").stdout.splitlines()
    assert [json.loads(r)["answer"] for r in results][FAST_RECORDS:] == [2001, 4002, 6003]
    assert batch_id in admin.error("batch", "add", batch_id, "more.csv")  # closed: no more
    assert "There is no records file" in admin.error("batch", "add", batch_id, "missing.csv")


def test_records_added_to_an_open_batch_keep_its_id_column(
    admin: Cli, predict: str, workdir: Path
) -> None:
    (workdir / "named.csv").write_text("car,hp,wt\nmazda,110,2.6\n")
    batch_id = admin("run", predict, "named.csv", "--open", "--id-column", "car").stdout.strip()
    (workdir / "more-named.csv").write_text("car,hp,wt\nfiat,66,2.2\nvolvo,109,2.78\n")
    admin("batch", "add", batch_id, "more-named.csv")  # the batch's own id column
    admin("batch", "close", batch_id)
    assert json.loads(admin("batch", "wait", batch_id, "--json").stdout)["state"] == "completed"
    results = admin("batch", "results", batch_id, "--json").stdout.splitlines()
    assert [json.loads(r)["id"] for r in results] == ["mazda", "fiat", "volvo"]


# -- batch update ---------------------------------------------------------------------------------


def paused_slow(admin: Cli, slow: str) -> str:
    """A slow batch paused: it stays unfinished, whatever the time its settings take to change."""
    batch_id = start_slow(admin, slow)
    admin("batch", "pause", batch_id)
    deadline = time.monotonic() + 60
    while (state := show(admin, batch_id)["state"]) != "paused":
        if time.monotonic() > deadline:
            pytest.fail(f"batch {batch_id} is still {state} after 60 s")
        time.sleep(0.2)
    return batch_id


def test_batch_update_changes_the_settings_of_an_unfinished_batch(admin: Cli, slow: str) -> None:
    batch_id = paused_slow(admin, slow)
    try:
        admin("batch", "update", batch_id, "-m", "team=risk", "-m", "stage=one")
        result = admin(
            "batch", "update", batch_id,
            "--priority", "9", "--parallel", "4", "--max-wall-clock-time", "2h",
            "--max-task-retry-count", "-1", "--max-failed-records", "5",
            "--metadata", "stage=two", "--unset-metadata", "team", "-m", "owner=ops",
        ).stdout  # fmt: skip
        stored = show(admin, batch_id)
        assert result.splitlines()[0] == (
            f"Updated batch {batch_id} ({stored['state']}); its etag is now {stored['etag']}."
        )
        assert stored["priority"] == 9
        assert stored["parallel_count"] == 4
        assert stored["max_wall_clock_time"] == 7200
        assert stored["max_task_retry_count"] == -1
        assert stored["max_failed_records"] == 5
        assert stored["metadata"] == {"stage": "two", "owner": "ops"}
        as_json = json.loads(admin("batch", "update", batch_id, "-P", "2", "--json").stdout)
        assert as_json["parallel_count"] == 2 and as_json["id"] == batch_id
    finally:
        admin("batch", "cancel", batch_id)


def test_batch_update_lifts_the_parallel_limit_renames_and_allows_preemption(
    admin: Cli, slow: str
) -> None:
    batch_id = paused_slow(admin, slow)
    try:
        admin(
            "batch", "update", batch_id,
            "-P", "unlimited", "--allow-preemption", "--display-name", "renamed",
        )  # fmt: skip
        stored = show(admin, batch_id)
        assert stored["parallel_count"] == -1
        assert stored["allow_preemption"] is True
        assert stored["display_name"] == "renamed"
        fields = dict(
            line.split("\t", 1) for line in admin("batch", "show", batch_id).stdout.splitlines()
        )
        assert fields["parallel"].startswith("no limit")
        admin(
            "batch", "update", batch_id,
            "-P", "3", "--no-allow-preemption", "--display-name", "",
        )  # fmt: skip
        stored = show(admin, batch_id)
        assert stored["parallel_count"] == 3
        assert stored["allow_preemption"] is False
        assert stored["display_name"] is None
        assert "'0' is not a parallel count" in admin.usage_error(
            "batch", "update", batch_id, "-P", "0"
        )
    finally:
        admin("batch", "cancel", batch_id)


def test_batch_update_with_if_match_changes_only_an_unchanged_batch(admin: Cli, slow: str) -> None:
    batch_id = paused_slow(admin, slow)
    try:
        etag = show(admin, batch_id)["etag"]
        admin("batch", "update", batch_id, "--priority", "3", "--if-match", etag)
        assert show(admin, batch_id)["priority"] == 3
        stale = admin.error("batch", "update", batch_id, "--priority", "4", "--if-match", etag)
        assert f"Batch {batch_id} changed since etag {etag} was read" in stale
        assert f"`batchserve batch show {batch_id}` shows the batch as it is now" in stale
        assert show(admin, batch_id)["priority"] == 3
        current = show(admin, batch_id)["etag"]
        admin("batch", "update", batch_id, "--priority", "4", "--if-match", current.strip('"'))
        assert show(admin, batch_id)["priority"] == 4
    finally:
        admin("batch", "cancel", batch_id)


def test_control_commands_with_if_match_act_only_on_an_unchanged_batch(
    admin: Cli, slow: str
) -> None:
    batch_id = paused_slow(admin, slow)
    try:
        stale = show(admin, batch_id)["etag"]
        admin("batch", "update", batch_id, "--priority", "2")
        for command in (["resume"], ["cancel"], ["terminate", "--reason", "x"], ["delete"]):
            message = admin.error("batch", *command, batch_id, "--if-match", stale)
            assert f"Batch {batch_id} changed since etag {stale} was read" in message, command
        assert show(admin, batch_id)["state"] == "paused"
        current = show(admin, batch_id)["etag"]
        resumed = admin("batch", "resume", batch_id, "--if-match", current).stdout
        assert resumed.startswith(f"Resumed batch {batch_id}: now ")
    finally:
        admin("batch", "cancel", batch_id)


def test_batch_update_errors_are_clear(admin: Cli, predict: str) -> None:
    finished = json.loads(admin("run", predict, "cars.csv", "--wait", "--json").stdout)["id"]
    assert f"Batch {finished} is completed" in admin.error(
        "batch", "update", finished, "--priority", "2"
    )
    assert "No batch 'f00d'" in admin.error("batch", "update", "f00d", "--priority", "2")
    assert "Nothing to change: give at least one of --priority" in admin.usage_error(
        "batch", "update", finished
    )
    assert "'soon' is not a duration" in admin.usage_error(
        "batch", "update", finished, "--max-wall-clock-time", "soon"
    )
    assert "'x' is not KEY=VALUE" in admin.usage_error("batch", "update", finished, "-m", "x")


# -- batch list: metadata and long listings --------------------------------------------------------


def test_batch_list_filters_by_metadata(admin: Cli, predict: str, unique_name: str) -> None:
    both = admin("run", predict, "cars.csv", "-m", f"run={unique_name}", "-m", "kind=a").stdout
    other = admin("run", predict, "cars.csv", "-m", f"run={unique_name}", "-m", "kind=b").stdout
    elsewhere = admin("run", predict, "cars.csv", "-m", "kind=a").stdout

    def listed(*pairs: str) -> list[str]:
        args = [a for p in pairs for a in ("--metadata", p)]
        lines = admin("batch", "list", *args, "--json").stdout.splitlines()
        return [json.loads(line)["id"] for line in lines]

    assert listed(f"run={unique_name}") == [other.strip(), both.strip()]  # newest first
    assert listed(f"run={unique_name}", "kind=a") == [both.strip()]
    assert elsewhere.strip() in listed("kind=a")
    assert listed(f"run={unique_name}", "kind=c") == []
    assert "cannot hold ':'" in admin.usage_error("batch", "list", "--metadata", "a:b=c")
    assert "is not KEY=VALUE" in admin.usage_error("batch", "list", "--metadata", "kind")


def test_batch_list_limit_past_the_servers_page_size_lists_every_batch(
    admin: Cli, predict: str
) -> None:
    admin("run", predict, "cars.csv")
    everything = admin("batch", "list", "--limit", "5000", "--json").stdout.splitlines()
    newest = admin("batch", "list", "--limit", "1000", "--json").stdout.splitlines()
    assert everything == newest  # fewer than 1000 batches here: one page holds them all
    assert len(everything) >= 2
    assert len(admin("batch", "list", "-n", "2").stdout.splitlines()) == 3  # header and two
    assert "--limit" in admin.usage_error("batch", "list", "--limit", "0")


def test_batch_list_reads_page_after_page_past_the_servers_page_size(
    tmp_path: Path, workdir: Path
) -> None:
    # A server of its own: the shared one should not carry a thousand extra batches.
    proc = ServerProcess(tmp_path / "home").start()
    try:
        cli = Cli(tmp_path / "config.json", workdir)
        cli("login", proc.url, "--username", "admin", "--password", ADMIN_PASSWORD)
        cli("publish", "model.py:slow", "--name", "pages", "--version", "v1", "--output", "y=int")
        token = json.loads((tmp_path / "config.json").read_text())["servers"][proc.url][
            "access_token"
        ]
        made = set()
        with httpx.Client(
            base_url=proc.url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"},
            timeout=60,
        ) as http:
            for i in range(PAGE_MOST + 5):  # uploaded, not started: nothing runs
                created = http.post(
                    "/v1/services/pages/v1/batches",
                    params={"start": "false"},
                    content=f'{{"x": {i}}}\n',
                )
                assert created.status_code == 201, created.text
                made.add(created.json()["id"])
        everything = [
            json.loads(line)["id"]
            for line in cli("batch", "list", "--limit", "5000", "--json").stdout.splitlines()
        ]
        assert len(everything) == len(set(everything)) == PAGE_MOST + 5  # each once
        assert set(everything) == made
        some = cli("batch", "list", "--limit", str(PAGE_MOST + 2), "--json").stdout.splitlines()
        assert [json.loads(line)["id"] for line in some] == everything[: PAGE_MOST + 2]
    finally:
        proc.stop()


def test_run_takes_a_preparation_and_a_release_script(
    admin: Cli, predict: str, workdir: Path
) -> None:
    (workdir / "prep.py").write_text(
        "import os\nopen(os.path.join(os.environ['BATCHSERVE_JOB_DIR'], 'ready'), 'w').close()\n"
    )
    (workdir / "broken.py").write_text("raise RuntimeError('no reference data')\n")
    done = json.loads(
        admin(
            "run",
            predict,
            "cars.csv",
            "--preparation",
            "prep.py",
            "--release",
            "prep.py",
            "--wait",
            "--json",
        ).stdout.splitlines()[-1]
    )
    assert done["state"] == "completed" and done["failed_item_count"] == 0
    assert done["job_preparation_task"]["name"] == "preparation"
    assert done["job_release_task"]["name"] == "release"
    failed = json.loads(
        admin(
            "run", predict, "cars.csv", "--preparation", "broken.py", "--wait", "--json"
        ).stdout.splitlines()[-1]
    )
    assert failed["failed_item_count"] == FAST_RECORDS
    (workdir / "typo.py").write_text("def (:\n")
    assert "is not a Python script" in admin.error(
        "run", predict, "cars.csv", "--preparation", "typo.py"
    )
    assert "There is no script" in admin.error("run", predict, "cars.csv", "--release", "nope.py")
