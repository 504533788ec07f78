"""``benchmarks/handoff_stream.py`` runs end to end at a small setting (numbers are the
tool's output, not this test's)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import handoff_stream  # noqa: E402


@pytest.mark.cluster
def test_handoff_benchmark_runs_small(tiny_llama, tmp_path, capsys):
    """Streamed 1P+1D with a 4-chunk prompt, one rep (one cluster, to stay quick), core
    lending asked for: a table row and the row as JSON, with the streamed set-up's
    blocks counted."""
    out = tmp_path / "rows.json"
    handoff_stream.main(
        [
            "--model",
            str(tiny_llama),
            "--prompts",
            "64",
            "--chunk",
            "16",
            "--reps",
            "1",
            "--setups",
            "1p1d-stream",
            "--out",
            str(out),
            "--cpu-core-lending",
        ]
    )
    table = capsys.readouterr().out
    assert "1p1d-stream" in table and "core lending on" in table
    rows = json.loads(out.read_text())
    assert [r["setup"] for r in rows] == ["1p1d-stream"]
    streamed = rows[0]["stream_blocks"]
    assert sum(streamed.get(k, 0) for k in ("during_prefill", "after_prefill", "transfer")) == 4
