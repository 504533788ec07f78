"""The per-CPU choice between each native kernel group and torch's ops: measured once,
cached beside the library, and whatever it picks the engine's output stays exact."""

from __future__ import annotations

import json

import pytest
import torch

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams, kernel_choice
from mooncake.engine.kernel_choice import KernelChoice, KernelShape, choose, choose_onednn_linear
from mooncake.engine.model import onednn_available
from mooncake.engine.native import kernels
from tests.conftest import hf_reference

native = kernels()
needs_native = pytest.mark.skipif(
    native is None, reason="no C compiler here: the native kernels cannot be built"
)
SHAPE = KernelShape(4, 2, 16, 64, 128, 16, 1)


@needs_native
def test_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    """First start measures every group (timings of both sides recorded); the second
    reads the cached file and measures nothing."""
    monkeypatch.setenv("MOONCAKE_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("MOONCAKE_KERNEL_TUNE", "1")
    threads = torch.get_num_threads()
    first = choose(native, SHAPE)
    assert first.timings_ms is not None
    for group in ("decode", "prefill", "elementwise"):
        assert (
            first.timings_ms[f"{group}_native_ms"] > 0 and first.timings_ms[f"{group}_torch_ms"] > 0
        )
        picked_native = (
            first.timings_ms[f"{group}_native_ms"]
            <= kernel_choice.MARGIN * first.timings_ms[f"{group}_torch_ms"]
        )
        assert getattr(first, group) == picked_native
    assert torch.get_num_threads() == threads  # measured on one thread, then restored
    [cached] = tmp_path.glob("choice-*.json")
    assert json.loads(cached.read_text())["decode"] == first.decode

    def no_measuring(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(kernel_choice, "measure", no_measuring)
    assert choose(native, SHAPE) == first


@needs_native
def test_tune_off_runs_every_kernel(monkeypatch):
    monkeypatch.setenv("MOONCAKE_KERNEL_TUNE", "0")
    assert choose(native, SHAPE) == KernelChoice.every(True)


@needs_native
@pytest.mark.parametrize(
    "pick",
    [
        KernelChoice(decode=False, prefill=True, elementwise=True),
        KernelChoice(decode=True, prefill=False, elementwise=False),
        KernelChoice.every(False),
    ],
)
def test_any_mix_of_kernels_matches_transformers(tiny_llama, monkeypatch, pick):
    """Whatever groups give way to torch (as a slower CPU's measurement would choose),
    greedy output equals transformers', with prefix-cached prompts and chunked steps."""
    monkeypatch.setattr("mooncake.engine.model_runner.choose", lambda nk, shape: pick)
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256))
    runner = engine.runner
    assert (
        runner.native_decode is not None,
        runner.native_prefill is not None,
        runner.native_elementwise is not None,
    ) == (
        pick.decode,
        pick.prefill,
        pick.elementwise,
    )
    prompts = [[(5 * i + j) % 250 for j in range(n)] for i, n in enumerate([3, 17, 40, 90])]
    prompts.append(prompts[2] + [7, 8, 9])  # shares a cached prefix
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    got = [o.token_ids for o in engine.generate(prompts, params)]
    assert got == hf_reference(tiny_llama, prompts, 24)


@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN linear")
def test_onednn_projections_match_transformers(tiny_llama, monkeypatch):
    """With every projection and the LM head through oneDNN (what the measured choice
    picks where MKL is slower, e.g. on AMD CPUs), greedy output equals transformers';
    the weights are re-laid out, not copied."""
    monkeypatch.setattr(
        "mooncake.engine.model_runner.choose_onednn_linear", lambda shapes, threads: True
    )
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256))
    layer = engine.runner.model.layers[0]
    assert layer.qkv_proj.onednn and engine.runner.model.lm_dnn
    assert layer.qkv_proj.weight_t.t().is_contiguous()  # [out, in] storage, one copy
    prompts = [[(3 * i + j) % 250 for j in range(n)] for i, n in enumerate([5, 33, 70])]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    got = [o.token_ids for o in engine.generate(prompts, params)]
    assert got == hf_reference(tiny_llama, prompts, 24)


@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN linear")
def test_onednn_choice_measured_once(tmp_path, monkeypatch):
    """The oneDNN-vs-MKL choice is measured once, then read from the cache; off when
    measuring is off."""
    monkeypatch.setenv("MOONCAKE_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("MOONCAKE_KERNEL_TUNE", "1")
    shapes = [(64, 128), (128, 64)]
    first = choose_onednn_linear(shapes, 1, reps=2)
    [cached] = tmp_path.glob("linear-*.json")
    assert json.loads(cached.read_text())["onednn"] == first
    monkeypatch.setattr(
        kernel_choice,
        "_linear_case",
        lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured again")),
    )
    assert choose_onednn_linear(shapes, 1, reps=2) == first
    monkeypatch.setenv("MOONCAKE_KERNEL_TUNE", "0")
    assert choose_onednn_linear(shapes, 1) is False
