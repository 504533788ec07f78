"""TBT as the paper defines it, SLO attainment, summaries."""

from __future__ import annotations

import pytest

from mooncake.sim import RequestRecord, attainment, slowest_gaps_mean, summarize


def test_slowest_ten_percent() -> None:
    """10 gaps: nine of 10 ms and one of 500 ms → slowest 10% = the one gap = 500 ms.
    20 gaps (18×10 ms, 2×300 ms... plus) → top 2 averaged."""
    assert slowest_gaps_mean([(0.01, 9), (0.5, 1)]) == pytest.approx(0.5)
    assert slowest_gaps_mean([(0.01, 17), (0.3, 1), (0.1, 2)]) == pytest.approx((0.3 + 0.1) / 2)
    assert slowest_gaps_mean([]) == 0.0
    # 5 gaps: ceil(0.5) = 1 gap.
    assert slowest_gaps_mean([(0.02, 4), (0.04, 1)]) == pytest.approx(0.04)
    # fractional counts: 2.5 gaps of 0.2 and 7.5 of 0.1 → k = 1.
    assert slowest_gaps_mean([(0.2, 2.5), (0.1, 7.5)]) == pytest.approx(0.2)


def test_attainment_counts_rejected_as_misses() -> None:
    """4 requests: one OK, one TTFT too slow, one TBT too slow, one rejected → 25%."""
    recs = [
        RequestRecord(0, 0, 10, 2, ttft_s=1.0, tbt_s=0.05),
        RequestRecord(1, 0, 10, 2, ttft_s=40.0, tbt_s=0.05),
        RequestRecord(2, 0, 10, 2, ttft_s=1.0, tbt_s=0.15),
        RequestRecord(3, 0, 10, 2, rejected=True),
    ]
    assert attainment(recs, 30.0, 0.1) == 0.25
    assert attainment(recs, 30.0, 0.2) == 0.5
    s = summarize(recs, 12.0)
    assert (s.requests, s.rejected, s.served) == (4, 1, 3)
    assert s.slo_attainment["ttft<=30,tbt<=0.1"] == 0.25
    assert s.prefill_gpu_s == 12.0
