"""``benchmarks/runtime_bench.py``'s hand-off figures, from the workers' stage times."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import runtime_bench  # noqa: E402


def test_handoff_ms_joins_both_sides_of_each_request():
    """Two requests whose prefill-side and decode-side stages sit on two workers, a
    third the run did not ask about, and one whose decode side never recorded: the
    figures are over the two complete ones (whole: export start to import; control:
    stored to fetch start), in ms."""
    stats = {
        "prefill": {
            "handoff_times": {
                "a": {"export_start": 1.0, "stored": 1.01},
                "b": {"export_start": 2.0, "stored": 2.02},
                "c": {"export_start": 3.0, "stored": 3.0},
                "x": {"export_start": 0.0, "stored": 0.0},
            }
        },
        "decode": {
            "handoff_times": {
                "a": {"fetch_start": 1.02, "imported": 1.03},
                "b": {"fetch_start": 2.05, "imported": 2.06},
                "x": {"fetch_start": 9.0, "imported": 9.0},
            }
        },
    }
    got = runtime_bench.handoff_ms({"a", "b", "c"}, stats)
    assert round(got["handoff_max_ms"]) == 60
    assert round(got["handoff_p50_ms"]) == 45
    assert round(got["handoff_control_p50_ms"]) == 20
    assert round(got["handoff_control_max_ms"]) == 30
    assert runtime_bench.handoff_ms({"c"}, stats) == {}
