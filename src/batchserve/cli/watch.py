"""Following a running batch: a live progress bar on a terminal, progress lines in a pipe.

Ctrl-C does not stop the command at once: it asks whether to cancel the batch or only to stop
watching it (or to watch on). SIGINT only sets a flag that the polling loop reads between
requests, so an interrupted command never leaves a request to the server half-sent.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from batchserve.cli.connection import Connection
from batchserve.cli.output import Output, stdin_is_terminal
from batchserve.client import _ops
from batchserve.states import BatchState

#: Seconds between looks at the batch while it runs.
POLL_INTERVAL = 0.5
#: Seconds between progress lines in a pipe (a line is printed sooner when the state changes).
PLAIN_INTERVAL = 2.0

CANCEL, STOP, WATCH = "c", "s", "w"


class Interrupted(Exception):
    """Ctrl-C ended the watch: the batch was cancelled, or is left running."""

    def __init__(self, info: dict[str, Any], cancelled: bool) -> None:
        super().__init__(info["id"])
        self.info = info
        self.cancelled = cancelled


@dataclass
class _Flag:
    raised: bool = False


@contextmanager
def _sigint_flag() -> Iterator[_Flag]:
    flag = _Flag()

    def handle(signum: int, frame: Any) -> None:
        flag.raised = True

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _pause(flag: _Flag, seconds: float) -> bool:
    """Sleep up to ``seconds``; True as soon as Ctrl-C was pressed."""
    deadline = time.monotonic() + seconds
    while not flag.raised and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    return flag.raised


def _counts(info: dict[str, Any]) -> tuple[int, int, int, str]:
    return (
        int(info.get("completed_item_count") or 0),
        int(info.get("total_item_count") or 0),
        int(info.get("failed_item_count") or 0),
        str(info.get("state")),
    )


class _RateColumn(ProgressColumn):
    """Records per second: as Rich measures it from recent updates, else the server's average
    (a batch that finishes between two looks gives Rich nothing to measure)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed or task.fields.get("rate")
        return Text("? records/s" if not speed else f"{speed:,.1f} records/s", style="cyan")


class _FailedColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        failed = int(task.fields.get("failed", 0))
        return Text(f"{failed:,} failed", style="red" if failed else "dim")


def _progress(out: Output) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records"),
        _RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        _FailedColumn(),
        console=out.console,
        transient=False,
        refresh_per_second=8,
    )


def watch(conn: Connection, batch_id: str, out: Output) -> dict[str, Any]:
    """Follow the batch until it is finished and return it as the server last described it.

    Raises :class:`Interrupted` when Ctrl-C ends the watch first.
    """
    with _sigint_flag() as flag:
        while True:
            if out.rich:
                info = _watch_bar(conn, batch_id, out, flag)
            else:
                info = _watch_lines(conn, batch_id, out, flag)
            if BatchState(info["state"]).is_final:
                return info
            flag.raised = False
            answer = _ask(batch_id)
            if answer == CANCEL:
                return _cancel(conn, batch_id, out, flag)
            if answer == STOP:
                raise Interrupted(info, cancelled=False)


def _watch_bar(conn: Connection, batch_id: str, out: Output, flag: _Flag) -> dict[str, Any]:
    """The live bar; returns when the batch is finished or Ctrl-C was pressed."""
    info = conn.run(_ops.get_batch(batch_id))
    with _progress(out) as progress:
        done, total, failed, state = _counts(info)
        task = progress.add_task(state, total=total or None, completed=done, failed=failed)
        while True:
            done, total, failed, state = _counts(info)
            rate = (info.get("statistics") or {}).get("records_per_second")
            progress.update(
                task,
                description=state,
                total=total or None,
                completed=done,
                failed=failed,
                rate=rate,
            )
            if BatchState(state).is_final or _pause(flag, POLL_INTERVAL):
                return info
            info = conn.run(_ops.get_batch(batch_id))


def _watch_lines(conn: Connection, batch_id: str, out: Output, flag: _Flag) -> dict[str, Any]:
    """Progress as lines on stderr (none with --json); returns like :func:`_watch_bar`."""
    last: tuple[int, int, int, str] | None = None
    last_time = 0.0
    while True:
        info = conn.run(_ops.get_batch(batch_id))
        counts = _counts(info)
        now = time.monotonic()
        changed = (
            last is None
            or counts[3] != last[3]
            or (counts != last and now - last_time >= PLAIN_INTERVAL)
        )
        if not out.json and changed:
            done, total, failed, state = counts
            typer.echo(f"{batch_id} {state}: {done}/{total} records, {failed} failed", err=True)
            last, last_time = counts, now
        if BatchState(counts[3]).is_final or _pause(flag, POLL_INTERVAL):
            return info


def _ask(batch_id: str) -> str:
    """Ctrl-C's question; a second Ctrl-C, or no terminal to ask on, means stop watching."""
    if not stdin_is_terminal():
        return STOP
    # While the question waits, Ctrl-C interrupts it the usual way.
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return str(
            click.prompt(
                f"\nInterrupted. Cancel batch {batch_id} (c), stop watching and leave it running "
                "(s), or keep watching (w)?",
                type=click.Choice([CANCEL, STOP, WATCH]),
                default=STOP,
                err=True,
            )
        )
    except (click.Abort, KeyboardInterrupt, EOFError):
        return STOP
    finally:
        signal.signal(signal.SIGINT, handler)


def _cancel(conn: Connection, batch_id: str, out: Output, flag: _Flag) -> dict[str, Any]:
    """Cancel the batch and wait until it has stopped (its finished results are kept)."""
    info = conn.run(_ops.cancel_batch(batch_id))
    if not out.json:
        typer.echo(f"Cancelling batch {batch_id}...", err=True)
    while not BatchState(info["state"]).is_final and not flag.raised:
        # A long poll: the server answers as soon as the batch has stopped.
        info = conn.run(_ops.get_batch(batch_id, wait=2.0))
    raise Interrupted(info, cancelled=True)
