"""Prefix caching in the engine: hits skip compute, are counted, and are isolated by
cache salt and by model."""

from __future__ import annotations

import random

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams

ONE = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)


def _prompt(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(300) for _ in range(n)]


def test_hit_skips_cached_tokens(tiny_llama):
    """A request sharing a 96-token prefix (6 full blocks) computes only its suffix."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=128))
    prefix = _prompt(96)
    first = engine.generate([prefix + _prompt(20, 1)], ONE)[0]
    assert first.num_cached_tokens == 0 and first.metrics.num_computed_prompt_tokens == 116
    second = engine.generate([prefix + _prompt(30, 2)], ONE)[0]
    assert second.num_cached_tokens == 96
    assert second.metrics.num_computed_prompt_tokens == 30


def test_fully_cached_prompt_recomputes_last_block(tiny_llama):
    """An identical 64-token prompt reuses 3 of its 4 blocks: the last token's logits are needed."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=128))
    p = _prompt(64, 3)
    a = engine.generate([p], ONE)[0]
    b = engine.generate([p], ONE)[0]
    assert b.num_cached_tokens == 48 and b.metrics.num_computed_prompt_tokens == 16
    assert a.token_ids == b.token_ids


def test_cache_salt_isolates_tenants(tiny_llama):
    """Same prompt under another cache_salt gets no hit; under the same salt it does."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=128))
    p = _prompt(80, 4)
    engine.add_request("a", p, ONE, cache_salt="tenant-a")
    while engine.has_unfinished():
        engine.step()
    engine.add_request("b", p, ONE, cache_salt="tenant-b")
    engine.add_request("c", p, ONE, cache_salt="tenant-a")
    outs = {}
    while engine.has_unfinished():
        outs.update({o.request_id: o for o in engine.step()})
    assert outs["b"].num_cached_tokens == 0
    assert outs["c"].num_cached_tokens == 64


def test_two_models_never_share_keys(checkpoint_factory, tiny_llama):
    """Engines over different weights derive different root keys for the same salt."""
    other = checkpoint_factory("tiny-llama-seed1", seed=1)
    a = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=16))
    b = LLMEngine(EngineConfig(model=str(other), num_blocks=16))
    assert a.fingerprint != b.fingerprint
    assert a.root_key() != b.root_key()


def test_events_report_stored_blocks(tiny_llama):
    """Registering full blocks emits one 'stored' event per block (for the global index)."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    engine.pool.drain_events()
    engine.generate([_prompt(40, 5)], ONE)
    events = engine.pool.drain_events()
    assert [e.kind for e in events] == ["stored", "stored"]
