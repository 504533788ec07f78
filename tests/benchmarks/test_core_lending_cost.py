"""``benchmarks/core_lending_cost.py`` runs end to end at a small setting (numbers are
the tool's output, not this test's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_core_lending_cost_runs_small() -> None:
    """A few reps with two idle peers print the ledger check and both rebinds (in a
    child process: the benchmark re-pins its process's threads)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "core_lending_cost.py"), "--reps", "60"]
        + ["--peers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ledger check per step (2 idle peer(s)" in proc.stdout
    assert "rebind grow" in proc.stdout and "rebind shrink" in proc.stdout
