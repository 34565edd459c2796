"""What the workers' sandbox shows them: the Python installation wherever it lives, never the
data directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from batchserve.worker.sandbox import WorkerSandbox


def _arguments(
    monkeypatch: pytest.MonkeyPatch, prefix: Path, extra: Path, hidden: Path
) -> list[str]:
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.setattr(sys, "path", [*sys.path, str(extra)])
    sandbox = WorkerSandbox.create("off", [hidden])
    try:
        return sandbox._bwrap_arguments()
    finally:
        sandbox.close()


def _binds(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a in ("--ro-bind", "--bind")]


def test_a_project_under_tmp_is_shown_though_tmp_is_a_new_empty_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / ".venv").mkdir(parents=True)
    (project / "src").mkdir()
    args = _arguments(monkeypatch, project / ".venv", project / "src", tmp_path / "home")
    binds = _binds(args)
    assert str(project / ".venv") in binds and str(project / "src") in binds
    # Its folders are made passable for a worker of another uid (bwrap would make them 0700).
    made = [args[i + 1] for i, a in enumerate(args) if a == "--dir"]
    assert str(project) in made


def test_the_data_directory_is_hidden_where_a_shown_folder_holds_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    (venv / "data").mkdir(parents=True)
    args = _arguments(monkeypatch, venv, venv, venv / "data")
    assert str(venv) in _binds(args)
    hidden = [args[i + 1] for i, a in enumerate(args) if a == "--tmpfs"]
    assert str(venv / "data") in hidden
