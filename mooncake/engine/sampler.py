"""Token sampling: greedy, temperature, top-k, top-p, per-request seeds, logprobs.

Randomness for the token at output index i of a request comes from a generator seeded
with (request seed, i) alone, so a request samples the same tokens whatever it is
batched with, after preemption, and after its KV moved to another engine.

Each row is sampled on its own: parameters are made numerically safe (a temperature
too small to divide by is greedy, a nucleus always keeps the most likely token), and a
row that still cannot be sampled (non-finite logits) gets an ``error`` instead of a
token, so one request never fails the batch it shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mooncake.sampling_params import SamplingParams

_MASK64 = (1 << 63) - 1


@dataclass
class SampleRequest:
    params: SamplingParams
    seed: int
    output_index: int


@dataclass
class SampleResult:
    token_id: int
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    error: str | None = None
    """Why this row could not be sampled (``token_id`` is then meaningless)."""


def _position_seed(seed: int, index: int) -> int:
    # splitmix64-style mix, so neighbouring (seed, index) pairs give unrelated streams.
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK64


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) tokens outside top-k and outside the top-p nucleus. logits: [V]."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p; the most likely
        # token always stays (a top_p that rounds to 0 in float32 would drop them all)
        drop = (probs.cumsum(-1) - probs) >= top_p
        drop[0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def _sample_row(logits: torch.Tensor, req: SampleRequest) -> int:
    """One token from one row of logits ``[V]`` (temperature, top-k, top-p, seed)."""
    p = req.params
    scaled = _filter(logits / p.temperature, p.top_k, p.top_p)
    probs = scaled.softmax(-1)
    if not bool(torch.isfinite(probs).all()):
        # A finite row can still overflow once divided by a small temperature; the
        # distribution is then all on its maximum.
        return int(logits.argmax())
    gen = torch.Generator(device=logits.device).manual_seed(
        _position_seed(req.seed, req.output_index)
    )
    return int(torch.multinomial(probs, 1, generator=gen).item())


def sample(logits: torch.Tensor, requests: list[SampleRequest]) -> list[SampleResult]:
    """Pick one token per row.

    Args:
        logits: float32 ``[N, vocab]`` raw model logits.
        requests: one per row.
    """
    greedy_ids = logits.argmax(-1).tolist()
    finite = torch.isfinite(logits).all(-1).tolist()
    need_lp = any(r.params.logprobs is not None for r in requests)
    logprobs = logits.log_softmax(-1) if need_lp else None
    results = []
    for row, req in enumerate(requests):
        p = req.params
        if not finite[row]:
            results.append(
                SampleResult(-1, error="the model produced non-finite logits for this request")
            )
            continue
        if p.greedy:
            tok = int(greedy_ids[row])
        else:
            try:
                tok = _sample_row(logits[row], req)
            except (RuntimeError, ValueError) as e:  # what torch raises on a bad distribution
                results.append(SampleResult(-1, error=f"sampling failed: {e}"))
                continue
        res = SampleResult(tok)
        if logprobs is not None and p.logprobs is not None:
            lp = logprobs[row]
            res.logprob = float(lp[tok])
            top: dict[int, float] = {}
            if p.logprobs:
                vals, ids = torch.topk(lp, p.logprobs)
                top = {int(i): float(v) for i, v in zip(ids.tolist(), vals.tolist())}
            top[tok] = res.logprob
            res.top_logprobs = top
        results.append(res)
    return results
