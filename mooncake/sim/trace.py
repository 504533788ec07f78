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


class TraceError(ValueError):
    """A trace that cannot be replayed; ``str()`` is one line naming the file and line."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.source, self.line, self.message = source, line, message
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {message}")


_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_line(text: str, source: str, lineno: int, index: int) -> TraceRequest:
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceError(source, lineno, f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise TraceError(source, lineno, f"expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in _KEYS if k not in rec]
    if missing:
        raise TraceError(
            source, lineno, f"missing key {missing[0]!r} (a record has {', '.join(_KEYS)})"
        )
    ts, n_in, n_out, ids = (rec[k] for k in _KEYS)
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not ts >= 0:
        raise TraceError(
            source, lineno, f"timestamp: must be a number of milliseconds >= 0, got {ts!r}"
        )
    if not _is_int(n_in) or n_in <= 0:
        raise TraceError(source, lineno, f"input_length: must be a positive integer, got {n_in!r}")
    if not _is_int(n_out) or n_out <= 0:
        raise TraceError(
            source, lineno, f"output_length: must be a positive integer, got {n_out!r}"
        )
    if not isinstance(ids, list) or not all(_is_int(h) for h in ids):
        raise TraceError(source, lineno, "hash_ids: must be a list of integers")
    return TraceRequest(index, ts / 1000.0, n_in, n_out, tuple(ids))


def parse_trace(lines: Iterable[str], source: str = "<trace>") -> list[TraceRequest]:
    """Parse JSON lines (blank lines skipped) into requests sorted by arrival.

    Raises:
        TraceError: a line is not a valid record (names ``source`` and the 1-based
            line number), or there are no records at all.
    """
    out: list[TraceRequest] = []
    for lineno, line in enumerate(lines, start=1):
        if line.strip():
            out.append(_parse_line(line, source, lineno, len(out)))
    if not out:
        raise TraceError(source, None, "no requests (empty trace)")
    out.sort(key=lambda r: (r.arrival_s, r.index))
    return out


def load_trace(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Read a trace file; ``limit`` keeps the first ``limit`` requests.

    Raises:
        TraceError: the file is missing, unreadable, not a trace, or empty.
    """
    source = str(path)
    if limit is not None and limit <= 0:
        raise TraceError(source, None, f"limit: must be positive, got {limit}")
    p = Path(path)
    if p.is_dir():
        raise TraceError(source, None, "is a directory, not a trace file")
    try:
        with open(p, encoding="utf-8") as f:
            reqs = parse_trace(f, source)
    except FileNotFoundError:
        raise TraceError(source, None, "no such file") from None
    except UnicodeDecodeError as e:
        raise TraceError(source, None, f"not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise TraceError(source, None, e.strerror or str(e)) from None
    return reqs[:limit] if limit is not None else reqs


def scale_rate(reqs: Sequence[TraceRequest], rate_scale: float) -> list[TraceRequest]:
    """Replay ``rate_scale`` times faster: arrival times divided by ``rate_scale``."""
    if rate_scale <= 0:
        raise ValueError(f"rate_scale: must be positive, got {rate_scale}")
    if rate_scale == 1.0:
        return list(reqs)
    return [replace(r, arrival_s=r.arrival_s / rate_scale) for r in reqs]


def make_request(
    index: int,
    arrival_s: float,
    input_length: int,
    output_length: int,
    hash_ids: Sequence[int] | None = None,
    block_size: int = 512,
) -> TraceRequest:
    """Factory for synthetic traces; default ``hash_ids`` are unique to the request."""
    if hash_ids is None:
        nblocks = -(-input_length // block_size)
        hash_ids = [index * 1_000_000 + i for i in range(nblocks)]
    return TraceRequest(index, arrival_s, input_length, output_length, tuple(hash_ids))


__all__ = ["TraceError", "TraceRequest", "load_trace", "make_request", "parse_trace", "scale_rate"]
