"""Core lending on a real cluster (``WorkerConfig.cpu_core_lending``): 1 prefill + 1
decode worker, each engine pinned to a CPU of its own, with the tiny checkpoint."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

import mooncake
from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.worker.config import WorkerConfig

GREEDY = mooncake.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


@pytest.mark.cluster
def test_each_engine_borrows_the_idle_ones_core_and_outputs_are_unchanged(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """Three fresh 96-token prompts, one at a time, prefilled in 16-token chunks. Each
    engine is pinned to its own CPU (``cpu_threads_bind="auto"``); with lending on, the
    prefill engine computes on both CPUs while the decode engine is idle, and the decode
    engine on both once the prefill engine is idle. Greedy outputs equal the in-process
    engine's; both engines ran steps with a borrowed core and rebound their threads only
    when the set changed (far fewer rebinds than steps)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    ec = EngineConfig(num_blocks=128, long_prefill_chunk=16, cpu_threads_bind="auto")
    ref = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=128))
    rng = random.Random(5)
    with mooncake.LLM(
        str(tiny_llama),
        engine_config=ec,
        worker_config=WorkerConfig(cpu_core_lending=True, store_root=str(tmp_path)),
        dashboard_address=None,
    ) as llm:
        for _ in range(3):
            prompt = [rng.randrange(300) for _ in range(96)]
            out = llm.generate([prompt], GREEDY, use_tqdm=False)[0]
            assert out.token_ids == ref.generate([prompt], GREEDY)[0].token_ids
        lending = {
            "+".join(llm.workers[w]["roles"]): s["core_lending"]
            for w, s in llm.worker_stats().items()
        }
    for role in ("prefill", "decode"):
        c = lending[role]
        assert len(c["own"]) == 1, c
        assert c["borrowed_steps"] > 0, (role, c)
        assert c["rebinds"] < c["steps"], (role, c)
    assert lending["prefill"]["own"] != lending["decode"]["own"]
