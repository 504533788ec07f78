"""``benchmarks/handoff_bandwidth.py`` runs end to end at a small setting and saves a
result file the report reads (numbers are the tool's output, not this test's)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import handoff_bandwidth  # noqa: E402
import result_file  # noqa: E402


@pytest.mark.cluster
def test_bandwidth_benchmark_runs_small_and_saves(tiny_llama, tmp_path, capsys, monkeypatch):
    """1P+1D, a 4-block prompt, one rep, a fresh tier: a table row with copies per block
    counted on both sides, and a result file whose data-path claim has a ratio against
    memcpy and, at 2,048 tokens only, the target."""
    monkeypatch.setattr(result_file, "RESULTS_DIR", tmp_path)
    handoff_bandwidth.main(
        [
            "--model",
            str(tiny_llama),
            "--prompts",
            "64",
            "--reps",
            "1",
            "--tiers",
            "fresh",
            "--save-results",
        ]
    )
    table = capsys.readouterr().out
    assert "fresh" in table and "engine.export" in table and "engine.import" in table
    doc = json.loads((tmp_path / "handoff-bandwidth.json").read_text())
    data = [c for c in doc["claims"] if c["col"].startswith("data path")]
    assert len(data) == 1 and data[0]["ratio"] > 0 and data[0]["target"] is None
    assert doc["copies_per_block"]["fresh/64"]["decode"] == {"engine.import": 1.0}
