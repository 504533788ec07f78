"""Which engine config a worker runs: a decode-only worker bounds its recompute per step
(``WorkerConfig.decode_prefill_tokens_per_step``); other roles run the config as given."""

from __future__ import annotations

import pytest

from mooncake.config import EngineConfig
from mooncake.worker.config import WorkerConfig, engine_config_for


def test_decode_only_worker_takes_the_bound():
    """A decode-only worker gets the worker config's bound (512 by default)."""
    ec = engine_config_for(EngineConfig(), WorkerConfig(), ["decode"])
    assert ec.max_prefill_tokens_per_step == 512


def test_prefill_and_colocated_workers_unchanged():
    """Prefill and colocated workers keep the engine config as given (no bound)."""
    for roles in (["prefill"], ["prefill", "decode"]):
        assert engine_config_for(EngineConfig(), WorkerConfig(), roles) == EngineConfig()


def test_engine_config_bound_wins_and_none_turns_it_off():
    """A bound set in the engine config is kept; a worker config of None sets none."""
    ec = EngineConfig(max_prefill_tokens_per_step=64)
    assert engine_config_for(ec, WorkerConfig(), ["decode"]).max_prefill_tokens_per_step == 64
    off = WorkerConfig(decode_prefill_tokens_per_step=None)
    assert engine_config_for(EngineConfig(), off, ["decode"]).max_prefill_tokens_per_step is None


def test_worker_config_rejects_a_non_positive_bound():
    """0 is a configuration error naming the field."""
    with pytest.raises(ValueError, match="decode_prefill_tokens_per_step"):
        WorkerConfig(decode_prefill_tokens_per_step=0)
