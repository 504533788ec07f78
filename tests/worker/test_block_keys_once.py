"""A request's prompt is hashed into block keys once, by the client: the spec carries
them and the worker's lookup and the engine reuse them."""

from __future__ import annotations

from pathlib import Path

import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, kv_cache_manager
from mooncake.kvcache import block_keys, root_key
from mooncake.sampling_params import SamplingParams
from mooncake.worker.messages import RequestSpec

GREEDY = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)


def test_spec_reuses_the_clients_keys() -> None:
    """The spec's keys are returned as they are; without them, or when they do not
    cover the prompt's full blocks (a spec built elsewhere), they are hashed."""
    root = root_key(0, "model", None)
    prompt = list(range(40))
    keys = block_keys(prompt, 16, root)
    spec = RequestSpec("r", prompt, GREEDY, block_keys=keys)
    assert spec.prompt_block_keys(16, root) == keys
    assert RequestSpec("r", prompt, GREEDY).prompt_block_keys(16, root) == keys
    stale = RequestSpec("r", prompt, GREEDY, block_keys=keys[:1])
    assert stale.prompt_block_keys(16, root) == keys


def test_engine_does_not_hash_a_prompt_it_was_given_keys_for(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the prompt's keys, the engine hashes none of its full blocks, and a second
    request with the same prompt finds them cached: the keys are the engine's own."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    bs = engine.config.block_size
    prompt = [(7 * i) % 250 + 3 for i in range(5 * bs + 3)]
    keys = block_keys(prompt, bs, engine.root_key(None))
    calls = 0
    real = kv_cache_manager.hash_block

    def counting(*args: object) -> object:
        nonlocal calls
        calls += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(kv_cache_manager, "hash_block", counting)
    engine.add_request("a", prompt, GREEDY, block_keys=keys)
    while engine.has_unfinished():
        engine.step()
    assert calls == 0
    engine.add_request("b", prompt, GREEDY, block_keys=keys)
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert calls == 0
    assert outs[-1].num_cached_tokens == 5 * bs
