"""Per-request records and run summaries.

TBT follows FAST'25 §8: per request, the mean of its slowest 10% of token gaps.
A request meets the SLOs when it was served with TTFT ≤ the TTFT SLO and TBT ≤ the
TBT SLO; rejected requests never meet them, so SLO attainment is over all requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request."""

    index: int
    arrival_s: float
    prompt_len: int
    output_len: int
    cached_tokens: int = 0
    """Prompt tokens whose KV was reused (local or fetched)."""
    ttft_s: float | None = None
    tbt_s: float | None = None
    finish_s: float | None = None
    rejected: bool = False
    reason: str = ""
    prefill_instance: str = ""
    decode_instance: str = ""
    predicted_output_len: int = 0
    """Output tokens the Conductor assumed when placing it (0: not placed)."""
    preemptions: int = 0
    """Times its KV was freed to make room and recomputed later."""


def slowest_gaps_mean(gaps: Iterable[tuple[float, float]], fraction: float = 0.1) -> float:
    """Mean of the slowest ``fraction`` of token gaps.

    Args:
        gaps: (gap seconds, how many gaps of that length); counts may be fractional.
        fraction: share of gaps averaged (0.1 = the paper's slowest 10%).

    Returns:
        0.0 when there are no gaps.
    """
    pairs = sorted(((g, c) for g, c in gaps if c > 0), reverse=True)
    total = sum(c for _, c in pairs)
    if total <= 0:
        return 0.0
    k = max(1.0, math.ceil(fraction * total - 1e-9))
    k = min(k, total)
    acc = taken = 0.0
    for g, c in pairs:
        use = min(c, k - taken)
        acc += g * use
        taken += use
        if taken >= k - 1e-12:
            break
    return acc / taken


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass(slots=True)
class RunSummary:
    """Aggregates of one run."""

    requests: int
    rejected: int
    served: int
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    tbt_mean_s: float
    tbt_p50_s: float
    tbt_p90_s: float
    tbt_p99_s: float
    cache_hit_rate: float
    """Reused prompt tokens / prompt tokens, over served requests."""
    prefill_gpu_s: float
    """Instance-seconds of prefill compute (fetches excluded)."""
    makespan_s: float
    preemptions: int = 0
    """Preemptions (KV freed, recomputed later) over all requests."""
    output_len_mae: float = 0.0
    """Mean |predicted − actual| output tokens over finished requests (decode-load
    prediction error)."""
    output_len_bias: float = 0.0
    """Mean predicted − actual output tokens (positive: over-predicted)."""
    output_len_rel_error: float = 0.0
    """Sum of |predicted − actual| / sum of actual output tokens."""
    slo_attainment: dict[str, float] = field(default_factory=dict)
    """``"ttft<=T,tbt<=B"`` -> fraction of all requests meeting both."""


def attainment(records: Sequence[RequestRecord], ttft_slo_s: float, tbt_slo_s: float) -> float:
    """Fraction of all requests served within both SLOs (rejected count as misses)."""
    if not records:
        return 0.0
    ok = sum(
        1
        for r in records
        if not r.rejected
        and r.ttft_s is not None
        and r.tbt_s is not None
        and r.ttft_s <= ttft_slo_s
        and r.tbt_s <= tbt_slo_s
    )
    return ok / len(records)


def summarize(
    records: Sequence[RequestRecord],
    prefill_gpu_s: float,
    slos: Iterable[tuple[float, float]] = ((30.0, 0.1), (30.0, 0.2), (30.0, 0.3)),
) -> RunSummary:
    """Aggregate a run's records."""
    served = [r for r in records if not r.rejected and r.ttft_s is not None]
    ttft = [r.ttft_s for r in served if r.ttft_s is not None]
    tbt = [r.tbt_s for r in served if r.tbt_s is not None]
    prompt = sum(r.prompt_len for r in served)
    finish = [r.finish_s for r in served if r.finish_s is not None]
    checked = [r for r in served if r.finish_s is not None and r.predicted_output_len > 0]
    err = np.array([r.predicted_output_len - r.output_len for r in checked], dtype=float)
    actual = float(sum(r.output_len for r in checked))
    return RunSummary(
        requests=len(records),
        rejected=sum(1 for r in records if r.rejected),
        served=len(served),
        ttft_mean_s=float(np.mean(ttft)) if ttft else float("nan"),
        ttft_p50_s=_pct(ttft, 50),
        ttft_p90_s=_pct(ttft, 90),
        ttft_p99_s=_pct(ttft, 99),
        tbt_mean_s=float(np.mean(tbt)) if tbt else float("nan"),
        tbt_p50_s=_pct(tbt, 50),
        tbt_p90_s=_pct(tbt, 90),
        tbt_p99_s=_pct(tbt, 99),
        cache_hit_rate=sum(r.cached_tokens for r in served) / prompt if prompt else 0.0,
        prefill_gpu_s=prefill_gpu_s,
        makespan_s=max(finish) if finish else 0.0,
        preemptions=sum(r.preemptions for r in records),
        output_len_mae=float(np.mean(np.abs(err))) if len(err) else 0.0,
        output_len_bias=float(np.mean(err)) if len(err) else 0.0,
        output_len_rel_error=float(np.abs(err).sum() / actual) if actual else 0.0,
        slo_attainment={f"ttft<={t:g},tbt<={b:g}": attainment(records, t, b) for t, b in slos},
    )


__all__ = ["RequestRecord", "RunSummary", "attainment", "slowest_gaps_mean", "summarize"]
