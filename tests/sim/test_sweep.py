"""Effective capacity from a sweep."""

from __future__ import annotations

from mooncake.conductor import ConductorConfig, CostModel
from mooncake.sim import SimConfig, make_request
from mooncake.sim.metrics import RunSummary
from mooncake.sim.sweep import SweepPoint, effective_capacity, sweep


def point(scale: float, att: float) -> SweepPoint:
    summary = RunSummary(1, 0, 1, *([0.0] * 8), 0.0, 0.0, 0.0)
    return SweepPoint(scale, {"x": att}, summary)


def test_capacity_is_last_scale_before_first_failure() -> None:
    """Attainment 0.99, 0.95, 0.85, 0.92 at 1, 2, 3, 4 → capacity 2 (scale 4 passing
    after 3 failed does not count)."""
    pts = [point(1, 0.99), point(2, 0.95), point(3, 0.85), point(4, 0.92)]
    assert effective_capacity(pts, "x") == 2
    assert effective_capacity([point(1, 0.5)], "x") == 0.0


def test_sweep_finds_the_knee(tiny_cost: CostModel) -> None:
    """1P+1D, 20 requests of 1000 tokens (1 s prefill each) arriving 2 s apart at scale
    1. TTFT SLO 1.5 s: at scale s the gap is 2/s s, so queueing starts once 2/s < 1
    and TTFT grows by (1 − 2/s) per request. Scales 1 and 1.5 pass; 4 fails; bisection
    between 1.5 and 4 lands in (1.5, 4)."""
    reqs = [make_request(i, 2.0 * i, 1000, 1) for i in range(20)]
    cfg = SimConfig(
        prefill_instances=1,
        decode_instances=1,
        cost=tiny_cost,
        conductor=ConductorConfig(prefill_policy="load_balancing"),
    )
    curve = sweep("t", cfg, reqs, [1.0, 1.5, 4.0], [(1.5, 0.1)], refine=2)
    cap = curve.capacity["ttft<=1.5,tbt<=0.1"]
    assert 1.5 <= cap < 4.0
    assert len(curve.points) == 5
