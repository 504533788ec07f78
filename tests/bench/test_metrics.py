"""Benchmark summary: percentiles, TPOT, goodput, arrivals."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from mooncake.bench.metrics import format_table, parse_goodput, percentile, summarize
from mooncake.bench.request import RequestResult
from mooncake.bench.runner import LoadConfig, arrival_times


def _ok(ttft: float, latency: float, tokens: int, prompt: int = 10) -> RequestResult:
    return RequestResult(
        prompt,
        tokens,
        success=True,
        ttft_s=ttft,
        latency_s=latency,
        output_tokens=tokens,
        itl_s=[0.01] * (tokens - 1),
    )


def test_percentile_matches_numpy_linear() -> None:
    """Linear interpolation between order statistics, like numpy's default."""
    xs = [1.0, 2.0, 3.0, 4.0]
    assert percentile(xs, 50) == 2.5 and percentile(xs, 0) == 1.0 and percentile(xs, 100) == 4.0
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert percentile([], 99) == 0.0


def _interpolated(values: list[float], q: float) -> float:
    """The definition the summary always used: the order statistic at (n - 1) * q / 100,
    interpolated linearly between its neighbours."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def test_percentile_equals_the_interpolation_definition() -> None:
    """numpy's percentile gives the same numbers as the interpolation formula the
    summaries were computed with before, on unsorted samples of 1 to 200 latencies,
    ties included, at every percentile the CLI reports and a few in between."""
    import random

    rng = random.Random(5)
    for n in (1, 2, 3, 10, 57, 200):
        values = [round(rng.expovariate(1 / 80.0), 1 if n % 2 else 3) for _ in range(n)]
        for q in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
            assert percentile(values, q) == pytest.approx(
                _interpolated(values, q), rel=1e-12, abs=1e-12
            )


def test_summary_hand_computed() -> None:
    """Two successes, one rejection, one failure over 2 s; TPOT = (E2E - TTFT) / (tokens - 1)."""
    results = [
        _ok(0.1, 1.1, 11),  # TPOT 100 ms
        _ok(0.3, 0.5, 5),  # TPOT 50 ms
        RequestResult(10, 5, rejected=True, status=429),
        RequestResult(10, 5, error="boom"),
    ]
    s = summarize(results, 2.0, parse_goodput(["ttft:200", "tpot:120"]))
    assert (s["completed"], s["rejected"], s["failed"]) == (2, 1, 1)
    assert s["request_throughput"] == 1.0 and s["output_throughput"] == 8.0
    assert s["total_token_throughput"] == 18.0
    assert s["mean_ttft_ms"] == pytest.approx(200.0) and s["mean_tpot_ms"] == pytest.approx(75.0)
    assert s["p99_e2el_ms"] == pytest.approx(percentile([1100.0, 500.0], 99))
    assert s["request_goodput"] == 0.5  # only the first meets TTFT <= 200 ms
    assert "Request goodput" in format_table(s)


def test_goodput_parsing() -> None:
    """NAME:MS pairs; unknown names and non-positive values are errors naming goodput."""
    assert parse_goodput(["ttft:500", "e2el:2000"]) == {"ttft": 500.0, "e2el": 2000.0}
    for bad in (["itl:5"], ["ttft"], ["ttft:-1"], ["tpot:x"]):
        with pytest.raises(ValueError, match="goodput"):
            parse_goodput(bad)


def test_arrivals_poisson_and_burst() -> None:
    """Mean gap is 1/rate; rate inf sends everything at t=0; seeded."""
    ts = arrival_times(4000, 10.0, 1.0, seed=0)
    gaps = [b - a for a, b in itertools.pairwise(ts)]
    assert statistics.fmean(gaps) == pytest.approx(0.1, rel=0.05)
    bursty = arrival_times(4000, 10.0, 0.25, seed=0)
    bgaps = [b - a for a, b in itertools.pairwise(bursty)]
    assert statistics.pstdev(bgaps) > 1.5 * statistics.pstdev(gaps)
    assert arrival_times(3, math.inf, 1.0, 0) == [0.0, 0.0, 0.0]
    assert ts == arrival_times(4000, 10.0, 1.0, seed=0)
    with pytest.raises(ValueError, match="request_rate"):
        LoadConfig(base_url="http://x", request_rate=0)
