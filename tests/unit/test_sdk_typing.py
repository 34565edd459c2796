"""The SDK's types as a user's type checker sees them: ``mypy --strict`` over a program using both
clients (tests/typecheck/user_program.py) passes, and over one that misuses them
(tests/typecheck/misused_program.py) finds exactly the mistakes marked in it.

mypy runs outside the repository, so it finds batchserve as an installed package, which it reads
only if the package has a ``py.typed`` marker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import missing_service

import batchserve

PROGRAMS = Path(__file__).parents[1] / "typecheck"
REPO = Path(__file__).parents[2]


def mypy(program: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    mypy_bin = Path(sys.executable).with_name("mypy")
    if not mypy_bin.exists():
        missing_service(
            "mypy is not installed: run ./scripts/test once (it installs the test tools)"
        )
    return subprocess.run(
        [
            str(mypy_bin),
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            # A cache of its own: the package checked is the same, the settings are not.
            "--cache-dir",
            str(REPO / ".mypy_cache" / "sdk-typing"),
            str(program),
        ],
        cwd=workdir,  # no pyproject.toml here: the package is read as installed
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_package_has_a_py_typed_marker():
    assert (Path(batchserve.__file__).parent / "py.typed").is_file()


def test_a_program_using_both_clients_type_checks(tmp_path: Path):
    out = mypy(PROGRAMS / "user_program.py", tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_each_misuse_of_the_clients_is_a_type_error(tmp_path: Path):
    program = PROGRAMS / "misused_program.py"
    marks = [re.search(r"  # error: ([\w-]+)$", line) for line in program.read_text().splitlines()]
    expected = {number: m.group(1) for number, m in enumerate(marks, start=1) if m}
    assert len(expected) >= 5
    out = mypy(program, tmp_path)
    found = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r":(\d+): error: .*\[([\w-]+)\]$", out.stdout, re.MULTILINE)
    }
    assert out.returncode == 1, out.stdout + out.stderr
    assert found == expected, out.stdout
