"""A synthetic Mooncake trace built from FAST'25's description of its synthetic workload.

FAST'25 (§8.1 and Table 2) evaluates on a synthetic workload next to its two real
traces: requests drawn from public datasets of multi-turn conversations (ShareGPT) and
of long-document tasks (LEval, LooGLE), shuffled together and sent as a Poisson
process. Table 2 gives its statistics: 3,993 requests, 15,325 input tokens and 149
output tokens on average, a 66% cache ratio. The datasets' texts are not needed to
replay it in the simulator, only their structure, so this module generates that
structure, seeded and deterministic:

- **Conversations** (ShareGPT-like): a session of several turns; turn *k*'s prompt is
  the whole previous prompt, the previous answer and a new user message, so every turn
  after the first reuses its predecessor's context as a prefix.
- **Long documents** (LEval/LooGLE-like): a document of many thousand tokens with several
  questions; every request is the document followed by one short question, so every
  question after the first reuses the document.

Session counts and length distributions (:class:`SyntheticSpec`, log-normal lengths)
are calibrated so the generated trace matches Table 2's three figures (the paper gives
no per-source numbers); ``tests/sim/test_synthetic.py`` checks that it does. Requests
of all sessions are interleaved in the order their sessions would reach them (sessions
start at random times, turns follow after a think time) and then timed by a Poisson
process of rate ``rate`` — the paper does not state the rate; the default is the
conversation trace's base rate, 3.40 req/s.

``hash_ids`` follow the trace format: one id per 512-token block (the last may be
partial), chained so that two requests share the id of block *i* exactly when their
first ``512·(i+1)`` tokens are the same content.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mooncake.sim.trace import TraceRequest

BLOCK_TOKENS = 512
"""Tokens per hash id, as in the FAST'25 traces."""

PAPER_TABLE2 = {"requests": 3993, "input_mean": 15325, "output_mean": 149, "cache_ratio": 0.66}
"""FAST'25 Table 2, synthetic workload."""


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of the synthetic workload (defaults: calibrated to FAST'25 Table 2)."""

    requests: int = 3993
    """Requests in the trace (Table 2)."""
    rate: float = 3.40
    """Mean arrivals per second of the Poisson process (not in the paper: the
    conversation trace's base rate, so ``--rate-scale`` means the same on both)."""
    seed: int = 0
    document_share: float = 0.58
    """Share of requests that ask about a long document (LEval/LooGLE); the rest are
    conversation turns (ShareGPT)."""
    document_tokens: float = 22_000.0
    """Mean document length (log-normal)."""
    document_sigma: float = 0.7
    """Log-normal sigma of document lengths."""
    questions_per_document: float = 3.0
    """Mean questions asked about one document (1 + geometric)."""
    question_tokens: float = 60.0
    """Mean question length (log-normal, sigma 0.6)."""
    document_output_tokens: float = 90.0
    """Mean answer length about a document (log-normal, sigma 0.8)."""
    turns_per_conversation: float = 4.0
    """Mean turns of a conversation (1 + geometric)."""
    system_prompt_tokens: float = 2_500.0
    """Mean context a conversation starts from (log-normal, sigma 0.8): a system
    prompt plus earlier history."""
    user_tokens: float = 700.0
    """Mean user message length (log-normal, sigma 1.0)."""
    conversation_output_tokens: float = 222.0
    """Mean answer length in a conversation (log-normal, sigma 0.8)."""
    max_input_tokens: int = 120_000
    """Prompts are cut to this many tokens (the served model's context)."""
    think_time_s: float = 60.0
    """Mean seconds between a session's consecutive requests (exponential); only the
    order it gives matters, times come from the Poisson process."""

    def __post_init__(self) -> None:
        positive = (
            "requests",
            "rate",
            "document_tokens",
            "questions_per_document",
            "question_tokens",
            "document_output_tokens",
            "turns_per_conversation",
            "system_prompt_tokens",
            "user_tokens",
            "conversation_output_tokens",
            "max_input_tokens",
            "think_time_s",
        )
        for name in positive:
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name}: must be positive, got {value!r}")
        if not 0 <= self.document_share <= 1:
            raise ValueError(f"document_share: must be in [0, 1], got {self.document_share!r}")
        for name in ("questions_per_document", "turns_per_conversation"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)!r}")


Segment = tuple[int, int]
"""(content id, tokens): a stretch of prompt text that is the same wherever it appears."""


class _BlockIds:
    """Interns prefix-chained block ids: block i's id is a function of block i−1's id
    and the content inside block i."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, tuple[tuple[int, int, int], ...]], int] = {}

    def ids(self, segments: Sequence[Segment], n_tokens: int) -> tuple[int, ...]:
        out: list[int] = []
        prev = -1
        pieces: list[tuple[int, int, int]] = []
        pos = 0  # tokens placed so far
        for seg, length in segments:
            off = 0
            while off < length and pos < n_tokens:
                room = BLOCK_TOKENS - pos % BLOCK_TOKENS
                take = min(room, length - off, n_tokens - pos)
                pieces.append((seg, off, off + take))
                off += take
                pos += take
                if pos % BLOCK_TOKENS == 0 or pos == n_tokens:
                    key = (prev, tuple(pieces))
                    prev = self._ids.setdefault(key, len(self._ids))
                    out.append(prev)
                    pieces = []
            if pos >= n_tokens:
                break
        return tuple(out)


def _lognormal(rng: random.Random, mean: float, sigma: float, lo: int = 1) -> int:
    """A log-normal draw with the given mean (not median)."""
    mu = math.log(mean) - sigma * sigma / 2
    return max(lo, round(rng.lognormvariate(mu, sigma)))


def _count(rng: random.Random, mean: float) -> int:
    """1 + geometric with the given mean (>= 1)."""
    if mean <= 1:
        return 1
    p = 1.0 / mean
    n = 1
    while rng.random() > p:
        n += 1
    return n


@dataclass
class _Pending:
    order: float
    """When its session would send it (orders the requests; not its arrival time)."""
    segments: list[Segment]
    output: int


def generate(spec: SyntheticSpec | None = None) -> list[TraceRequest]:
    """The synthetic trace: ``spec.requests`` requests sorted by arrival."""
    spec = spec or SyntheticSpec()
    rng = random.Random(spec.seed)
    content = iter(range(1 << 62))
    pending: list[_Pending] = []
    horizon = spec.requests / spec.rate  # sessions start over the trace's span
    docs_left = round(spec.requests * spec.document_share)
    conv_left = spec.requests - docs_left
    while docs_left > 0 or conv_left > 0:
        t = rng.uniform(0, horizon)
        # Pick a source in proportion to the requests it still has to produce.
        if rng.random() < docs_left / (docs_left + conv_left):
            doc = (next(content), _lognormal(rng, spec.document_tokens, spec.document_sigma))
            for _ in range(min(docs_left, _count(rng, spec.questions_per_document))):
                q = (next(content), _lognormal(rng, spec.question_tokens, 0.6))
                out = _lognormal(rng, spec.document_output_tokens, 0.8)
                pending.append(_Pending(t, [doc, q], out))
                docs_left -= 1
                t += rng.expovariate(1.0 / spec.think_time_s)
        else:
            ctx: list[Segment] = [(next(content), _lognormal(rng, spec.system_prompt_tokens, 0.8))]
            for _ in range(min(conv_left, _count(rng, spec.turns_per_conversation))):
                ctx = [*ctx, (next(content), _lognormal(rng, spec.user_tokens, 1.0))]
                out = _lognormal(rng, spec.conversation_output_tokens, 0.8)
                pending.append(_Pending(t, list(ctx), out))
                conv_left -= 1
                ctx = [*ctx, (next(content), out)]  # the answer joins the next turn's prompt
                t += rng.expovariate(1.0 / spec.think_time_s)
    pending.sort(key=lambda p: p.order)
    blocks = _BlockIds()
    out_reqs: list[TraceRequest] = []
    now = 0.0
    for i, p in enumerate(pending):
        if i:
            now += rng.expovariate(spec.rate)
        n = min(spec.max_input_tokens, sum(length for _, length in p.segments))
        arrival = math.floor(now * 1000) / 1000  # whole milliseconds, as in the trace format
        out_reqs.append(TraceRequest(i, arrival, n, p.output, blocks.ids(p.segments, n)))
    return out_reqs


@dataclass(frozen=True)
class TraceStats:
    """The Table 2 figures of a trace."""

    requests: int
    input_mean: float
    output_mean: float
    cache_ratio: float
    """Share of prompt blocks an infinite cache would already hold (blocks seen before,
    leading blocks only)."""
    duration_s: float


def trace_stats(reqs: Sequence[TraceRequest]) -> TraceStats:
    """Requests, mean input and output lengths, cache ratio and span of a trace."""
    from mooncake.sim.cache import hit_rate

    n = len(reqs)
    return TraceStats(
        n,
        sum(r.input_length for r in reqs) / n if n else 0.0,
        sum(r.output_length for r in reqs) / n if n else 0.0,
        hit_rate([r.hash_ids for r in reqs], None),
        max((r.arrival_s for r in reqs), default=0.0),
    )


def write_trace(reqs: Sequence[TraceRequest], path: str | Path) -> None:
    """Write requests in the trace format (JSON lines, ``timestamp`` in ms)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in reqs:
            rec = {
                "timestamp": round(r.arrival_s * 1000),
                "input_length": r.input_length,
                "output_length": r.output_length,
                "hash_ids": list(r.hash_ids),
            }
            f.write(json.dumps(rec) + "\n")


__all__ = [
    "BLOCK_TOKENS",
    "PAPER_TABLE2",
    "SyntheticSpec",
    "TraceStats",
    "generate",
    "trace_stats",
    "write_trace",
]
