"""What commands print: Rich tables on a terminal, plain lines in a pipe, JSON with ``--json``.

Three modes, chosen once per command:

- **rich**: stdout is a terminal and ``--json`` was not given — tables, colours, progress bars;
- **plain**: stdout is a pipe or a file — one record per line, fields separated by tabs, with a
  header line for tables, so ``cut``, ``awk`` and ``sort`` work;
- **json**: ``--json`` — one JSON document per line (a list prints one line per item).

Errors never go to stdout: they are one line on stderr (see ``main.py``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: The ``--json`` option every printing command takes.
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON (one document per line) instead of text.")
]


class Output:
    """The printer of one command."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json = json_mode
        self.console = Console(highlight=False)
        self.rich = not json_mode and self.console.is_terminal

    # -- json ---------------------------------------------------------------------------------

    def emit(self, value: Any) -> None:
        """Print one JSON document on one line."""
        typer.echo(json.dumps(value, default=str, ensure_ascii=False))

    def emit_lines(self, values: Iterable[Any]) -> None:
        for value in values:
            self.emit(value)

    # -- text ---------------------------------------------------------------------------------

    def say(self, text: str, style: str | None = None) -> None:
        """One human line (escaped: user data is never read as markup)."""
        if self.rich:
            self.console.print(escape(text), style=style, soft_wrap=True)
        else:
            typer.echo(text)

    def table(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        title: str | None = None,
        empty: str = "nothing to show",
    ) -> None:
        """A table: a Rich table on a terminal, a header line and tab-separated lines otherwise."""
        rows = [[cell(v) for v in row] for row in rows]
        if not self.rich:
            typer.echo("\t".join(columns))
            for row in rows:
                typer.echo("\t".join(v.replace("\t", " ").replace("\n", " ") for v in row))
            return
        if not rows:
            self.console.print(f"[dim]{escape(empty)}[/dim]")
            return
        table = Table(title=title, title_justify="left", header_style="bold")
        for i, name in enumerate(columns):
            # The first column is what a row is named by (an id, a name): it stays whole.
            table.add_column(name, overflow="fold", no_wrap=i == 0)
        for row in rows:
            table.add_row(*(escape(v) for v in row))
        self.console.print(table)

    def fields(self, pairs: Mapping[str, Any], *, title: str | None = None) -> None:
        """Name/value pairs: a two-column grid on a terminal, ``name<TAB>value`` lines otherwise."""
        if not self.rich:
            for name, value in pairs.items():
                typer.echo(f"{name}\t{cell(value)}")
            return
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column(overflow="fold")
        for name, value in pairs.items():
            grid.add_row(escape(name), escape(cell(value)))
        if title:
            self.console.print(f"[bold]{escape(title)}[/bold]")
        self.console.print(grid)


def cell(value: Any) -> str:
    """A value as table text: None is empty, mappings are ``k=v`` pairs, lists are joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def when(timestamp: str | None) -> str:
    """An ISO timestamp from the server, to the second and without the 'T'."""
    if not timestamp:
        return ""
    return str(timestamp).replace("T", " ")[:19]


def warn(text: str) -> None:
    """A notice on stderr (not an error: the command goes on)."""
    typer.secho(text, err=True, fg="yellow")


def error_line(message: str) -> None:
    """The one line an error prints on stderr."""
    text = " ".join(message.split())  # a message from the server may span lines
    typer.secho(f"error: {text}", err=True, fg="red")


def stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()
