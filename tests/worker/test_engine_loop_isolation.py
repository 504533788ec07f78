"""The engine loop fails a request that cannot be sampled on its own: its waiting task
gets the error, the other requests of the batch finish as they would have."""

from __future__ import annotations

from typing import Any

import torch

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.sampling_params import SamplingParams
from mooncake.worker.engine_loop import AddRequest, EngineLoop, Watch
from tests.worker.engine_loop_doubles import RecordingChannel

GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
PROMPTS = [list(range(3, 30)), list(range(40, 47)), [9] * 33]


def test_unsampleable_request_fails_alone(tiny_llama, monkeypatch) -> None:
    """Request ``bad``'s logits turn NaN after a few steps: the loop reports it failed
    (the worker fails its task with the reason) while the three greedy requests beside
    it finish with the tokens they produce alone."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256))
    alone = [o.token_ids for o in engine.generate(PROMPTS, GREEDY)]
    import mooncake.engine.llm_engine as le

    real_sample = le.sample
    steps = {"n": 0}

    def poisoned(logits: torch.Tensor, requests: list[Any]) -> Any:
        steps["n"] += 1
        logits = logits.clone()
        for row, r in enumerate(requests):
            if r.params.seed == 99 and steps["n"] > 2:
                logits[row] = float("nan")
        return real_sample(logits, requests)

    monkeypatch.setattr(le, "sample", poisoned)
    channel = RecordingChannel()
    loop = EngineLoop(engine, channel)  # type: ignore[arg-type]
    for i, p in enumerate(PROMPTS):
        loop.add(AddRequest(f"r{i}", p, GREEDY, Watch(None)))
    loop.add(
        AddRequest(
            "bad",
            [5] * 12,
            SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, seed=99),
            Watch(None),
        )
    )
    for _ in range(100):
        if not engine.has_unfinished():
            break
        loop._step()
    states = [m for m in channel.sent if m[0] == "state"]
    finished = {rid: out.token_ids for m in states for rid, out, _ in m[2]}
    failed = dict(f for m in states for f in m[3])
    assert set(failed) == {"bad"} and "non-finite" in failed["bad"]
    assert [finished[f"r{i}"] for i in range(3)] == alone
    assert engine.pool.num_free == engine.pool.num_blocks
