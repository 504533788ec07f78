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
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        rope_theta=500000.0,
    ),
    "llama-linear-rope-bias": dict(arch="llama", attention_bias=True, mlp_bias=True, rope_scaling={"rope_type": "linear", "factor": 2.0}),
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
