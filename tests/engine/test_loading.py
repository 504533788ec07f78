"""Checkpoint loading: sharded safetensors, half precision, the built-in default model,
tokenizer and chat template."""

from __future__ import annotations

import pytest
import torch

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from mooncake.engine.default_model import NAME


def test_sharded_checkpoint_loads_identically(tiny_llama, checkpoint_factory):
    """A checkpoint saved in 30 KB shards (with its index) gives the same logits."""
    sharded = checkpoint_factory("tiny-llama-sharded", max_shard_size="30KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    ids = list(range(1, 40))
    a = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=8)).prompt_logits(ids)
    b = LLMEngine(EngineConfig(model=str(sharded), num_blocks=8)).prompt_logits(ids)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_close_to_float32(tiny_llama, dtype):
    """bf16/fp16 runs and stays close to fp32 logits; KV export carries the dtype."""
    ids = list(range(1, 40))
    ref = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=8)).prompt_logits(ids)
    eng = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=8, dtype=dtype))
    got = eng.prompt_logits(ids)
    assert (got - ref).abs().max().item() < 0.05
    eng.add_request("r", ids, SamplingParams(temperature=0.0, max_tokens=1), keep_kv=True)
    while eng.has_unfinished():
        eng.step()
    exp = eng.export_kv("r")
    assert exp.spec.dtype == dtype and exp.blocks[0].data.dtype.itemsize == 2


def test_default_model_is_generated_and_labelled():
    """No model given: the built-in random-weight model loads, tokenizes any UTF-8 text
    and generates."""
    engine = LLMEngine(EngineConfig(num_blocks=64))
    assert engine.model_path.name == NAME
    assert "RANDOM WEIGHTS" in (engine.model_path / "README.md").read_text()
    tok = engine.tokenizer
    assert tok is not None
    text = "héllo, 世界 🚀\n"
    assert tok.decode(tok.encode(text)) == text
    out = engine.generate([text], SamplingParams(max_tokens=8, seed=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 8


def test_default_model_is_deterministic(tmp_path, monkeypatch):
    """Generating the default model twice gives the same fingerprint (same weights)."""
    from mooncake.engine.default_model import write_default_model
    from mooncake.engine.loader import fingerprint

    monkeypatch.setenv("MOONCAKE_CACHE", str(tmp_path / "cache"))
    write_default_model(tmp_path / "a")
    write_default_model(tmp_path / "b")
    assert fingerprint(tmp_path / "a") == fingerprint(tmp_path / "b")


def test_chat_template_and_stop_tokens():
    engine = LLMEngine(EngineConfig(num_blocks=16))
    tok = engine.tokenizer
    assert tok is not None
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|user|>\nhi\n<|assistant|>\n"
    assert 257 in engine.eos_token_ids


def test_eos_stops_generation(tiny_llama):
    """Without ignore_eos, a sampled EOS ends the request with finish_reason 'stop'."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    greedy = engine.generate(
        [[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    )[0].token_ids
    engine.eos_token_ids = frozenset({greedy[2]})
    out = engine.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=10))[0]
    assert out.token_ids == greedy[: greedy.index(greedy[2]) + 1] and out.finish_reason == "stop"


def test_incremental_detokenizer_never_splits_characters():
    """Streaming a multi-byte text byte by byte yields whole characters only."""
    from mooncake.engine import IncrementalDetokenizer

    engine = LLMEngine(EngineConfig(num_blocks=8))
    tok = engine.tokenizer
    assert tok is not None
    text = "añ世🚀b" * 3
    ids = tok.encode(text, add_special_tokens=False)
    det = IncrementalDetokenizer(tok)
    pieces = [det.add([i]) for i in ids]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
