"""``batch update|add|close|cancel|pause|resume|terminate|delete``: changing a batch (most
changes conditional with ``--if-match ETAG``). ``main.py`` adds them to the ``batch`` commands."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from batchserve.cli.batches import (
    BatchId,
    failures_text,
    get_info,
    limits_text,
    parallel_text,
)
from batchserve.cli.connection import CliError, Connection, connected
from batchserve.cli.output import JsonOption, Output
from batchserve.cli.run import FormatOption, RecordsFile, records_from_file
from batchserve.cli.values import Pair, duration, mapping, pair, parallel_count, unique_keys
from batchserve.client import Batch, _ops
from batchserve.errors import PreconditionFailedError
from batchserve.states import BatchState

IfMatch = Annotated[
    str | None,
    typer.Option(
        "--if-match",
        metavar="ETAG",
        help="Act only if the batch's etag is still this one (batch show prints it).",
    ),
]


def batch_update(
    batch_id: BatchId,
    priority: Annotated[
        int | None,
        typer.Option("--priority", min=-1000, max=1000, help="-1000 to 1000; higher runs first."),
    ] = None,
    parallel: Annotated[
        int | None,
        typer.Option(
            "--parallel",
            "-P",
            parser=parallel_count,
            metavar="N",
            help="Chunks run at once, at most; -1 or unlimited: as many as the workers take.",
        ),
    ] = None,
    allow_preemption: Annotated[
        bool | None,
        typer.Option(
            "--allow-preemption/--no-allow-preemption",
            help="Whether batches of higher priority may requeue this batch's running chunks.",
            show_default=False,
        ),
    ] = None,
    display_name: Annotated[
        str | None,
        typer.Option("--display-name", metavar="TEXT", help='A new display name ("" removes it).'),
    ] = None,
    max_wall_clock_time: Annotated[
        float | None,
        typer.Option(
            "--max-wall-clock-time",
            parser=duration,
            metavar="DURATION",
            help="Fail the batch if it has not finished this long after it started: seconds, "
            "1h30m or PT1H30M.",
        ),
    ] = None,
    max_task_retry_count: Annotated[
        int | None,
        typer.Option(
            "--max-task-retry-count",
            min=-1,
            metavar="N",
            help="Tries of a failed record after its first (-1: no limit).",
        ),
    ] = None,
    max_failed_records: Annotated[
        int | None,
        typer.Option(
            "--max-failed-records",
            min=0,
            metavar="N",
            help="Fail the batch once more records than this have failed.",
        ),
    ] = None,
    metadata: Annotated[
        list[Pair] | None,
        typer.Option(
            "--metadata",
            "-m",
            parser=pair,
            callback=unique_keys,
            metavar="KEY=VALUE",
            help="Set this metadata pair (the others are kept); repeat it.",
        ),
    ] = None,
    unset_metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--unset-metadata", metavar="KEY", help="Remove this metadata key; repeat it."
        ),
    ] = None,
    if_match: IfMatch = None,
    json_mode: JsonOption = False,
) -> None:
    """Change a batch's settings while it is not finished."""
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "priority": priority,
            "parallel_count": parallel,
            "max_wall_clock_time": max_wall_clock_time,
            "max_task_retry_count": max_task_retry_count,
            "max_failed_records": max_failed_records,
            "allow_preemption": allow_preemption,
            "display_name": display_name,
        }.items()
        if v is not None
    }
    if not changes and not metadata and not unset_metadata:
        raise CliError(
            "Nothing to change: give at least one of --priority, --parallel, "
            "--allow-preemption (or --no-allow-preemption), --display-name, "
            "--max-wall-clock-time, --max-task-retry-count, --max-failed-records, --metadata or "
            "--unset-metadata.",
            exit_code=2,
        )
    with connected() as conn:
        info = get_info(conn, batch_id)
        if metadata or unset_metadata:
            # The server replaces the whole mapping: the pairs not named are sent as they are.
            kept = dict(info.get("metadata") or {})
            for key in unset_metadata or []:
                kept.pop(key, None)
            changes["metadata"] = {**kept, **(mapping(metadata) or {})}
        batch = _batch(conn, info)
        with _unless_changed(batch_id):
            batch.update(**changes, if_match=if_match)
    updated = batch.data
    assert updated is not None
    out = Output(json_mode)
    if out.json:
        out.emit(updated)
        return
    shown = {
        "priority": updated["priority"],
        "name": updated.get("display_name"),
        "parallel": parallel_text(updated),
        "preemption": "allowed" if updated.get("allow_preemption") else "not allowed",
        "limits": limits_text(updated),
        "failures": failures_text(updated),
        "metadata": updated.get("metadata") or None,
    }
    out.say(
        f"Updated batch {updated['id']} ({updated['state']}); its etag is now {updated['etag']}."
    )
    out.fields(shown)


def _batch(conn: Connection, info: dict[str, Any], **options: Any) -> Batch:
    """The SDK's batch for ``info`` (a batch as the server described it)."""
    service = conn.client.get_service(info["service"]["name"], info["service"]["version"])
    return Batch(service, None, parallel_count=info["parallel_count"], options=options, info=info)


def batch_add(
    batch_id: BatchId,
    records_file: RecordsFile,
    format: FormatOption = None,
    id_column: Annotated[
        str | None,
        typer.Option(
            "--id-column",
            metavar="COLUMN",
            help="The column whose values become each result's id (default: the batch's own "
            "--id-column, as the server keeps it).",
        ),
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """Add the records of a file to an open batch (run --open), while it waits or runs."""
    records, file_format = records_from_file(records_file, format)
    with connected() as conn:
        options = {"id_column": id_column} if id_column else {}
        batch = _batch(conn, get_info(conn, batch_id), **options)
        added = batch.add(records, format=file_format)
    out = Output(json_mode)
    if out.json:
        out.emit({"id": batch_id, "first_index": added.start, "count": len(added)})
    elif not added:
        out.say(f"The file held no records: nothing was added to batch {batch_id}.")
    else:
        out.say(
            f"Added {len(added)} records to batch {batch_id}: indexes {added.start} to "
            f"{added.stop - 1}."
        )


def batch_close(batch_id: BatchId, if_match: IfMatch = None, json_mode: JsonOption = False) -> None:
    """Close an open batch: it takes no more records, and completes once they are all done."""
    with connected() as conn, _unless_changed(batch_id):
        info = conn.run(_ops.close_batch(batch_id, if_match))
    out = Output(json_mode)
    if out.json:
        out.emit(info)
    else:
        out.say(
            f"Closed batch {batch_id} ({info['state']}): it takes no more records and completes "
            "once they are done."
        )


@contextlib.contextmanager
def _unless_changed(batch_id: str) -> Iterator[None]:
    """A change made ``--if-match``: a batch changed since is one line that says what to do."""
    try:
        yield
    except PreconditionFailedError as exc:
        raise CliError(
            f"{exc.message} `batchserve batch show {batch_id}` shows the batch as it is now."
        ) from None


def _control(info: dict[str, Any], json_mode: bool, verb: str, *expected: BatchState) -> None:
    """Print the batch a control command returned; ``expected`` are the states it aims at (the
    server leaves a batch that finished already as it is)."""
    out = Output(json_mode)
    if out.json:
        out.emit(info)
    elif info["state"] in expected:
        out.say(f"{verb} batch {info['id']}: now {info['state']}.")
    else:
        out.say(f"Batch {info['id']} is {info['state']}: nothing was {verb.lower()}.")


_STOPPED = (BatchState.CANCELLING, BatchState.CANCELLED)


def batch_cancel(
    batch_id: BatchId, if_match: IfMatch = None, json_mode: JsonOption = False
) -> None:
    """Cancel a batch; the records finished so far keep their results."""
    with connected() as conn, _unless_changed(batch_id):
        info = conn.run(_ops.cancel_batch(batch_id, if_match))
    _control(info, json_mode, "Cancelled", *_STOPPED)


def batch_pause(
    batch_id: BatchId,
    mode: Annotated[
        str,
        typer.Option(
            "--mode", help="Running chunks: requeue (run again later), terminate, or wait."
        ),
    ] = "requeue",
    if_match: IfMatch = None,
    json_mode: JsonOption = False,
) -> None:
    """Pause (disable) a batch: none of its chunks starts until it is resumed."""
    if mode not in ("requeue", "terminate", "wait"):
        raise CliError(f"--mode must be requeue, terminate or wait, not {mode!r}.")
    with connected() as conn, _unless_changed(batch_id):
        info = conn.run(_ops.disable_batch(batch_id, mode, if_match))
    _control(info, json_mode, "Paused", BatchState.PAUSING, BatchState.PAUSED)


def batch_resume(
    batch_id: BatchId, if_match: IfMatch = None, json_mode: JsonOption = False
) -> None:
    """Resume (enable) a paused batch."""
    with connected() as conn, _unless_changed(batch_id):
        info = conn.run(_ops.enable_batch(batch_id, if_match))
    _control(
        info, json_mode, "Resumed", BatchState.ENABLING, BatchState.PENDING, BatchState.RUNNING
    )


def batch_terminate(
    batch_id: BatchId,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Recorded as the termination reason.")
    ] = None,
    if_match: IfMatch = None,
    json_mode: JsonOption = False,
) -> None:
    """Stop a batch, recording a reason; finished records keep their results."""
    with connected() as conn, _unless_changed(batch_id):
        info = conn.run(_ops.terminate_batch(batch_id, reason, if_match))
    _control(info, json_mode, "Terminated", *_STOPPED)


def batch_delete(batch_id: BatchId, if_match: IfMatch = None) -> None:
    """Delete a batch and its results (stopping it first if it runs)."""
    with connected() as conn, _unless_changed(batch_id):
        conn.run(_ops.delete_batch(batch_id, if_match))
    Output().say(f"Deleted batch {batch_id}.")
