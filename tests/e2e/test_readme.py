"""The README's Python examples run as written, against a real server.

Every ```python block of README.md runs, in the order of the README, each in a namespace of its
own (a later block may use what an earlier one published on the server). A block reads the
server's address and the admin password from ``BATCHSERVE_URL`` and ``BATCHSERVE_PASSWORD``, as
the README says, and runs in a folder that holds the repository's ``examples`` (the README says to
run it from the repository's root). An HTML comment on the line before a block says how to treat
it: ``<!-- readme-test: skip (why) -->`` leaves it out, and ``<!-- readme-test: needs azureml -->``
runs it only where Machine Learning Server's client is installed.
"""

from __future__ import annotations

import importlib.util
import linecache
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ADMIN_PASSWORD, ServerProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>\w*)[ \t]*$")
_MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<what>.*?)\s*-->\s*$")


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    code: str
    marker: str | None  # what the readme-test comment before it says

    @property
    def name(self) -> str:
        return f"README.md:{self.line}"


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, with the readme-test marker before each."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent, lang, start = fence["indent"], fence["lang"], i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        body = "\n".join(line.removeprefix(indent) for line in lines[start + 1 : i])
        i += 1
        if lang != "python":
            continue
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = _MARKER.match(before)
        blocks.append(Block(start + 1, textwrap.dedent(body), marker["what"] if marker else None))
    return blocks


def test_the_readme_has_python_examples_that_run():
    blocks = python_blocks(README.read_text())
    assert len([b for b in blocks if b.marker is None]) >= 2
    for block in blocks:
        if block.marker is not None:
            assert block.marker == "needs azureml" or block.marker.startswith("skip ("), (
                f"{block.name}: unknown marker {block.marker!r}"
            )


def test_the_readme_python_examples_run_as_written(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHSERVE_URL", server.url)
    monkeypatch.setenv("BATCHSERVE_PASSWORD", ADMIN_PASSWORD)
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    has_azureml = importlib.util.find_spec("azureml") is not None

    ran = []
    for block in python_blocks(README.read_text()):
        if block.marker is not None and block.marker.startswith("skip ("):
            continue
        if block.marker == "needs azureml" and not has_azureml:
            continue
        # Registered as a source file, so that inspect.getsource() finds the block's functions.
        filename = f"<{block.name}>"
        lines = block.code.splitlines(keepends=True)
        linecache.cache[filename] = (len(block.code), None, lines, filename)
        namespace = {"__name__": "__main__"}
        try:
            exec(compile(block.code, filename, "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"The example at {block.name} fails: {type(exc).__name__}: {exc}")
        ran.append(block.name)

    assert len(ran) >= 2
    # What the batch workflow example leaves behind: every record's plot, in a folder of its own.
    plots = sorted((tmp_path / "artifacts").glob("*/Histogram.png"))
    assert len(plots) == 32
