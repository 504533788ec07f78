"""Cost model formulas and the online estimators."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mooncake.conductor import (
    BandwidthEstimator,
    CostModel,
    DecodeStepEstimator,
    HardwareSpec,
    ModelSpec,
    OverheadEstimator,
    PrefillTimeEstimator,
)


def test_default_llama3_70b_prefill_flops() -> None:
    """FAST'25 formula per layer a·n²·d + b·n·d², a=4, b=22, d=8192, 80 layers.
    n=1000: 80·(4·1e6·8192 + 22·1000·8192²) = 80·(3.2768e10 + 1.47639e15)."""
    cost = CostModel()
    expected = 80 * (4 * 1000**2 * 8192 + 22 * 1000 * 8192**2)
    assert cost.prefill_flops(1000) == pytest.approx(expected)
    # 8 × 312 TFLOP/s at MFU 0.5
    assert cost.prefill_time(1000) == pytest.approx(expected / (8 * 312e12 * 0.5))


def test_cached_prefix_telescopes() -> None:
    """Computing 0..k then k..n costs exactly what 0..n costs (chunked prefill and
    prefix reuse agree)."""
    cost = CostModel()
    assert cost.prefill_flops(700, 300) + cost.prefill_flops(300) == pytest.approx(
        cost.prefill_flops(700)
    )
    assert cost.prefill_flops(500, 500) == 0


def test_kv_capacity_and_transfer() -> None:
    """320 KiB per token; 640 GB × 0.9 − 141.2 GB weights = 434.8 GB → 1,326,904 tokens.
    10k tokens over 100 GB/s = 3.2768 GB / 100 GB/s = 32.768 ms."""
    cost = CostModel()
    assert cost.model.kv_bytes_per_token == 320 * 1024
    assert cost.kv_capacity_tokens() == int((640e9 * 0.9 - 70.6e9 * 2) // 327_680)
    assert cost.transfer_time(10_000) == pytest.approx(0.032768)


def test_decode_step_is_roofline(tiny_cost: CostModel) -> None:
    """Tiny model: compute 2·batch/1000 s beats memory (~1e-9 s); a 500-token chunk adds
    0.5 s of compute."""
    assert tiny_cost.decode_step_time(3, 10) == pytest.approx(0.006)
    assert tiny_cost.decode_step_time(1, 0, prefill_flops=500) == pytest.approx(0.502)
    assert tiny_cost.decode_step_time(0, 0) == 0.0


def test_estimator_starts_at_formula_and_learns(tiny_cost: CostModel) -> None:
    """Starts at (n−c)/1000; after observing a machine twice as slow it predicts ~2×."""
    est = PrefillTimeEstimator(tiny_cost, refit_every=1)
    assert est.estimate(1000, 200) == pytest.approx(0.8)
    assert est.estimate(100, 100) == 0.0
    for n in range(1000, 20000, 500):
        est.observe(n, 0, 2 * n / 1000)
    assert est.estimate(5000, 1000) == pytest.approx(8.0, rel=0.05)


def test_decode_step_estimator_starts_at_the_roofline_and_learns(tiny_cost: CostModel) -> None:
    """Tiny model, memory ~free: the prior's linearisation is 2 ms per sequence (what
    the compute-bound roofline gives). After 200 steps of an engine with 10 ms per step,
    1 ms per sequence and 1 µs per KV token, the fit recovers those three numbers (within the
    prior's 10% pull)."""
    est = DecodeStepEstimator(tiny_cost)
    assert est.estimate(3, 10) == pytest.approx(tiny_cost.decode_step_time(3, 10), rel=1e-4)
    assert est.estimate(0, 0) == 0.0
    for i in range(200):
        batch, kv = 1 + i % 16, 100 * (1 + i % 16) + 37 * i
        est.observe(batch, kv, 0.010 + 0.001 * batch + 1e-6 * kv)
    per_step, per_seq, per_kv = est.coefficients()
    assert per_step == pytest.approx(0.010, rel=0.1)
    assert per_seq == pytest.approx(0.001, rel=0.1)
    assert per_kv == pytest.approx(1e-6, rel=0.1)
    assert est.num_observations == 200


def test_decode_fit_replaces_the_roofline(tiny_cost: CostModel) -> None:
    """A cost model carrying a decode fit times a step as per_step + per_seq·batch +
    per_kv·kv, plus a riding prefill chunk's FLOPs at the prior's rate (1 ms/FLOP)."""
    cost = replace(tiny_cost, decode_fit=(0.01, 0.002, 1e-5))
    assert cost.decode_step_time(4, 1000) == pytest.approx(0.01 + 0.008 + 0.01)
    assert cost.decode_step_time(1, 0, prefill_flops=500) == pytest.approx(0.012 + 0.5)
    assert cost.decode_step_time(0, 0) == 0.0
    # An estimator built on it starts at the fit.
    assert DecodeStepEstimator(cost).coefficients() == pytest.approx((0.01, 0.002, 1e-5))


def test_overhead_estimator_is_the_median_of_recent_samples() -> None:
    """Median of the last 3 samples: an outlier does not move it; a negative sample
    (clock skew) counts as 0; nothing observed is None."""
    est = OverheadEstimator(window=3)
    assert est.seconds is None
    for x in (0.5, 0.01, 0.02, 9.0):
        est.observe(x)
    assert est.seconds == pytest.approx(0.02) and est.num_observations == 4
    est.observe(-1.0)
    assert est.seconds == pytest.approx(0.02)


def test_bandwidth_estimator_moves_toward_measurements() -> None:
    """EWMA α=0.5 from 100 B/s after one 50 B/s sample → 75 B/s."""
    bw = BandwidthEstimator(100.0, alpha=0.5)
    bw.observe(50.0, 1.0)
    assert bw.bandwidth == pytest.approx(75.0)
    assert bw.transfer_time(150.0) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (ModelSpec, {"num_layers": 0}, "num_layers"),
        (HardwareSpec, {"mfu": 1.5}, "mfu"),
        (HardwareSpec, {"rdma_bandwidth": 0}, "rdma_bandwidth"),
        (HardwareSpec, {"request_overhead_s": -0.1}, "request_overhead_s"),
    ],
)
def test_specs_validate(cls: type, kwargs: dict[str, float], field: str) -> None:
    """Bad values raise ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_prefill_step_fit_counts_the_fixed_cost_once_per_step(tiny_cost: CostModel) -> None:
    """Steps of one or two prompt chunks costing 0.2 s per step + 1 ms per token: fitted
    on the chunks' summed features with the intercept once per step, the estimator
    recovers both terms (the intercept held a little toward its prior of 0);
    CostModel.prefill_step_time with that fit charges the 0.2 s once for a two-chunk
    step."""
    from dataclasses import replace

    from mooncake.conductor.cost_model import PrefillTimeEstimator

    est = PrefillTimeEstimator(tiny_cost, refit_every=1)
    for i in range(200):
        chunks = [(500 + 13 * i, 0), (2000, 2000 - 7 * i - 1)][: 1 + i % 2]
        est.observe_step(chunks, 0.2 + sum(e - s for e, s in chunks) / 1000)
    per_attn, per_linear, fixed = est.coefficients()
    assert fixed == pytest.approx(0.2, rel=0.25) and per_linear == pytest.approx(1e-3, rel=0.05)
    cost = replace(tiny_cost, prefill_step_fit=(per_attn, per_linear, fixed))
    assert cost.prefill_step_time([(1000, 0), (3000, 2000)]) == pytest.approx(2.2, rel=0.03)
    assert tiny_cost.prefill_step_time([(1000, 0), (3000, 2000)]) == pytest.approx(2.0)


def test_a_negative_decode_fit_term_does_not_shorten_steps(tiny_cost: CostModel) -> None:
    """A decode fit whose KV slope came out negative (noise of a fit on few, small
    batches) times a step of 2 sequences over a million KV tokens at its positive
    terms only (3 + 2·1 ms), not at 0 s (which would stall a replay); the vectorised
    form gives the same float."""
    from dataclasses import replace

    import numpy as np

    cost = replace(tiny_cost, decode_fit=(0.003, 0.001, -1e-7))
    assert cost.decode_step_time(2, 10**6) == pytest.approx(0.005)
    many = cost.decode_step_times(np.array([2]), np.array([10**6]))
    assert float(many[0]) == cost.decode_step_time(2, 10**6)
