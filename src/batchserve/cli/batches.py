"""``batch list|show|wait|results|artifacts|download``: finding, following and reading the batches
``run`` starts (``control.py`` changes them)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any

import typer

from batchserve.cli.connection import CliError, Connection, connected
from batchserve.cli.output import JsonOption, Output, when
from batchserve.cli.services import split_service
from batchserve.cli.values import Pair, filter_pair, mapping, unique_keys
from batchserve.cli.watch import Interrupted, watch
from batchserve.client import BatchResponse, _ops
from batchserve.states import BatchState

batch_app = typer.Typer(
    name="batch",
    no_args_is_help=True,
    help="Follow, control and read the results of batches.",
    add_completion=False,
)

#: The exit status of a command whose watch Ctrl-C ended (128 + SIGINT, as shells report it).
INTERRUPTED_EXIT = 130
#: Results shown as a table on a terminal; a pipe gets them all.
TERMINAL_ROWS = 100

BatchId = Annotated[str, typer.Argument(metavar="ID", help="The batch's execution id.")]
ResultsFile = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write the results to this .csv, .jsonl or .parquet file."),
]


def check_results_path(path: Path) -> None:
    if path.suffix.lower() not in (".csv", ".jsonl", ".parquet"):
        raise CliError(
            f"Cannot write results to '{path.name}': use a .csv, .jsonl or .parquet file."
        )
    if not path.parent.is_dir():
        raise CliError(f"The folder '{path.parent}' does not exist; create it first.")


def follow(conn: Connection, batch_id: str, out: Output, output: Path | None) -> int:
    """Watch the batch to its end, write its results, print the summary; the exit status."""
    try:
        info = watch(conn, batch_id, out)
    except Interrupted as stop:
        info = stop.info
        done, total = info["completed_item_count"], info["total_item_count"]
        if out.json:
            out.emit(info)
        elif stop.cancelled:
            out.say(
                f"Cancelled batch {batch_id} ({info['state']}): {done} of {total} records "
                "finished; their results are kept."
            )
        else:
            out.say(
                f"Stopped watching batch {batch_id} ({info['state']}, {done} of {total} records "
                f"finished); it goes on running. Follow it again with `batchserve batch wait "
                f"{batch_id}`."
            )
        return INTERRUPTED_EXIT
    if output is not None:
        BatchResponse(info, conn.client._runner).export(output)
    if out.json:
        out.emit(info)
    else:
        out.say(_summary(info), style="bold" if info["state"] == "completed" else "red")
        if output is not None:
            out.say(f"Results written to {output}.")
    if info["state"] != BatchState.COMPLETED:
        reason = info.get("error") or info.get("termination_reason") or info["state"]
        raise CliError(f"Batch {batch_id} ended {info['state']}: {reason}")
    return 0


def _summary(info: dict[str, Any]) -> str:
    stats = info.get("statistics") or {}
    timing = ""
    if stats.get("wall_clock_seconds"):
        timing = f" in {stats['wall_clock_seconds']:.1f} s"
        if stats.get("records_per_second"):
            timing += f" ({stats['records_per_second']:,.1f} records/s)"
    return (
        f"Batch {info['id']} {info['state']}: {info['succeeded_item_count']} succeeded, "
        f"{info['failed_item_count']} failed, {info['cancelled_item_count']} cancelled of "
        f"{info['total_item_count']} records{timing}."
    )


#: The most batches the server gives in one page of a listing (``limit`` of ``GET /v1/batches``);
#: a longer ``--limit`` is read a page at a time.
PAGE_MOST = 1000


@batch_app.command("list")
def batch_list(
    status: Annotated[
        list[str] | None,
        typer.Option("--status", "-s", help="Only batches in this state; repeat for several."),
    ] = None,
    service: Annotated[
        str | None, typer.Option("--service", metavar="NAME[:VERSION]", help="Only this service.")
    ] = None,
    metadata: Annotated[
        list[Pair] | None,
        typer.Option(
            "--metadata",
            "-m",
            parser=filter_pair,
            callback=unique_keys,
            metavar="KEY=VALUE",
            help="Only batches whose metadata has this pair; repeat it to require several.",
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            "-n",
            min=1,
            help=f"Show at most this many batches, the newest (more than {PAGE_MOST} are read "
            "a page at a time).",
        ),
    ] = 50,
    json_mode: JsonOption = False,
) -> None:
    """List batches, newest first."""
    states = [s.value for s in BatchState.__members__.values()]
    for s in status or []:
        if s not in states:
            raise CliError(f"Unknown status {s!r}: use one of {', '.join(dict.fromkeys(states))}.")
    name, version = split_service(service) if service is not None else (None, None)
    with connected() as conn:
        listing = conn.client.list_batches(
            state=status or None,
            service=name,
            version=version,
            metadata=mapping(metadata),
            page_size=min(limit, PAGE_MOST),
        )
        batches = [b.data for b in itertools.islice(listing, limit) if b.data is not None]
    out = Output(json_mode)
    if out.json:
        out.emit_lines(batches)
        return
    out.table(
        ["id", "service", "state", "done", "failed", "priority", "created", "by", "name"],
        [
            [
                b["id"],
                f"{b['service']['name']}:{b['service']['version']}",
                b["state"],
                f"{b['completed_item_count']}/{b['total_item_count']}",
                b["failed_item_count"],
                b["priority"],
                when(b["creation_time"]),
                b.get("created_by"),
                b.get("display_name"),
            ]
            for b in batches
        ],
        empty="no batches",
    )


def get_info(conn: Connection, batch_id: str) -> dict[str, Any]:
    return conn.run(_ops.get_batch(batch_id))


@batch_app.command("show")
def batch_show(batch_id: BatchId, json_mode: JsonOption = False) -> None:
    """Show a batch: state, counts, options and statistics."""
    with connected() as conn:
        info = get_info(conn, batch_id)
    out = Output(json_mode)
    if out.json:
        out.emit(info)
        return
    stats = info.get("statistics") or {}
    previous = f" (was {info['previous_state']})" if info.get("previous_state") else ""
    out.fields(
        {
            "id": info["id"],
            "service": f"{info['service']['name']}:{info['service']['version']}",
            "name": info.get("display_name"),
            "state": f"{info['state']}{previous}",
            "records": f"{info['completed_item_count']}/{info['total_item_count']} finished",
            "succeeded": info["succeeded_item_count"],
            "failed": info["failed_item_count"],
            "cancelled": info["cancelled_item_count"],
            "priority": info["priority"],
            "parallel": parallel_text(info),
            "chunks": f"{info['chunk_count']}"
            + (
                f" of up to {info['chunk_size']} records"
                if info.get("chunk_size")
                else " (sized to measure)"
            ),
            "created": f"{when(info['creation_time'])} by {info.get('created_by') or '?'}",
            "started": when(info.get("start_time")),
            "ended": when(info.get("end_time")),
            "records/s": stats.get("records_per_second"),
            "time": _stage_times(stats),
            "termination": info.get("termination_reason"),
            "error": info.get("error"),
            "cannot run": (info.get("scheduling_error") or {}).get("message"),
            "metadata": info.get("metadata") or None,
            # Only the names: environment values are often credentials.
            "environment": ", ".join(info.get("environment") or {}) or None,
            "limits": limits_text(info),
            "failures": failures_text(info),
            "open": "yes: batch add adds records, batch close ends it"
            if info.get("on_all_tasks_complete") == "noaction"
            else None,
            "preemption": "allowed" if info.get("allow_preemption") else None,
            "depends on": info.get("depends_on") or None,
            "etag": info.get("etag"),
        }
    )


def parallel_text(info: dict[str, Any]) -> str:
    count = info["parallel_count"]
    return "no limit (as many chunks as the workers take)" if count == -1 else str(count)


def limits_text(info: dict[str, Any]) -> str | None:
    """``wall clock 3600 s, record 30 s``: the time limits a batch was given."""
    shown = [
        f"{name} {info[key]:g} s"
        for name, key in (("wall clock", "max_wall_clock_time"), ("record", "task_timeout"))
        if info.get(key)
    ]
    return ", ".join(shown) or None


def failures_text(info: dict[str, Any]) -> str:
    """``2 retries, at most 5 failed records, terminatejob``: what failed records do."""
    retries = info.get("max_task_retry_count") or 0
    shown = ["unlimited retries" if retries == -1 else f"{retries} retries"]
    if info.get("max_failed_records") is not None:
        shown.append(f"at most {info['max_failed_records']} failed records")
    shown.append(info.get("task_failure_mode") or "noaction")
    return ", ".join(shown)


def _stage_times(stats: dict[str, Any]) -> str | None:
    """Where a batch's time went: ``ingest 0.12 s, queue 0.01 s, run 0.80 s (workers)``."""
    stages = [
        ("ingest", stats.get("ingest_seconds")),
        ("queue", stats.get("queue_seconds")),
        ("run", stats.get("run_seconds") or None),
        ("export", stats.get("export_seconds")),
    ]
    shown = [
        f"{name} {value:.2f} s" + (" (workers)" if name == "run" else "")
        for name, value in stages
        if value is not None
    ]
    return ", ".join(shown) or None


@batch_app.command("wait")
def batch_wait(
    batch_id: BatchId, output: ResultsFile = None, json_mode: JsonOption = False
) -> None:
    """Follow a batch until it is finished (a progress bar on a terminal)."""
    if output is not None:
        check_results_path(output)
    out = Output(json_mode)
    with connected() as conn:
        get_info(conn, batch_id)  # an unknown id fails here, before any progress is drawn
        code = follow(conn, batch_id, out, output)
    raise typer.Exit(code)


@batch_app.command("results")
def batch_results(
    batch_id: BatchId,
    output: ResultsFile = None,
    json_mode: JsonOption = False,
) -> None:
    """The finished records' results: into a file with -o (format by extension), else printed."""
    if output is not None:
        check_results_path(output)
    out = Output(json_mode)
    with connected() as conn:
        response = BatchResponse(get_info(conn, batch_id), conn.client._runner)
        if output is not None:
            response.export(output)
            if not out.json:
                out.say(
                    f"Wrote the results of {response.completed_item_count} records to {output}."
                )
            else:
                out.emit({"id": batch_id, "path": str(output)})
            return
        frame = response.to_pandas()
    if out.json:
        text = frame.to_json(orient="records", lines=True)
        if text.strip():
            typer.echo(text.rstrip("\n"))
        return
    shown = frame.head(TERMINAL_ROWS) if out.rich else frame
    out.table(
        [str(c) for c in shown.columns],
        shown.astype(object).where(shown.notna(), None).values.tolist(),
        empty="no finished records yet",
    )
    if len(shown) < len(frame):
        out.say(
            f"... and {len(frame) - len(shown)} more records: write them all with "
            f"`batchserve batch results {batch_id} -o results.csv`.",
            style="dim",
        )


@batch_app.command("artifacts")
def batch_artifacts(
    batch_id: BatchId,
    index: Annotated[int, typer.Argument(min=0, help="The record's 0-based index.")],
    json_mode: JsonOption = False,
) -> None:
    """List the files one record produced."""
    with connected() as conn:
        names = conn.run(_ops.list_artifacts(batch_id, index))
    out = Output(json_mode)
    if out.json:
        out.emit(names)
    elif out.rich and not names:
        out.say(f"Record {index} produced no files.")
    else:
        for name in names:
            out.say(name)


@batch_app.command("download")
def batch_download(
    batch_id: BatchId,
    index: Annotated[int, typer.Argument(min=0, help="The record's 0-based index.")],
    name: Annotated[str | None, typer.Argument(help="One file (default: all of them).")] = None,
    directory: Annotated[
        Path, typer.Option("--dir", "-d", help="Where to save (created if missing).")
    ] = Path("."),
    json_mode: JsonOption = False,
) -> None:
    """Download the files one record produced."""
    directory.mkdir(parents=True, exist_ok=True)
    with connected() as conn:
        names = [name] if name is not None else conn.run(_ops.list_artifacts(batch_id, index))
        paths = []
        for artifact in names:
            # Only the last part of a name is used: a name can never write outside the directory.
            safe = Path(artifact).name
            if safe in ("", ".", ".."):
                raise CliError(f"Cannot save an artifact named {artifact!r} as a file.")
            paths.append(
                str(conn.run(_ops.download_artifact(batch_id, index, artifact, directory / safe)))
            )
    out = Output(json_mode)
    if out.json:
        out.emit(paths)
    elif out.rich and not paths:
        out.say(f"Record {index} produced no files.")
    else:
        for path in paths:
            out.say(path)
