"""Trace parsing and rate scaling."""

from __future__ import annotations

import pytest

from mooncake.sim import make_request, parse_trace, scale_rate


def test_parse_sorts_and_converts_ms() -> None:
    """Timestamps are milliseconds; records are ordered by arrival."""
    lines = [
        '{"timestamp": 3000, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}',
        "",
        '{"timestamp": 1000, "input_length": 100, "output_length": 2, "hash_ids": [0]}',
    ]
    reqs = parse_trace(lines)
    assert [(r.index, r.arrival_s) for r in reqs] == [(1, 1.0), (0, 3.0)]
    assert reqs[1].hash_ids == (0, 1)


def test_scale_rate_divides_arrivals() -> None:
    """2× speed halves every arrival time."""
    reqs = [make_request(0, 4.0, 10, 1), make_request(1, 10.0, 10, 1)]
    assert [r.arrival_s for r in scale_rate(reqs, 2.0)] == [2.0, 5.0]
    with pytest.raises(ValueError, match="rate_scale"):
        scale_rate(reqs, 0)


def test_make_request_unique_blocks() -> None:
    """1025 tokens → 3 blocks of 512, ids unique per request."""
    r = make_request(2, 0.0, 1025, 1)
    assert len(r.hash_ids) == 3 and r.hash_ids[0] == 2_000_000
