"""Summary of a benchmark run, computed as ``vllm bench serve`` does.

TTFT, TPOT (per request: time after the first token over the remaining tokens), ITL
(every gap between streamed chunks) and E2E latency over successful requests; request
and token throughput over the wall time of the run; goodput: successful requests per
second that met every SLO given (``ttft``, ``tpot``, ``e2el`` in milliseconds).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from mooncake.bench.request import RequestResult

GOODPUT_METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(items: Sequence[str] | None) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` -> ``{"ttft": 500.0, "tpot": 50.0}`` (milliseconds)."""
    slos: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition(":")
        if not sep or name not in GOODPUT_METRICS:
            raise ValueError(
                f"goodput: expected NAME:MS with NAME in {GOODPUT_METRICS}, got {item!r}"
            )
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"goodput: {item!r} is not a number of milliseconds") from None
        if ms <= 0:
            raise ValueError(f"goodput: {item!r} must be positive")
        slos[name] = ms
    return slos


def percentile(values: Sequence[float], q: float) -> float:
    """``numpy.percentile`` (linear interpolation, as ``vllm bench serve`` reports), ``q``
    in [0, 100]; 0.0 for no values (a run where every request failed)."""
    if not values:
        return 0.0
    return float(np.percentile(values, q))


def _stats(name: str, values_s: Sequence[float], percentiles: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in values_s]
    out = {
        f"mean_{name}_ms": statistics.fmean(ms) if ms else 0.0,
        f"median_{name}_ms": statistics.median(ms) if ms else 0.0,
        f"std_{name}_ms": statistics.pstdev(ms) if ms else 0.0,
    }
    for p in percentiles:
        out[f"p{p:g}_{name}_ms"] = percentile(ms, p)
    return out


def meets(r: RequestResult, slos_ms: dict[str, float]) -> bool:
    """The request succeeded and met every SLO."""
    if not r.success:
        return False
    got = {"ttft": r.ttft_s, "tpot": r.tpot_s, "e2el": r.latency_s}
    return all(got[k] * 1000.0 <= v for k, v in slos_ms.items())


def summarize(
    results: Sequence[RequestResult],
    duration_s: float,
    slos_ms: dict[str, float] | None = None,
    percentiles: Sequence[float] = (50, 90, 99),
) -> dict[str, Any]:
    """All the numbers of one run as a flat dict (vLLM's key names where they exist)."""
    ok = [r for r in results if r.success]
    dur = max(duration_s, 1e-9)
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    cached = [r.cached_tokens for r in ok if r.cached_tokens is not None]
    out: dict[str, Any] = {
        "duration": duration_s,
        "num_prompts": len(results),
        "completed": len(ok),
        "rejected": sum(r.rejected for r in results),
        "failed": sum(not r.success and not r.rejected for r in results),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "cached_prompt_tokens": sum(cached) if cached else None,
        "request_throughput": len(ok) / dur,
        "output_throughput": total_out / dur,
        "total_token_throughput": (total_in + total_out) / dur,
        "request_goodput": None,
    }
    if slos_ms:
        out["request_goodput"] = sum(meets(r, slos_ms) for r in results) / dur
        out["goodput_slos_ms"] = dict(slos_ms)
    out.update(_stats("ttft", [r.ttft_s for r in ok], percentiles))
    out.update(_stats("tpot", [r.tpot_s for r in ok if r.output_tokens > 1], percentiles))
    out.update(_stats("itl", [x for r in ok for x in r.itl_s], percentiles))
    out.update(_stats("e2el", [r.latency_s for r in ok], percentiles))
    return out


def format_table(summary: dict[str, Any], percentiles: Sequence[float] = (50, 90, 99)) -> str:
    """The human-readable result block."""
    lines = ["{s:{c}^60}".format(s=" Serving Benchmark Result ", c="=")]

    def row(label: str, value: Any, fmt: str = "{:<10.2f}") -> None:
        lines.append(f"{label:<44}" + (fmt.format(value) if value is not None else "n/a"))

    row("Successful requests:", summary["completed"], "{:<10}")
    row("Rejected requests (429):", summary["rejected"], "{:<10}")
    row("Failed requests:", summary["failed"], "{:<10}")
    row("Benchmark duration (s):", summary["duration"])
    row("Total input tokens:", summary["total_input_tokens"], "{:<10}")
    row("Total generated tokens:", summary["total_output_tokens"], "{:<10}")
    if summary.get("cached_prompt_tokens") is not None:
        row("Cached prompt tokens (server usage):", summary["cached_prompt_tokens"], "{:<10}")
    row("Request throughput (req/s):", summary["request_throughput"])
    if summary.get("request_goodput") is not None:
        row("Request goodput (req/s):", summary["request_goodput"])
    row("Output token throughput (tok/s):", summary["output_throughput"])
    row("Total token throughput (tok/s):", summary["total_token_throughput"])
    for name, title in (
        ("ttft", "Time to First Token"),
        ("tpot", "Time per Output Token (excl. 1st token)"),
        ("itl", "Inter-token Latency"),
        ("e2el", "End-to-end Latency"),
    ):
        lines.append("{s:{c}^60}".format(s=f" {title} ", c="-"))
        row(f"Mean {name.upper()} (ms):", summary[f"mean_{name}_ms"])
        row(f"Median {name.upper()} (ms):", summary[f"median_{name}_ms"])
        for p in percentiles:
            row(f"P{p:g} {name.upper()} (ms):", summary[f"p{p:g}_{name}_ms"])
    lines.append("=" * 60)
    return "\n".join(lines)


__all__ = ["GOODPUT_METRICS", "format_table", "meets", "parse_goodput", "percentile", "summarize"]
