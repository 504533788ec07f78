"""The hand-off streamed while prefill runs (``WorkerConfig.stream_kv``), on a real
LocalCluster of 1 prefill + 1 decode worker with the tiny checkpoint."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

import mooncake
from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.transfer.config import TransferConfig
from mooncake.worker.config import WorkerConfig

pytestmark = pytest.mark.cluster

GREEDY = mooncake.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
BLOCKS = 40
CHUNK = 32
"""Prefill chunk (tokens): the 40-block prompt is computed in 20 engine steps."""


def _stream_counts(llm: mooncake.LLM) -> dict[str, Counter[str]]:
    return {
        "+".join(llm.workers[w]["roles"]): Counter(s["stream_blocks"])
        for w, s in llm.worker_stats().items()
    }


def _engine_config(**kw: Any) -> EngineConfig:
    return EngineConfig(num_blocks=256, long_prefill_chunk=CHUNK, **kw)


@pytest.mark.parametrize("same_host", [True, False], ids=["shm", "tcp"])
def test_streamed_handoff_overlaps_prefill(tiny_llama, same_host):
    """A fresh 40-block prompt, prefilled in 32-token chunks, with streaming on. Same
    host, the decode engine reads the blocks from the prefill worker's host tier as
    they appear; with ``same_host=False`` it asks the prefill worker's block server over
    TCP. Either way: greedy output equals the in-process engine's; the prefill worker
    published blocks before its prefill ended; the decode worker imported blocks before
    the prefill's first token (the transfer task fetched only what was left, and all
    40 arrived); the hand-off lease was released."""
    rng = random.Random(11)
    with mooncake.LLM(
        str(tiny_llama),
        engine_config=_engine_config(),
        worker_config=WorkerConfig(
            stream_kv=True, transfer=TransferConfig(same_host=same_host)
        ),
        dashboard_address=None,
    ) as llm:
        bs = next(iter(llm.workers.values()))["block_size"]
        # A first request warms the paths (the decode worker learns its peer).
        warm = [rng.randrange(300) for _ in range(4 * bs)]
        llm.generate([warm], GREEDY, use_tqdm=False)
        before = _stream_counts(llm)
        prompt = [rng.randrange(300) for _ in range(BLOCKS * bs)]
        out = llm.generate([prompt], GREEDY, use_tqdm=False)[0]
        after = _stream_counts(llm)
        stats = llm.worker_stats()
        leases = {
            "+".join(llm.workers[w]["roles"]): s["handoff_leases"] for w, s in stats.items()
        }
        paths = {
            "+".join(llm.workers[w]["roles"]): s["transfer_paths"] for w, s in stats.items()
        }
    ref = LLMEngine(_engine_config(model=str(tiny_llama))).generate([prompt], GREEDY)
    assert out.token_ids == ref[0].token_ids
    prefill = after["prefill"] - before["prefill"]
    decode = after["decode"] - before["decode"]
    print(prefill, decode, paths)
    assert prefill["published_during_prefill"] > 0, prefill
    assert decode["during_prefill"] > 0, decode
    assert decode["during_prefill"] + decode["after_prefill"] + decode["transfer"] == BLOCKS
    assert "miss" not in paths["decode"]
    assert ("shm" if same_host else "tcp") in paths["decode"]
    assert leases == {"prefill": 0, "decode": 0}

