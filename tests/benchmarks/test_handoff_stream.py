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


def test_one_device_cpus_is_half_of_this_process_cpus():
    """``colocated-1dev`` pins its engine to the first half of the CPUs this process may
    run on (at least one), the slice the first worker of 1P+1D gets."""
    import os

    allowed = sorted(os.sched_getaffinity(0))
    got = [int(c) for c in handoff_stream.one_device_cpus().split(",")]
    assert got == allowed[: max(1, len(allowed) // 2)]


@pytest.mark.parametrize(
    ("lending", "main", "other", "ratio", "other_ratio"),
    [
        (True, "colocated", "colocated-1dev", 2.1, 1.05),
        (False, "colocated-1dev", "colocated", 1.05, 2.1),
    ],
)
def test_saved_targets_read_against_the_same_cores(
    monkeypatch, lending, main, other, ratio, other_ratio
):
    """The 2,048-token target is read against the colocated set-up whose prefill has as
    many cores: one engine's share (``colocated-1dev``) by default, every core when the
    engines lend each other theirs (``--cpu-core-lending``); the other ratio is saved
    beside it without a target."""
    import argparse

    import result_file

    saved = {}
    monkeypatch.setattr(
        result_file, "save", lambda name, title, claims, notes: saved.update(c=claims)
    )
    R = handoff_stream.Row
    rows = [
        R("colocated", 2048, [1.0], [0.02], {}),
        R("colocated-1dev", 2048, [2.0], [0.02], {}),
        R("1p1d", 2048, [2.1], [0.05], {}),
    ]
    args = argparse.Namespace(reps=1, shape="s", chunk=512, cpu_core_lending=lending)
    handoff_stream.save_results(rows, args)
    by_col = {c["col"]: c for c in saved["c"]}
    assert by_col[f"TTFT p50 vs {main}"]["ratio"] == pytest.approx(ratio)
    assert by_col[f"TTFT p50 vs {main}"]["target"] == "≤ 1.1"
    assert by_col[f"TTFT p50 vs {other}"]["ratio"] == pytest.approx(other_ratio)
    assert by_col[f"TTFT p50 vs {other}"]["target"] is None
