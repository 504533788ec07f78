"""Sampling: seeds, top-k/top-p, stop conditions, logprobs."""

from __future__ import annotations

import random

import pytest
import torch

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from tests.conftest import hf_model


@pytest.fixture(scope="module")
def engine(tiny_llama):
    return LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256))


def _prompt(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(300) for _ in range(n)]


def test_seed_reproducible_regardless_of_batch(engine):
    """A seeded request samples the same tokens alone and inside a batch of others."""
    p = SamplingParams(temperature=1.0, seed=42, max_tokens=24, ignore_eos=True)
    alone = engine.generate([_prompt(30)], p)[0].token_ids
    others = SamplingParams(temperature=0.8, max_tokens=10, ignore_eos=True)
    batch = engine.generate([_prompt(50, 1), _prompt(30), _prompt(9, 2)], [others, p, others])
    assert batch[1].token_ids == alone
    different = engine.generate(
        [_prompt(30)], SamplingParams(temperature=1.0, seed=43, max_tokens=24, ignore_eos=True)
    )[0]
    assert different.token_ids != alone


def test_top_k_one_and_tiny_top_p_are_greedy(engine):
    greedy = engine.generate(
        [_prompt(20)], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    )[0].token_ids
    k1 = engine.generate(
        [_prompt(20)],
        SamplingParams(temperature=1.5, top_k=1, seed=1, max_tokens=12, ignore_eos=True),
    )[0].token_ids
    p0 = engine.generate(
        [_prompt(20)],
        SamplingParams(temperature=1.5, top_p=1e-6, seed=1, max_tokens=12, ignore_eos=True),
    )[0].token_ids
    assert greedy == k1 == p0


def test_extreme_top_p_and_temperature_are_greedy_not_nan(engine):
    """A top_p below float32's range (5e-324) and a temperature below 1e-5 (both valid
    request values) sample greedily instead of failing the engine step (NaN softmax)."""
    greedy = engine.generate(
        [_prompt(20)], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    )[0].token_ids
    tiny_p = engine.generate(
        [_prompt(20)],
        SamplingParams(temperature=1.0, top_p=5e-324, seed=1, max_tokens=6, ignore_eos=True),
    )[0].token_ids
    tiny_t = engine.generate(
        [_prompt(20)], SamplingParams(temperature=1e-300, seed=1, max_tokens=6, ignore_eos=True)
    )[0].token_ids
    assert greedy == tiny_p == tiny_t


def test_top_k_restricts_support(engine):
    """With top_k=3 every sampled token is among the 3 most likely at its position."""
    prompt = _prompt(25, 3)
    out = engine.generate(
        [prompt], SamplingParams(temperature=2.0, top_k=3, seed=5, max_tokens=10, ignore_eos=True)
    )[0]
    toks = prompt + out.token_ids
    logits = engine.prompt_logits(toks)
    for i, t in enumerate(out.token_ids):
        top3 = torch.topk(logits[len(prompt) - 1 + i], 3).indices.tolist()
        assert t in top3


def test_stop_token_ids_and_max_tokens(engine):
    greedy = engine.generate(
        [_prompt(20)], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    )[0].token_ids
    stop_at = greedy[4]
    first = greedy.index(stop_at)
    out = engine.generate(
        [_prompt(20)],
        SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, stop_token_ids=[stop_at]),
    )[0]
    assert out.token_ids == greedy[: first + 1]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop_at
    short = engine.generate(
        [_prompt(20)], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    )[0]
    assert short.token_ids == greedy[:3] and short.finish_reason == "length"


def test_min_tokens_defers_stop(engine):
    greedy = engine.generate(
        [_prompt(20)], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    )[0].token_ids
    out = engine.generate(
        [_prompt(20)],
        SamplingParams(
            temperature=0.0,
            max_tokens=12,
            ignore_eos=True,
            stop_token_ids=[greedy[0]],
            min_tokens=5,
        ),
    )[0]
    assert len(out.token_ids) >= 5


def test_logprobs_match_transformers(engine, tiny_llama):
    """Chosen-token logprobs equal log_softmax of transformers' logits; top-3 included."""
    prompt = _prompt(15, 4)
    out = engine.generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logprobs=3)
    )[0]
    lps = out.outputs[0].logprobs
    assert lps is not None and len(lps) == 5
    with torch.no_grad():
        ref = (
            hf_model(tiny_llama)(torch.tensor([prompt + out.token_ids]))
            .logits[0]
            .float()
            .log_softmax(-1)
        )
    for i, (tok, d) in enumerate(zip(out.token_ids, lps)):
        assert len(d) == 3 and tok in d  # greedy: the chosen token is the top-1
        assert abs(d[tok] - ref[len(prompt) - 1 + i, tok].item()) < 1e-4
    assert out.outputs[0].cumulative_logprob == pytest.approx(
        sum(d[t] for t, d in zip(out.token_ids, lps))
    )


def test_stop_string_truncates_text():
    """Default model (byte tokenizer): text ends before the stop string, which is removed
    (or kept with include_stop_str_in_output). Seeded sampling makes the text fixed."""
    engine = LLMEngine(EngineConfig(num_blocks=64))

    def run(**kw):
        return engine.generate(
            ["hello"], SamplingParams(temperature=1.0, seed=3, max_tokens=30, ignore_eos=True, **kw)
        )[0]

    text = run().text
    stop = next(c for c in text[3:] if c.isascii() and c.isalnum())
    cut = text.index(stop)
    out = run(stop=[stop])
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop
    assert out.text == text[:cut]
    assert run(stop=[stop], include_stop_str_in_output=True).text == text[: cut + 1]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"logprobs": 50}, "logprobs"),
        ({"n": 2}, "n"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ],
)
def test_invalid_sampling_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)
