"""Bad input gets a ValueError that names the problem; nothing is half-done."""

from __future__ import annotations

import json
import shutil

import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unknown_architecture(tiny_llama, tmp_path):
    d = _copy(tiny_llama, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported architecture"):
        LLMEngine(EngineConfig(model=str(d)))


def test_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        LLMEngine(EngineConfig(model=str(tmp_path / "nope")))


def test_missing_config(tiny_llama, tmp_path):
    d = _copy(tiny_llama, tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(ValueError, match=r"config\.json"):
        LLMEngine(EngineConfig(model=str(d)))


def test_missing_weights(tiny_llama, tmp_path):
    d = _copy(tiny_llama, tmp_path / "m")
    for f in d.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ValueError, match="safetensors"):
        LLMEngine(EngineConfig(model=str(d)))


def test_missing_tensor(tiny_llama, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _copy(tiny_llama, tmp_path / "m")
    f = next(d.glob("*.safetensors"))
    tensors = load_file(str(f))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(f))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        LLMEngine(EngineConfig(model=str(d)))


def test_prompt_longer_than_context(tiny_llama):
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=8, max_model_len=64))
    with pytest.raises(ValueError, match="context limit"):
        engine.add_request(None, list(range(64)))
    assert not engine.has_unfinished()


def test_bad_token_ids_and_empty_prompt(tiny_llama):
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=8))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.add_request(None, [1, 2, 300])
    with pytest.raises(ValueError, match="at least one token"):
        engine.add_request(None, [])
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.add_request(None, "text prompt without a tokenizer")


def test_duplicate_request_id(tiny_llama):
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=8))
    engine.add_request("x", [1, 2])
    with pytest.raises(ValueError, match="request_id"):
        engine.add_request("x", [3])


def test_generation_reaches_context_limit(tiny_llama):
    """max_tokens=None stops at the context limit with finish_reason 'length'."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=8, max_model_len=40))
    out = engine.generate(
        [list(range(30))], SamplingParams(temperature=0.0, max_tokens=None, ignore_eos=True)
    )[0]
    assert len(out.token_ids) == 10 and out.finish_reason == "length"


def test_import_from_other_model_rejected(tiny_llama, checkpoint_factory):
    a = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=16))
    b = LLMEngine(
        EngineConfig(model=str(checkpoint_factory("tiny-llama-seed1", seed=1)), num_blocks=16)
    )
    a.add_request("r", list(range(40)), SamplingParams(temperature=0.0, max_tokens=1), keep_kv=True)
    while a.has_unfinished():
        a.step()
    exp = a.export_kv("r")
    with pytest.raises(ValueError, match="fingerprint"):
        b.add_request("r", list(range(40)) + exp.next_token_ids, kv=exp)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dtype": "float64"}, "dtype"),
        ({"block_size": 0}, "block_size"),
        ({"device": "tpu"}, "device"),
        ({"max_num_seqs": 0}, "max_num_seqs"),
    ],
)
def test_bad_engine_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EngineConfig(**kwargs)


def test_engine_config_from_dict_rejects_unknown():
    with pytest.raises(ValueError, match="unknown field"):
        EngineConfig.from_dict({"block_sise": 16})


def test_abort_frees_blocks(tiny_llama):
    engine = LLMEngine(
        EngineConfig(model=str(tiny_llama), num_blocks=16, enable_prefix_caching=False)
    )
    engine.add_request("a", list(range(50)), SamplingParams(max_tokens=100, ignore_eos=True))
    engine.step()
    assert engine.pool.num_free < 16
    assert engine.abort_request("a")
    assert engine.pool.num_free == 16 and not engine.has_unfinished()
    assert not engine.abort_request("a")
