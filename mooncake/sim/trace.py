"""Mooncake trace files: one JSON object per line with ``timestamp`` (ms),
``input_length``, ``output_length`` and ``hash_ids`` (prefix-chained ids of 512-token
blocks). The FAST'25 traces are public; docs/paper-reproduction.md says where."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace."""

    index: int
    """Position in the trace (stable id)."""
    arrival_s: float
    """Arrival time in seconds after the first request."""
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


def parse_trace(lines: Iterable[str]) -> list[TraceRequest]:
    """Parse JSON lines (blank lines skipped) into requests sorted by arrival."""
    out: list[TraceRequest] = []
    for i, line in enumerate(x for x in lines if x.strip()):
        rec = json.loads(line)
        out.append(TraceRequest(i, rec["timestamp"] / 1000.0, int(rec["input_length"]), int(rec["output_length"]), tuple(rec["hash_ids"])))
    out.sort(key=lambda r: (r.arrival_s, r.index))
    return out


def load_trace(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Read a trace file; ``limit`` keeps the first ``limit`` requests."""
    with open(path, encoding="utf-8") as f:
        reqs = parse_trace(f)
    return reqs[:limit] if limit is not None else reqs


def scale_rate(reqs: Sequence[TraceRequest], rate_scale: float) -> list[TraceRequest]:
    """Replay ``rate_scale`` times faster: arrival times divided by ``rate_scale``."""
    if rate_scale <= 0:
        raise ValueError(f"rate_scale: must be positive, got {rate_scale}")
    if rate_scale == 1.0:
        return list(reqs)
    return [replace(r, arrival_s=r.arrival_s / rate_scale) for r in reqs]


def make_request(index: int, arrival_s: float, input_length: int, output_length: int, hash_ids: Sequence[int] | None = None, block_size: int = 512) -> TraceRequest:
    """Factory for synthetic traces; default ``hash_ids`` are unique to the request."""
    if hash_ids is None:
        nblocks = -(-input_length // block_size)
        hash_ids = [index * 1_000_000 + i for i in range(nblocks)]
    return TraceRequest(index, arrival_s, input_length, output_length, tuple(hash_ids))


__all__ = ["TraceRequest", "load_trace", "make_request", "parse_trace", "scale_rate"]
