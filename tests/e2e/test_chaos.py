"""The short chaos run: random nodes killed at random moments and started again, then every
record of every batch has exactly one right result and no batch is stuck (``bench/chaos.py``
runs the long one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import find_postgres

pytestmark = pytest.mark.e2e

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def test_a_short_chaos_run_loses_and_duplicates_nothing() -> None:
    run = subprocess.run(
        [sys.executable, str(CHAOS), "--seed", "7", "--kills", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "", "BATCHSERVE_TEST_POSTGRES_URL": find_postgres()},
    )
    assert run.returncode in (0, 1), run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert sum(figures["kills"].values()) == 3
    assert figures["batches"] >= 2 and figures["records"] > 0
    assert (figures["duplicates"], figures["losses"], figures["wrong"], figures["stuck"]) == (
        0,
        0,
        0,
        0,
    ), figures
