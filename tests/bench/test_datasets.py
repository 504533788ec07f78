"""Benchmark workloads: shapes, shared prefixes, trace replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mooncake.bench.datasets import (
    mooncake_trace_dataset,
    prefix_repetition_dataset,
    random_dataset,
)


def test_random_lengths_and_ids() -> None:
    """Fixed ratio 0: every prompt has exactly input_len ids in the vocabulary range; seeded."""
    reqs = random_dataset(5, 20, 7, vocab=(16, 100), seed=3)
    assert [r.prompt_len for r in reqs] == [20] * 5 and [r.output_len for r in reqs] == [7] * 5
    assert all(16 <= t < 100 for r in reqs for t in r.prompt)
    assert reqs == random_dataset(5, 20, 7, vocab=(16, 100), seed=3)
    ranged = random_dataset(50, 20, 10, range_ratio=0.5, seed=1)
    assert {r.prompt_len for r in ranged} <= set(range(10, 31)) and len(
        {r.prompt_len for r in ranged}
    ) > 1


def test_prefix_repetition_shares_prefixes() -> None:
    """num_prompts // num_prefixes requests start with each of num_prefixes distinct prefixes."""
    reqs = prefix_repetition_dataset(12, prefix_len=10, suffix_len=4, num_prefixes=3, output_len=5)
    assert len(reqs) == 12 and all(r.prompt_len == 14 for r in reqs)
    prefixes = [tuple(r.prompt[:10]) for r in reqs]
    assert len(set(prefixes)) == 3 and all(prefixes.count(p) == 4 for p in set(prefixes))
    with pytest.raises(ValueError, match="num_prefixes"):
        prefix_repetition_dataset(2, 10, 4, 3, 5)


def _trace(tmp_path: Path) -> Path:
    rows = [
        {"timestamp": 1000, "input_length": 1200, "output_length": 100, "hash_ids": [0, 1, 2]},
        {"timestamp": 4000, "input_length": 700, "output_length": 3, "hash_ids": [0, 1]},
        {"timestamp": 7000, "input_length": 300, "output_length": 50, "hash_ids": [5]},
    ]
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_trace_replay_maps_hash_ids_to_blocks(tmp_path: Path) -> None:
    """The same hash id becomes the same token block; lengths and times
    are scaled; times start at 0."""
    reqs = mooncake_trace_dataset(_trace(tmp_path), time_scale=0.5, length_scale=1 / 32)
    block = 16  # 512 / 32
    assert [r.prompt_len for r in reqs] == [round(1200 / 32), round(700 / 32), round(300 / 32)]
    assert reqs[1].prompt == reqs[0].prompt[: reqs[1].prompt_len]  # hash ids 0, 1 shared
    assert reqs[0].prompt[:block] != reqs[2].prompt[:block]
    assert [r.output_len for r in reqs] == [3, 1, 2]
    assert [r.arrival_s for r in reqs] == [0.0, 1.5, 3.0]


def test_trace_limits(tmp_path: Path) -> None:
    """num_prompts takes the first records; max lengths cut prompts and outputs."""
    reqs = mooncake_trace_dataset(
        _trace(tmp_path), num_prompts=2, length_scale=0.25, max_input_len=100, max_output_len=10
    )
    assert (
        len(reqs) == 2
        and [r.prompt_len for r in reqs] == [100, 100]
        and [r.output_len for r in reqs] == [10, 1]
    )
    with pytest.raises(ValueError, match="length_scale"):
        mooncake_trace_dataset(_trace(tmp_path), length_scale=2.0)


def test_real_trace_prefix_sharing() -> None:
    """On the FAST'25 conversation trace every request starts with hash id 0, so every replayed
    prompt starts with the same block."""
    path = Path(__file__).resolve().parents[3] / "shared" / "traces" / "conversation_trace.jsonl"
    if not path.is_file():
        pytest.skip("FAST'25 trace not present")
    reqs = mooncake_trace_dataset(path, num_prompts=20, length_scale=1 / 32)
    assert len({tuple(r.prompt[:16]) for r in reqs}) == 1
