"""The same replay gives the same numbers in any process (``PYTHONHASHSEED`` varies
the iteration order of sets of worker names; no result may depend on it)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def write_conversations(path: Path) -> Path:
    """600 turns of 40 conversations that share a 2-block prefix; prefixes grow by 1–3
    blocks per turn. With small per-instance caches, hot prefixes are replicated on
    several prefill instances, so Algorithm 1 meets equally long prefixes often and the
    choice of fetch source changes later evictions."""
    rng = random.Random(7)
    convs: dict[int, list[int]] = {}
    lines = []
    for i in range(600):
        c = rng.randrange(40)
        hist = convs.setdefault(c, [0, 1, 1000 + c]) + [
            10_000 + i * 10 + j for j in range(rng.randrange(1, 4))
        ]
        convs[c] = hist
        rec = {
            "timestamp": 250 * i,
            "input_length": 512 * len(hist) - 100,
            "output_length": rng.randrange(5, 400),
            "hash_ids": hist,
        }
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


def replay(trace: Path, out: Path, seed: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "mooncake.sim",
        "--trace",
        str(trace),
        "--prefill-instances",
        "8",
        "--decode-instances",
        "1",
        "--cache-blocks",
        "30",
        "--no-progress",
        "--json",
        str(out),
    ]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    data: dict[str, object] = json.loads(out.read_text())
    data.pop("wall_s", None)
    return data


def test_replay_is_identical_under_two_hash_seeds(tmp_path: Path) -> None:
    """Two processes with PYTHONHASHSEED 1 and 2 replay the same trace (Mooncake 8P+1D,
    30-block caches) and write identical JSON results (wall time aside). Before the
    index returned workers in a fixed order, the two TTFT means differed."""
    trace = write_conversations(tmp_path / "t.jsonl")
    a = replay(trace, tmp_path / "a.json", "1")
    b = replay(trace, tmp_path / "b.json", "2")
    assert a == b
