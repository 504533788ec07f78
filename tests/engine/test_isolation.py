"""Request isolation: extreme sampling parameters are made safe, and a request that still
cannot be sampled fails on its own while the rest of its batch goes on."""

from __future__ import annotations

import random

import pytest
import torch

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from mooncake.engine.sampler import SampleRequest, sample


@pytest.fixture(scope="module")
def engine(tiny_llama):
    return LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256))


def _prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(300) for _ in range(n)]


GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
EXTREME_PROMPTS = [_prompt(10 + 3 * i, i) for i in range(9)]


@pytest.fixture(scope="module")
def greedy_alone(engine):
    """Each of ``EXTREME_PROMPTS``' greedy continuation, generated alone (once per module:
    every extreme case compares its batch with the same references)."""
    return [engine.generate([p], GREEDY)[0].token_ids for p in EXTREME_PROMPTS]


def _run(
    engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]
) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Step the engine to the end; (tokens of each finished request, failures)."""
    ids = [engine.add_request(f"r{i}", p, sp) for i, (p, sp) in enumerate(zip(prompts, params))]
    done: dict[str, list[int]] = {}
    failed: dict[str, str] = {}
    for _ in range(200):
        for o in engine.step():
            if o.finished:
                done[o.request_id] = list(o.token_ids)
        failed.update(engine.take_failed())
        if not engine.has_unfinished():
            break
    assert set(done) | set(failed) == set(ids)
    return done, failed


@pytest.mark.parametrize(
    "extreme",
    [
        {"temperature": 1e-300},
        {"temperature": 1.0, "top_p": 1e-300},
        {"temperature": 1e-300, "top_p": 1e-300},
    ],
)
def test_extreme_params_beside_greedy(engine, greedy_alone, extreme):
    """temperature=1e-300 (or top_p=1e-300) beside 8 greedy requests: every request
    finishes, the greedy ones exactly as they do alone, and the extreme one greedily too
    (that is what those limits mean)."""
    params = [GREEDY] * 8 + [SamplingParams(max_tokens=12, ignore_eos=True, seed=7, **extreme)]
    done, failed = _run(engine, EXTREME_PROMPTS, params)
    assert failed == {}
    for i in range(9):
        assert done[f"r{i}"] == greedy_alone[i]
    assert engine.pool.num_free == engine.pool.num_blocks


def test_tiny_temperature_is_greedy():
    """A temperature below the greedy threshold samples greedily; above it, it samples."""
    assert SamplingParams(temperature=1e-300).greedy
    assert SamplingParams(temperature=0.0).greedy
    assert not SamplingParams(temperature=0.01).greedy


def test_unsampleable_row_fails_alone():
    """A row of NaN logits gets an error; the other rows in the same call are sampled."""
    logits = torch.randn(3, 50)
    logits[1, 7] = float("nan")
    reqs = [
        SampleRequest(SamplingParams(temperature=t), seed=1, output_index=0)
        for t in (0.0, 1.0, 1.0)
    ]
    res = sample(logits, reqs)
    assert res[0].error is None and res[0].token_id == int(logits[0].argmax())
    assert res[1].error is not None and "non-finite" in res[1].error
    assert res[2].error is None and 0 <= res[2].token_id < 50


def test_failed_request_finishes_alone(engine, monkeypatch):
    """A request whose logits go bad mid-generation is finished with an error on its own
    (its blocks freed); the greedy requests beside it finish unaffected."""
    prompts = [_prompt(12 + i, 20 + i) for i in range(4)]
    alone = [engine.generate([p], GREEDY)[0].token_ids for p in prompts]
    real_sample = sample
    poisoned = {"r3"}
    rows: list[str] = []

    def poisoning_sample(logits, requests):
        # The engine passes rows in the order of its scheduled sequences; find r3's row.
        logits = logits.clone()
        for row, rid in enumerate(rows):
            if rid in poisoned:
                logits[row, 0] = float("inf") * 0  # NaN
        return real_sample(logits, requests)

    import mooncake.engine.llm_engine as le

    real_schedule = engine.scheduler.schedule

    def schedule():
        out = real_schedule()
        rows[:] = [s.seq.request_id for s in (*out.decodes, *out.prefills) if s.samples]
        return out

    monkeypatch.setattr(le, "sample", poisoning_sample)
    monkeypatch.setattr(engine.scheduler, "schedule", schedule)
    done, failed = _run(engine, prompts, [GREEDY] * 4)
    assert set(failed) == {"r3"} and "non-finite" in failed["r3"]
    for i in range(3):
        assert done[f"r{i}"] == alone[i]
    assert engine.pool.num_free == engine.pool.num_blocks


def test_generate_raises_on_failed_request(engine, monkeypatch):
    """The offline ``generate`` names the request that failed instead of waiting forever."""
    import mooncake.engine.llm_engine as le

    def nan_sample(logits, requests):
        return sample(torch.full_like(logits, float("nan")), requests)

    monkeypatch.setattr(le, "sample", nan_sample)
    with pytest.raises(RuntimeError, match="failed"):
        engine.generate([_prompt(8, 1)], GREEDY)
    assert not engine.has_unfinished()
    assert engine.pool.num_free == engine.pool.num_blocks
