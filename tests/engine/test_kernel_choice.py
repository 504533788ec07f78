"""The per-CPU choice between each native kernel group and torch's ops: measured once,
cached beside the library, and whatever it picks the engine's output stays exact."""

from __future__ import annotations

import json

import pytest
import torch

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams, kernel_choice
from mooncake.engine.kernel_choice import KernelChoice, KernelShape, choose
from mooncake.engine.native import kernels
from tests.conftest import hf_greedy, hf_model

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
    model = hf_model(tiny_llama)
    with torch.inference_mode():
        assert got == [hf_greedy(model, p, 24) for p in prompts]
