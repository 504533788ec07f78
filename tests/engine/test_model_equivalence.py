"""Engine logits equal transformers' on the same checkpoint (float32, within 1e-4)."""

from __future__ import annotations

import pytest
import torch

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from tests.conftest import hf_model

CASES = {
    "llama": dict(arch="llama"),
    "llama3-rope-tied": dict(
        arch="llama",
        tie_word_embeddings=True,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        rope_theta=500000.0,
    ),
    "llama-linear-rope-bias": dict(
        arch="llama",
        attention_bias=True,
        mlp_bias=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
    "qwen2": dict(arch="qwen2"),
    "mistral-sliding": dict(arch="mistral", sliding_window=48),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_prompt_logits_match_transformers(checkpoint_factory, name):
    """Every position's logits for a 200-token prompt match transformers within 1e-4."""
    path = checkpoint_factory(f"eq-{name}", **CASES[name])
    engine = LLMEngine(EngineConfig(model=str(path), num_blocks=64))
    ids = torch.randint(0, 300, (200,), generator=torch.Generator().manual_seed(1)).tolist()
    ours = engine.prompt_logits(ids)
    with torch.no_grad():
        ref = hf_model(path)(torch.tensor([ids])).logits[0].float()
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4


def test_decode_logits_match_with_cached_prefix(tiny_llama):
    """Logits from a chunked, cached path (prefix from cache, one token at a time) equal
    transformers' full-prompt logits at those positions."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64, long_prefill_chunk=16))
    ids = torch.randint(0, 300, (70,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.no_grad():
        ref = hf_model(tiny_llama)(torch.tensor([ids])).logits[0].float()
    from mooncake.engine.scheduler import ScheduledSeq, SchedulerOutput
    from mooncake.engine.sequence import Sequence
    from mooncake.outputs import RequestMetrics
    from mooncake.sampling_params import SamplingParams

    seq = Sequence("x", None, ids, SamplingParams(), 0, engine.root_key(), RequestMetrics(0.0))
    engine.kv.allocate(seq, len(ids))
    got = []
    for start, n in [(0, 32), (32, 16), *[(p, 1) for p in range(48, 70)]]:
        out = SchedulerOutput()
        (out.decodes if n == 1 else out.prefills).append(ScheduledSeq(seq, start, n))
        got.append(engine.runner.execute(out, all_logits=True))
        seq.num_computed_tokens = start + n
    ours = torch.cat(got)
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("name", ["llama", "mistral-sliding"])
def test_last_layer_of_sampling_rows_only_equals_all_rows(checkpoint_factory, name, native):
    """A step with a decode, a prompt that samples and a chunk that does not: the logits
    computed with the last layer restricted to the two sampling rows equal those rows of
    the step computed for every token (native kernels and torch path alike)."""
    from mooncake.engine.scheduler import ScheduledSeq, SchedulerOutput
    from mooncake.engine.sequence import Sequence
    from mooncake.outputs import RequestMetrics
    from mooncake.sampling_params import SamplingParams

    path = checkpoint_factory(f"eq-{name}", **CASES[name])
    engine = LLMEngine(EngineConfig(model=str(path), num_blocks=64, native_kernels=native))
    g = torch.Generator().manual_seed(3)

    def seq(rid: str, n: int) -> Sequence:
        s = Sequence(
            rid,
            None,
            torch.randint(0, 300, (n,), generator=g).tolist(),
            SamplingParams(),
            0,
            engine.root_key(),
            RequestMetrics(0.0),
        )
        engine.kv.allocate(s, n)
        return s

    a, b, c = seq("a", 70), seq("b", 30), seq("c", 50)
    first = SchedulerOutput(prefills=[ScheduledSeq(a, 0, 69)])
    engine.runner.execute(first)
    a.num_computed_tokens = 69
    step = SchedulerOutput(
        decodes=[ScheduledSeq(a, 69, 1)], prefills=[ScheduledSeq(b, 0, 30), ScheduledSeq(c, 0, 20)]
    )
    sampled = engine.runner.execute(step)
    every = engine.runner.execute(step, all_logits=True)
    assert sampled.shape == (2, every.shape[1])
    torch.testing.assert_close(sampled, every[[0, 30]], atol=2e-5, rtol=1e-5)
