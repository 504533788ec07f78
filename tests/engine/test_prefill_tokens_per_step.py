"""``EngineConfig.max_prefill_tokens_per_step``: requests resumed together (a lost decode
worker's streams) are recomputed whole, one or a few per step in arrival order, beside
decodes that keep stepping; without the bound they all share one long step. The greedy
output is the same either way."""

from __future__ import annotations

import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from mooncake.engine.kv_cache_manager import KVCacheManager
from mooncake.engine.scheduler import Scheduler, SchedulerOutput
from mooncake.engine.sequence import Sequence
from mooncake.kvcache import BlockPool
from mooncake.outputs import RequestMetrics

RUNNING = 8
"""Decode streams already running on the worker."""


def _seq(rid: str, num_tokens: int, token: int) -> Sequence:
    return Sequence(
        rid, None, [token] * num_tokens, SamplingParams(), 0, b"r" * 16, RequestMetrics(0.0)
    )


def _step(s: Scheduler) -> tuple[SchedulerOutput, list[str]]:
    """One step; every sequence that reaches its end samples token 0. Returns the step
    and the ids of the sequences that sampled."""
    out = s.schedule()
    sampled = [x.seq for x in (*out.decodes, *out.prefills) if x.samples]
    s.update(out)
    for seq in sampled:
        seq.token_ids.append(0)
    return out, [seq.request_id for seq in sampled]


def _run(cap: int | None, resumed: list[int]) -> tuple[list[int], list[SchedulerOutput]]:
    """RUNNING streams decoding, then one resumed request per entry of ``resumed`` (its
    tokens to recompute) arrives at once. Returns the step at which each resumed request
    got its first token, and every step's output until the last did."""
    cfg = EngineConfig(max_prefill_tokens_per_step=cap, enable_prefix_caching=False)
    s = Scheduler(cfg, KVCacheManager(BlockPool(4096, enable_caching=False), 16))
    streams = [_seq(f"d{i}", 100, i + 1) for i in range(RUNNING)]
    for q in streams:
        s.add(q)
    for _ in range(100):
        if not s.waiting and all(q.num_tokens - q.num_computed_tokens == 1 for q in streams):
            break
        _step(s)
    moved = [_seq(f"r{j}", m, 100 + j) for j, m in enumerate(resumed)]
    for q in moved:
        s.add(q)
    first: dict[str, int] = {}
    steps: list[SchedulerOutput] = []
    while len(first) < len(moved) and len(steps) < 100:
        out, sampled = _step(s)
        steps.append(out)
        for rid in sampled:
            if rid.startswith("r"):
                first.setdefault(rid, len(steps))
    return [first.get(q.request_id, -1) for q in moved], steps


def _chunk_tokens(out: SchedulerOutput) -> int:
    return sum(x.num_tokens for x in out.prefills)


def test_unbounded_recomputes_every_resumed_request_in_one_step():
    """Without the bound (the default), 4 resumed requests of 280 tokens share one
    1,120-token step: none has a token before all are recomputed."""
    first, steps = _run(None, [280] * 4)
    assert first == [1, 1, 1, 1]
    assert _chunk_tokens(steps[0]) == 1120


def test_bounded_resumed_requests_get_first_tokens_in_successive_steps():
    """With a 512-token bound, the same 4 requests are recomputed whole, one per step in
    arrival order (a second would not fit whole): each gets its first token a step after
    the one before, every step's recompute stays within the bound, and the running
    streams decode in every step."""
    first, steps = _run(512, [280] * 4)
    assert first == [1, 2, 3, 4]
    for out in steps:
        assert _chunk_tokens(out) <= 512
        assert len(out.decodes) >= RUNNING


def test_bounded_packs_small_requests_and_chunks_a_long_one():
    """Requests that fit together share a step; one longer than the bound is cut into
    chunks (starting in what the step has left), so no step exceeds the bound and the
    order of first tokens follows arrival."""
    first, steps = _run(256, [100, 100, 600, 50])
    assert first[:2] == [1, 1]
    assert first[2] > 1 and first[3] >= first[2]
    assert first == sorted(first)
    assert max(_chunk_tokens(out) for out in steps) <= 256
    assert all(len(out.decodes) >= RUNNING for out in steps)


def test_config_rejects_a_non_positive_bound():
    """A bound of 0 is a configuration error naming the field."""
    with pytest.raises(ValueError, match="max_prefill_tokens_per_step"):
        EngineConfig(max_prefill_tokens_per_step=0)


def test_greedy_output_unchanged_by_the_bound(tiny_llama):
    """Running streams plus requests resumed with tokens generated elsewhere (recompute
    of prompt + those tokens) and one admitted from an imported KV (its tokens past the
    import recomputed): the greedy continuations with a 40-token bound (recomputes cut
    into chunks, spread over steps) equal the unbounded engine's."""
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = [[(7 * i + j) % 250 + 1 for j in range(30 + 11 * i)] for i in range(6)]

    def run(cap: int | None) -> dict[str, list[int]]:
        def engine() -> LLMEngine:
            return LLMEngine(
                EngineConfig(model=str(tiny_llama), num_blocks=256, max_prefill_tokens_per_step=cap)
            )

        src = engine()
        one = SamplingParams(temperature=0.0, max_tokens=1)
        src.add_request("x", prompts[5], one, keep_kv=True)
        while src.has_unfinished():
            src.step()
        exp = src.export_kv("x")
        eng = engine()
        for i in range(3):
            eng.add_request(f"d{i}", prompts[i], params)
        for _ in range(3):
            eng.step()
        eng.add_request("r3", prompts[3], params, prior_output_ids=[5, 9, 13, 2, 7])
        eng.add_request("r4", prompts[4], params, prior_output_ids=list(range(1, 40)))
        eng.add_request("x", prompts[5] + exp.next_token_ids + [3] * 20, params, kv=exp)
        done: dict[str, list[int]] = {}
        while eng.has_unfinished():
            for o in eng.step():
                if o.finished:
                    done[o.request_id] = list(o.token_ids)
        return done

    assert run(40) == run(None)
