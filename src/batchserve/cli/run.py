"""``run``: start a batch of a service over a records file, with every option a batch takes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from batchserve.cli.batches import ResultsFile, check_results_path, follow
from batchserve.cli.connection import CliError, connected
from batchserve.cli.output import JsonOption, Output
from batchserve.cli.services import find_service
from batchserve.cli.values import (
    RECORDS_FORMATS,
    Pair,
    duration,
    mapping,
    pair,
    parallel_count,
    records_format,
    unique_keys,
)
from batchserve.client._records import FILE_FORMATS

_LIMITS = "Limits"
_FAILURES = "Failed records"
_ORDER = "Scheduling"
_DATA = "Records and results"

RecordsFile = Annotated[
    Path,
    typer.Argument(
        metavar="RECORDS_FILE",
        help="The records: .csv, .tsv, .jsonl, .parquet, .arrow or .json.",
    ),
]
FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        parser=records_format,
        metavar="FORMAT",
        help=f"The records file's format when its extension does not say it: "
        f"{', '.join(RECORDS_FORMATS)}.",
        rich_help_panel=_DATA,
    ),
]


def run(
    service: Annotated[str, typer.Argument(metavar="NAME[:VERSION]")],
    records_file: RecordsFile,
    parallel: Annotated[
        int,
        typer.Option(
            "--parallel",
            "-P",
            parser=parallel_count,
            metavar="N",
            help="Chunks run at once, at most; -1 or unlimited: as many as the workers take.",
            rich_help_panel=_ORDER,
        ),
    ] = 10,
    priority: Annotated[
        int,
        typer.Option(
            "--priority",
            min=-1000,
            max=1000,
            help="-1000 to 1000; batches waiting for workers run highest first (above the "
            "server's max_user_priority for owners only).",
            rich_help_panel=_ORDER,
        ),
    ] = 0,
    allow_preemption: Annotated[
        bool,
        typer.Option(
            "--allow-preemption",
            help="Batches of higher priority may requeue this batch's running chunks.",
            rich_help_panel=_ORDER,
        ),
    ] = False,
    depends_on: Annotated[
        list[str] | None,
        typer.Option(
            "--depends-on",
            metavar="ID",
            help="Run only after this batch has completed (and fail if it does not); repeat it, "
            "or separate ids with commas, for several.",
            rich_help_panel=_ORDER,
        ),
    ] = None,
    chunk_size: Annotated[
        int | None,
        typer.Option(
            "--chunk-size", min=1, help="Records per chunk (default: auto).", rich_help_panel=_ORDER
        ),
    ] = None,
    max_wall_clock_time: Annotated[
        float | None,
        typer.Option(
            "--max-wall-clock-time",
            parser=duration,
            metavar="DURATION",
            help="Fail the batch if it has not finished this long after it started: seconds "
            "(3600), units (1h30m, 2d) or ISO 8601 (PT1H30M).",
            rich_help_panel=_LIMITS,
        ),
    ] = None,
    task_timeout: Annotated[
        float | None,
        typer.Option(
            "--task-timeout",
            parser=duration,
            metavar="DURATION",
            help="How long one record (one call of a vectorized service) may run; a longer one "
            "is stopped and counts as a failed try. Same forms as --max-wall-clock-time.",
            rich_help_panel=_LIMITS,
        ),
    ] = None,
    max_task_retry_count: Annotated[
        int,
        typer.Option(
            "--max-task-retry-count",
            min=-1,
            max=1_000_000,
            metavar="N",
            help="Tries of a failed record after its first (-1: no limit).",
            rich_help_panel=_FAILURES,
        ),
    ] = 0,
    task_failure_mode: Annotated[
        Literal["noaction", "terminatejob"],
        typer.Option(
            "--task-failure-mode",
            help="noaction: failed records are reported and the batch completes; "
            "terminatejob: the first failed record fails the batch.",
            rich_help_panel=_FAILURES,
        ),
    ] = "noaction",
    max_failed_records: Annotated[
        int | None,
        typer.Option(
            "--max-failed-records",
            min=0,
            metavar="N",
            help="Fail the batch once more records than this have failed.",
            rich_help_panel=_FAILURES,
        ),
    ] = None,
    display_name: Annotated[
        str | None, typer.Option("--display-name", help="A name shown with the batch.")
    ] = None,
    metadata: Annotated[
        list[Pair] | None,
        typer.Option(
            "--metadata",
            "-m",
            parser=pair,
            callback=unique_keys,
            metavar="KEY=VALUE",
            help="Kept with the batch (batch list --metadata finds it by it); repeat it.",
        ),
    ] = None,
    env: Annotated[
        list[Pair] | None,
        typer.Option(
            "--env",
            "-e",
            parser=pair,
            callback=unique_keys,
            metavar="NAME=VALUE",
            help="An environment variable set for the service code while it runs this batch; "
            "repeat it.",
        ),
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(
            "--id-column",
            metavar="COLUMN",
            help="A column of the records whose values become each result's id.",
            rich_help_panel=_DATA,
        ),
    ] = None,
    format: FormatOption = None,
    open_batch: Annotated[
        bool,
        typer.Option(
            "--open",
            help="An open batch: batch add adds records to it while it waits or runs, and it "
            "completes only once batch close is called and its records are done.",
            rich_help_panel=_DATA,
        ),
    ] = False,
    preparation: Annotated[
        Path | None,
        typer.Option(
            "--preparation",
            metavar="SCRIPT.py",
            help="A Python script each worker runs before its first chunk of the batch (it and "
            "the records find a folder of the worker's in BATCHSERVE_JOB_DIR). Only the "
            "service's publisher or an owner may give one.",
        ),
    ] = None,
    release: Annotated[
        Path | None,
        typer.Option(
            "--release",
            metavar="SCRIPT.py",
            help="A Python script each worker that ran the batch runs after it ends.",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Follow the batch until it is finished.")
    ] = False,
    output: ResultsFile = None,
    json_mode: JsonOption = False,
) -> None:
    """Start a batch of a service over a records file."""
    records, file_format = records_from_file(records_file, format)
    if output is not None:
        check_results_path(output)
    out = Output(json_mode)
    with connected() as conn:
        svc = find_service(conn, service)
        batch = svc.batch(
            records,
            parallel_count=parallel,
            chunk_size=chunk_size,
            priority=priority,
            display_name=display_name,
            metadata=mapping(metadata),
            environment=mapping(env),
            max_failed_records=max_failed_records,
            task_failure_mode=task_failure_mode,
            max_wall_clock_time=max_wall_clock_time,
            max_task_retry_count=max_task_retry_count,
            task_timeout=task_timeout,
            allow_preemption=allow_preemption,
            depends_on=[i.strip() for v in depends_on or [] for i in v.split(",") if i.strip()],
            id_column=id_column,
            format=file_format,
            open=open_batch,
            preparation=script(preparation, "--preparation"),
            release=script(release, "--release"),
        ).start()
        info = batch.data
        assert info is not None
        if not (wait or output is not None):
            if out.json:
                out.emit(info)
            elif out.rich:
                out.say(
                    f"Started batch {info['id']} of {svc.name}:{svc.version} over "
                    f"{info['total_item_count']} records. Follow it with `batchserve batch wait "
                    f"{info['id']}`."
                )
            else:
                typer.echo(info["id"])
            return
        if out.rich:
            out.say(
                f"Batch {info['id']} of {svc.name}:{svc.version}, "
                f"{info['total_item_count']} records"
            )
        elif not out.json:
            typer.echo(f"batch {info['id']} started", err=True)
        code = follow(conn, info["id"], out, output)
    raise typer.Exit(code)


def script(path: Path | None, option: str) -> str | None:
    """The source text of the Python script given to ``option``, checked to compile."""
    if path is None:
        return None
    if not path.is_file():
        raise CliError(f"There is no script at '{path}' ({option}).")
    try:
        source = path.read_text(encoding="utf-8")
        compile(source, str(path), "exec")
    except (UnicodeDecodeError, SyntaxError, ValueError) as exc:
        raise CliError(f"'{path}' ({option}) is not a Python script: {exc}") from None
    return source


def records_from_file(path: Path, format: str | None) -> tuple[Any, str | None]:
    """What ``Service.batch`` takes for the records file ``path``, and its ``format=``.

    The formats the SDK streams (CSV, TSV, JSON Lines, Parquet, Arrow) go as the path; a ``.json``
    list of records, which cannot be streamed, is read into a DataFrame first.
    """
    if not path.is_file():
        raise CliError(f"There is no records file at '{path}'.")
    suffix = f".{format}" if format is not None else path.suffix.lower()
    if suffix in FILE_FORMATS or suffix == ".txt":
        return path, format
    if suffix == ".json":
        import pandas as pd

        try:
            return pd.read_json(path, orient="records"), None
        except ValueError as exc:
            raise CliError(f"Cannot read records from '{path}': {exc}") from None
    raise CliError(
        f"Cannot read records from '{path.name}': use a {', '.join(FILE_FORMATS)}, .txt or .json "
        "file, or give its format with --format."
    )
