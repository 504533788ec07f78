"""Benchmark workloads: prompts as token ids, expected output lengths, optional arrival times.

Prompts are token ids (no tokenizer needed, exact lengths on any server that accepts
``prompt: [ids]``, as vLLM and mooncake do).

- ``random``: independent random prompts (vLLM's ``random``: lengths drawn in
  ``[len·(1-r), len·(1+r)]``).
- ``prefix-repetition``: ``num_prefixes`` shared random prefixes, each followed by a
  random suffix per request, shuffled (vLLM's ``prefix_repetition``).
- ``mooncake-trace``: replay of a FAST'25 trace (``timestamp``, ``input_length``,
  ``output_length``, ``hash_ids``). Every hash id stands for one 512-token block; the
  same id always becomes the same random token block, so requests that share a prefix
  in the trace share it here too. ``length_scale`` shrinks block, prompt and output
  lengths and ``time_scale`` the arrival times, so a trace made for a GPU cluster fits
  one CPU.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

TRACE_BLOCK_TOKENS = 512
DATASETS = ("random", "prefix-repetition", "mooncake-trace")


@dataclass(frozen=True)
class SampleRequest:
    """One request of a workload."""

    prompt: list[int]
    """Prompt token ids."""
    output_len: int
    """Tokens to generate (sent as ``max_tokens``, with ``ignore_eos``)."""
    arrival_s: float | None = None
    """Send time relative to the start (trace replay); ``None``: the arrival process decides."""

    @property
    def prompt_len(self) -> int:
        return len(self.prompt)


def _tokens(rng: random.Random, n: int, low: int, high: int) -> list[int]:
    return [rng.randrange(low, high) for _ in range(n)]


def random_dataset(
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    vocab: tuple[int, int] = (16, 256),
    seed: int = 0,
) -> list[SampleRequest]:
    """``num_prompts`` independent random prompts."""
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"random_range_ratio: must be in [0, 1), got {range_ratio}")
    rng = random.Random(seed)

    def length(n: int) -> int:
        return max(
            1, rng.randint(math.floor(n * (1 - range_ratio)), math.ceil(n * (1 + range_ratio)))
        )

    return [
        SampleRequest(_tokens(rng, length(input_len), *vocab), length(output_len))
        for _ in range(num_prompts)
    ]


def prefix_repetition_dataset(
    num_prompts: int,
    prefix_len: int,
    suffix_len: int,
    num_prefixes: int,
    output_len: int,
    vocab: tuple[int, int] = (16, 256),
    seed: int = 0,
) -> list[SampleRequest]:
    """``num_prompts // num_prefixes`` requests per shared prefix, shuffled."""
    if num_prefixes < 1 or num_prompts < num_prefixes:
        raise ValueError(
            "prefix_repetition_num_prefixes: must be in [1, "
            f"num_prompts={num_prompts}], got {num_prefixes}"
        )
    rng = random.Random(seed)
    out = []
    for _ in range(num_prefixes):
        prefix = _tokens(rng, prefix_len, *vocab)
        for _ in range(num_prompts // num_prefixes):
            out.append(SampleRequest(prefix + _tokens(rng, suffix_len, *vocab), output_len))
    rng.shuffle(out)
    return out


def mooncake_trace_dataset(
    path: Path,
    num_prompts: int | None = None,
    time_scale: float = 1.0,
    length_scale: float = 1.0,
    max_input_len: int | None = None,
    max_output_len: int | None = None,
    vocab: tuple[int, int] = (16, 256),
    seed: int = 0,
) -> list[SampleRequest]:
    """Replay the first ``num_prompts`` records of a Mooncake trace file.

    Args:
        path: JSON Lines trace (``timestamp`` ms, ``input_length``, ``output_length``,
            ``hash_ids``).
        time_scale: arrival times are ``timestamp / 1000 · time_scale`` seconds (0.1: ten
            times faster).
        length_scale: block, prompt and output lengths are multiplied by this (at least 1 token).
        max_input_len: prompts are cut to this many tokens (keeps the shared prefix).
        max_output_len: outputs are capped at this many tokens.
    """
    if time_scale <= 0:
        raise ValueError(f"time_scale: must be positive, got {time_scale}")
    if not 0 < length_scale <= 1:
        raise ValueError(f"length_scale: must be in (0, 1], got {length_scale}")
    block = max(1, round(TRACE_BLOCK_TOKENS * length_scale))
    blocks: dict[int, list[int]] = {}
    out: list[SampleRequest] = []
    t0: float | None = None
    with Path(path).open() as f:
        for line in f:
            if not line.strip():
                continue
            if num_prompts is not None and len(out) >= num_prompts:
                break
            rec = json.loads(line)
            prompt: list[int] = []
            for h in rec["hash_ids"]:
                if h not in blocks:
                    # Seeded by the id: the block's tokens do not depend on record order.
                    blocks[h] = _tokens(random.Random(seed * 1_000_003 + int(h)), block, *vocab)
                prompt += blocks[h]
            n_in = max(1, round(rec["input_length"] * length_scale))
            if max_input_len is not None:
                n_in = min(n_in, max_input_len)
            n_out = max(1, round(rec["output_length"] * length_scale))
            if max_output_len is not None:
                n_out = min(n_out, max_output_len)
            ts = float(rec["timestamp"]) / 1000.0
            t0 = ts if t0 is None else t0
            out.append(SampleRequest(prompt[:n_in], n_out, (ts - t0) * time_scale))
    return out


__all__ = [
    "DATASETS",
    "SampleRequest",
    "mooncake_trace_dataset",
    "prefix_repetition_dataset",
    "random_dataset",
]
