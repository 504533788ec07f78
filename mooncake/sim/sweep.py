"""Capacity curves: SLO attainment against arrival-rate scale, and effective capacity.

Effective request capacity (definition used throughout): the highest rate scale X —
the trace replayed X times faster — at which at least ``target`` (90%) of *all*
requests are served within both the TTFT and the TBT SLO, with every tested scale
below X also passing. Rejected requests count as misses, so a system cannot raise its
capacity by refusing work. The "every lower scale passes" clause makes the number
well defined when attainment is not monotone in the rate (a lucky burst alignment at
a higher scale does not count). Capacity is reported as a scale; multiply by the
trace's base rate (requests / duration) for requests per second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mooncake.sim.config import SimConfig
from mooncake.sim.engine import simulate
from mooncake.sim.metrics import RunSummary, attainment
from mooncake.sim.trace import TraceRequest, scale_rate


def slo_label(ttft_slo_s: float, tbt_slo_s: float) -> str:
    return f"ttft<={ttft_slo_s:g},tbt<={tbt_slo_s:g}"


@dataclass
class SweepPoint:
    """One replay at one rate scale."""

    rate_scale: float
    attainment: dict[str, float]
    summary: RunSummary


@dataclass
class CapacityCurve:
    """Sweep of one configuration."""

    name: str
    points: list[SweepPoint] = field(default_factory=list)
    capacity: dict[str, float] = field(default_factory=dict)
    """SLO label -> effective capacity (rate scale; 0 when even the lowest fails)."""


def effective_capacity(points: Sequence[SweepPoint], label: str, target: float = 0.9) -> float:
    """Highest scale passing ``target`` with every lower tested scale passing too."""
    best = 0.0
    for p in sorted(points, key=lambda p: p.rate_scale):
        if p.attainment[label] < target:
            break
        best = p.rate_scale
    return best


def sweep(
    name: str,
    config: SimConfig,
    requests: Sequence[TraceRequest],
    scales: Sequence[float],
    slos: Sequence[tuple[float, float]],
    refine: int = 0,
    target: float = 0.9,
    tolerance: float = 0.02,
    on_point: Callable[[SweepPoint], None] | None = None,
) -> CapacityCurve:
    """Replay ``requests`` at each of ``scales``, then bisect ``refine`` times between
    the last passing and first failing scale of every SLO pair.

    Args:
        name: label of the curve.
        config: the cluster.
        requests: the trace at scale 1.
        scales: rate scales to try.
        slos: (TTFT SLO, TBT SLO) pairs in seconds.
        refine: bisection steps per SLO pair.
        target: attainment a scale must reach.
        tolerance: stop bisecting once the bracket is this narrow (relative).
        on_point: called after every replay (progress reporting).
    """
    labels = [slo_label(t, b) for t, b in slos]
    done: dict[float, SweepPoint] = {}

    def run(scale: float) -> SweepPoint:
        if scale not in done:
            res = simulate(config, scale_rate(requests, scale))
            att = {slo_label(t, b): attainment(res.records, t, b) for t, b in slos}
            res.summary.slo_attainment.update(att)  # the sweep's own SLO pairs too
            done[scale] = SweepPoint(scale, att, res.summary)
            if on_point is not None:
                on_point(done[scale])
        return done[scale]

    for s in sorted(scales):
        run(s)
    for label in labels:
        for _ in range(refine):
            pts = sorted(done.values(), key=lambda p: p.rate_scale)
            lo = effective_capacity(pts, label, target)
            above = [p.rate_scale for p in pts if p.rate_scale > lo]
            if lo == 0.0 or not above or above[0] - lo <= tolerance * lo:
                break
            run(round((lo + above[0]) / 2, 4))
    pts = sorted(done.values(), key=lambda p: p.rate_scale)
    return CapacityCurve(
        name, pts, {label: effective_capacity(pts, label, target) for label in labels}
    )


__all__ = ["CapacityCurve", "SweepPoint", "effective_capacity", "slo_label", "sweep"]
