"""The wheel built from the source tree: it carries the files the installed package needs besides
its modules (the ``py.typed`` marker that lets type checkers read the SDK, the migrations, the
dashboard's templates and assets)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import missing_service

REPO = Path(__file__).parents[2]


def build_wheel(tmp_path: Path) -> zipfile.ZipFile:
    # Built from a copy holding only what the build reads, so that the build leaves nothing
    # (build/, *.egg-info) in the working tree.
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(
        REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            str(project),
            "-w",
            "dist",
        ],
        cwd=tmp_path,
        # Where the network is out of reach (scripts/test's namespace), the build backend comes
        # from the local indexes at once rather than after pip's retries (also in the build's
        # own pip, hence the environment).
        env={**os.environ, "PIP_RETRIES": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0 and "No matching distribution found" in out.stdout + out.stderr:
        missing_service(f"pip could not get the build backend:\n{out.stderr[-2000:]}")
    assert out.returncode == 0, out.stdout + out.stderr
    [wheel] = (tmp_path / "dist").glob("batchserve-*.whl")
    return zipfile.ZipFile(wheel)


def test_the_wheel_carries_py_typed_the_migrations_and_the_dashboard_files(tmp_path: Path):
    names = set(build_wheel(tmp_path).namelist())
    assert "batchserve/py.typed" in names
    assert "batchserve/client/_async.py" in names
    assert "batchserve/store/migrations/env.py" in names
    assert any(n.startswith("batchserve/store/migrations/versions/") for n in names)
    # The dashboard loads its pages' files from the installed package, never from a CDN.
    ui = REPO / "src" / "batchserve" / "server" / "ui"
    shipped = [
        f"batchserve/server/ui/{path.relative_to(ui).as_posix()}"
        for folder in ("templates", "static")
        for path in (ui / folder).rglob("*")
        if path.is_file()
    ]
    assert "batchserve/server/ui/static/htmx.min.js" in shipped
    assert [name for name in shipped if name not in names] == []
