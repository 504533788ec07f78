"""Greedy continuations equal transformers' for many prompts run as one continuous batch:
plain, with prefix-cache hits, with chunked prefill, under preemption, and after a KV
export -> import into a second engine."""

from __future__ import annotations

import random

import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from tests.conftest import hf_greedy, hf_model

# The reference continuations (20 prompts x 64 tokens through transformers' generate) take
# most of a minute on two cores; tests/engine/test_model_equivalence.py keeps a quick
# equivalence check in the fast lane.
pytestmark = pytest.mark.slow

N_PROMPTS = 20
MAX_NEW = 64
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)


def _prompts() -> list[list[int]]:
    """Mixed lengths 1..300; half share a 100-token system prefix."""
    rng = random.Random(7)
    shared = [rng.randrange(300) for _ in range(100)]
    out = []
    for i in range(N_PROMPTS):
        n = rng.choice([1, 5, 17, 33, 64, 90, 150, 200])
        body = [rng.randrange(300) for _ in range(n)]
        out.append(shared + body if i % 2 else body)
    return out


@pytest.fixture(scope="module")
def expected(tiny_llama) -> list[list[int]]:
    model = hf_model(tiny_llama)
    return [hf_greedy(model, p, MAX_NEW) for p in _prompts()]


def _engine(path, **kw) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(path), **{"num_blocks": 512, **kw}))


def test_one_continuous_batch_matches_transformers(tiny_llama, expected):
    """20 prompts submitted together, batched decode: identical 64-token continuations."""
    engine = _engine(tiny_llama, enable_prefix_caching=False)
    outs = engine.generate(_prompts(), GREEDY)
    assert [o.token_ids for o in outs] == expected
    assert all(o.finish_reason == "length" for o in outs)


def test_with_prefix_cache_hits(tiny_llama, expected):
    """Second pass hits the cache for every full prompt block; outputs unchanged."""
    engine = _engine(tiny_llama)
    first = engine.generate(_prompts(), GREEDY)
    computed_before = engine.stats.num_prompt_tokens_computed
    second = engine.generate(_prompts(), GREEDY)
    assert [o.token_ids for o in first] == expected
    assert [o.token_ids for o in second] == expected
    assert sum(o.num_cached_tokens for o in second) > 0.8 * sum(len(p) for p in _prompts())
    recomputed = engine.stats.num_prompt_tokens_computed - computed_before
    assert recomputed == sum(len(p) - o.num_cached_tokens for p, o in zip(_prompts(), second))


def test_with_chunked_prefill_and_small_budget(tiny_llama, expected):
    """Chunks of 24 tokens and a 64-token step budget: prefill spans
    many steps, mixed with decodes."""
    engine = _engine(tiny_llama, long_prefill_chunk=24, max_num_batched_tokens=64)
    outs = engine.generate(_prompts(), GREEDY)
    assert [o.token_ids for o in outs] == expected


def test_with_bounded_prefill_tokens_per_step(tiny_llama, expected):
    """At most 40 prefill tokens a step beside the decodes (whole prompts admitted in
    arrival order while they fit, longer ones chunked): identical continuations."""
    engine = _engine(tiny_llama, max_prefill_tokens_per_step=40)
    outs = engine.generate(_prompts(), GREEDY)
    assert [o.token_ids for o in outs] == expected


def test_under_preemption(tiny_llama, expected):
    """A pool too small for all sequences forces preemption and recompute; outputs unchanged."""
    engine = _engine(tiny_llama, num_blocks=40, enable_prefix_caching=True)
    outs = engine.generate(_prompts(), GREEDY)
    assert engine.stats.num_preemptions > 0
    assert [o.token_ids for o in outs] == expected


def test_export_import_into_second_engine(tiny_llama, expected):
    """Prefill on engine A (1 token), export its KV, import into engine B, continue: identical."""
    a = _engine(tiny_llama)
    b = _engine(tiny_llama)
    prompts = _prompts()
    rids = [
        a.add_request(
            None, p, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True), keep_kv=True
        )
        for p in prompts
    ]
    while a.has_unfinished():
        a.step()
    for rid, p in zip(rids, prompts):
        exp = a.export_kv(rid)
        assert exp.num_tokens == len(p) and len(exp.next_token_ids) == 1
        b.add_request(
            rid,
            p + exp.next_token_ids,
            SamplingParams(temperature=0.0, max_tokens=MAX_NEW - 1, ignore_eos=True),
            kv=exp,
        )
    done = {}
    while b.has_unfinished():
        for o in b.step():
            if o.finished:
                done[o.request_id] = o
    # only the token sampled on A is computed on B; every prompt token came from the import
    assert b.stats.num_prompt_tokens_computed == len(prompts)
    assert b.stats.num_prompt_tokens_cached == sum(len(p) for p in prompts)
    got = [[a_next, *done[r].token_ids] for r, a_next in zip(rids, [p[0] for p in expected])]
    assert got == expected
    assert a.pool.num_free == a.pool.num_blocks  # held blocks were released by export


def test_prior_output_ids_continue_seeded_sampling(tiny_llama):
    """Prefill on A samples token 0; B continues with prior_output_ids=[t0] and the
    imported KV: the seeded sample stream and the output equal one engine's."""
    params = SamplingParams(temperature=1.0, seed=11, max_tokens=20, ignore_eos=True)
    prompt = _prompts()[3]
    whole = _engine(tiny_llama).generate([prompt], params)[0]
    a = _engine(tiny_llama)
    a.add_request(
        "r",
        prompt,
        SamplingParams(temperature=1.0, seed=11, max_tokens=1, ignore_eos=True),
        keep_kv=True,
    )
    while a.has_unfinished():
        a.step()
    exp = a.export_kv("r")
    b = _engine(tiny_llama)
    b.add_request("r", prompt, params, kv=exp, prior_output_ids=exp.next_token_ids)
    last = None
    while b.has_unfinished():
        for o in b.step():
            last = o
    assert last is not None and last.token_ids == whole.token_ids and last.text == whole.text


def test_cached_blocks_move_between_engines(tiny_llama):
    """Blocks exported from A's prefix cache and imported into B give B a prefix hit."""
    a, b = _engine(tiny_llama), _engine(tiny_llama)
    prompt = _prompts()[1]
    a.generate([prompt], SamplingParams(temperature=0.0, max_tokens=1))
    from mooncake.kvcache import block_keys

    keys = block_keys(prompt, 16, a.root_key())
    blocks = a.export_cached_blocks(keys, prompt)
    assert len(blocks) == len(keys)
    assert b.import_cached_blocks(blocks) == len(keys)
    out = b.generate([prompt], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))[0]
    assert out.num_cached_tokens == min(len(keys), (len(prompt) - 1) // 16) * 16


def test_resumed_request_recomputes_in_one_chunk(tiny_llama):
    """A request resumed on a fresh engine (its generated tokens' KV was lost with its
    decode worker) runs prompt + tokens so far as ONE prefill chunk, and only what its
    prefix cache lacks: the next token comes from the first step, and a second resumed
    request over the same tokens recomputes only what is past the blocks the first left
    in the cache (prompt and generated tokens alike)."""
    prompt = _prompts()[5]  # 100-token shared prefix + body
    params = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
    whole = _engine(tiny_llama).generate([prompt], params)[0].token_ids
    so_far = whole[:40]
    eng = _engine(tiny_llama)
    eng.add_request("a", prompt, params, prior_output_ids=so_far)
    first = eng.step()
    n = len(prompt) + len(so_far)
    assert eng.last_step.prefill_tokens == n and eng.last_step.chunks == ((n, 0),)
    assert [o.token_ids[-1] for o in first] == [whole[40]]
    while eng.has_unfinished():
        eng.step()
    bs = eng.config.block_size
    eng.add_request("b", prompt, params, prior_output_ids=so_far[:10])
    eng.step()
    m = len(prompt) + 10
    cached = m // bs * bs  # full blocks of "a"'s prompt + its first generated tokens
    assert eng.last_step.chunks == ((m, cached),)
