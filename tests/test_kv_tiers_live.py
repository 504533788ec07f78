"""KV tiers in the serving path: a prefix evicted from a prefill engine's device pool is
served from the worker's host tier; without a store, KV moves by Dask RPC."""

from __future__ import annotations

import random

import pytest

import mooncake
from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.worker.config import WorkerConfig

pytestmark = pytest.mark.cluster

GREEDY = mooncake.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def _tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(300) for _ in range(n)]


def _socket_bytes(llm: mooncake.LLM) -> int:
    """KV bytes the workers sent their engines over the engine socket so far."""
    return sum(s["worker_copies"].get("channel.send", 0) for s in llm.worker_stats().values())


def test_evicted_prefix_comes_back_from_host_tier(tiny_llama):
    """A 32-block device pool forgets a 320-token prefix after other long prompts; the
    next request with that prefix still gets it cached, from the host tier, which the
    engine reads in place (no KV bytes through the worker-engine socket)."""
    with mooncake.LLM(
        str(tiny_llama), engine_config=EngineConfig(num_blocks=48), dashboard_address=None
    ) as llm:
        prefix = _tokens(320, 1)
        llm.generate([prefix + _tokens(10, 2)], GREEDY, use_tqdm=False)
        for i in range(4):  # evict it from the device pool
            llm.generate([_tokens(600, 10 + i)], GREEDY, use_tqdm=False)
        sent = _socket_bytes(llm)
        out = llm.generate([prefix + _tokens(12, 3)], GREEDY, use_tqdm=False)[0]
        assert out.num_cached_tokens == 320
        # The engine read its own worker's host tier in place: no KV crossed its socket.
        assert _socket_bytes(llm) == sent
        hits = {w: s["hit_blocks"] for w, s in llm.worker_stats().items()}
        assert sum(h.get("store", 0) for h in hits.values()) >= 20
        # Every hand-off was fetched, so every lease on it was released.
        assert all(s["handoff_leases"] == 0 for s in llm.worker_stats().values())


def test_without_store_kv_moves_by_rpc(tiny_llama):
    """enable_store=False: same outputs, decode imports every prompt token (no tail recompute)."""
    prompts = [_tokens(n, 20 + n) for n in (5, 40, 99)]
    ref = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=128)).generate(prompts, GREEDY)
    with mooncake.LLM(
        str(tiny_llama),
        engine_config=EngineConfig(num_blocks=128),
        worker_config=WorkerConfig(enable_store=False),
        dashboard_address=None,
    ) as llm:
        outs = llm.generate(prompts, GREEDY, use_tqdm=False)
        assert [o.token_ids for o in outs] == [r.token_ids for r in ref]
        stats = llm.worker_stats()
        decode = next(w for w, i in llm.workers.items() if i["roles"] == ["decode"])
        assert stats[decode]["num_prompt_tokens_computed"] == 0
        assert stats[decode]["host_blocks"] == 0
