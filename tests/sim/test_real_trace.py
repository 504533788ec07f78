"""Smoke replay of the first requests of the real conversation trace, when it is present
(``$MOONCAKE_TRACES`` or ``traces/`` at the repository root; docs/paper-reproduction.md
says where to get it); skipped otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mooncake.conductor import ConductorConfig
from mooncake.sim import SimConfig, load_trace, simulate

ROOT = Path(__file__).resolve().parents[2]
TRACE = Path(os.environ.get("MOONCAKE_TRACES") or ROOT / "traces") / "conversation_trace.jsonl"


@pytest.mark.skipif(not TRACE.exists(), reason=f"conversation trace not found at {TRACE}")
def test_first_500_requests_replay() -> None:
    """500 requests, Mooncake 8P+8D at 1×: every request is accounted for, nothing is
    rejected without admission control, prefix reuse happens (every conversation
    starts with block 0) and TTFTs are positive."""
    reqs = load_trace(TRACE, limit=500)
    res = simulate(SimConfig(conductor=ConductorConfig()), reqs)
    s = res.summary
    assert s.requests == 500 and s.served + s.rejected == 500
    assert s.rejected == 0
    assert 0.0 < s.cache_hit_rate < 1.0
    assert all(r.ttft_s is not None and r.ttft_s > 0 for r in res.records)
