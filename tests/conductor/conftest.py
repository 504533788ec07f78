"""Fixtures: a cost model with round numbers so expectations can be done by hand.

prefill_time(n, c) = (n − c) / 1000 s; decode step = 2·batch / 1000 s (compute-bound,
HBM effectively infinite); transfer = tokens / 1e6 s.
"""

from __future__ import annotations

import pytest

from mooncake.conductor import CostModel, HardwareSpec, ModelSpec


def make_tiny_cost() -> CostModel:
    model = ModelSpec(
        num_layers=1,
        d_model=1,
        num_params=1.0,
        bytes_per_param=1.0,
        kv_bytes_per_token=1,
        attn_coef=0.0,
        linear_coef=1.0,
    )
    hw = HardwareSpec(
        peak_flops=1000.0,
        mfu=1.0,
        hbm_bandwidth=1e9,
        mbu=1.0,
        hbm_bytes=1e6,
        kv_memory_fraction=1.0,
        rdma_bandwidth=1e6,
        step_overhead_s=0.0,
    )
    return CostModel(model, hw)


@pytest.fixture
def tiny_cost() -> CostModel:
    return make_tiny_cost()
