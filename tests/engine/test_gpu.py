"""The engine on CUDA (run by ci/gpu-check; skipped without a GPU): logits and greedy
continuations equal transformers' on the same device."""

from __future__ import annotations

import random

import pytest
import torch

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from tests.conftest import hf_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def test_cuda_logits_and_greedy_match_transformers(tiny_llama):
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), device="cuda", num_blocks=256))
    model = hf_model(tiny_llama).to("cuda")
    rng = random.Random(0)
    ids = [rng.randrange(300) for _ in range(200)]
    with torch.no_grad():
        ref = model(torch.tensor([ids], device="cuda")).logits[0].float()
    assert (engine.prompt_logits(ids) - ref).abs().max().item() < 1e-3
    prompts = [[rng.randrange(300) for _ in range(rng.randrange(1, 200))] for _ in range(20)]
    outs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True))
    for p, o in zip(prompts, outs):
        with torch.no_grad():
            hf = model.generate(
                torch.tensor([p], device="cuda"),
                max_new_tokens=32,
                min_new_tokens=32,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        assert o.token_ids == hf[0, len(p) :].tolist()
