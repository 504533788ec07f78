"""The synthetic trace built from FAST'25's description of its synthetic workload."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mooncake.cli import main
from mooncake.sim import load_trace
from mooncake.sim.synthetic import (
    BLOCK_TOKENS,
    PAPER_TABLE2,
    SyntheticSpec,
    _BlockIds,
    generate,
    trace_stats,
    write_trace,
)


def test_default_trace_matches_table_2() -> None:
    """The default spec (seed 0) gives 3,993 requests whose mean input and output lengths
    and cache ratio are within 5% of FAST'25 Table 2 (15,325 / 149 / 0.66)."""
    st = trace_stats(generate())
    assert st.requests == PAPER_TABLE2["requests"]
    assert st.input_mean == pytest.approx(PAPER_TABLE2["input_mean"], rel=0.05)
    assert st.output_mean == pytest.approx(PAPER_TABLE2["output_mean"], rel=0.05)
    assert st.cache_ratio == pytest.approx(PAPER_TABLE2["cache_ratio"], rel=0.05)


def test_deterministic_and_poisson_timed() -> None:
    """The same spec gives the same trace; another seed another one. Arrivals are sorted,
    start at 0 and average 1/rate apart (Poisson at 3.4 req/s over 3,993 requests: the
    span is within 5% of 3,992 / 3.4 s)."""
    a, b = generate(SyntheticSpec(seed=3)), generate(SyntheticSpec(seed=3))
    assert a == b and a != generate(SyntheticSpec(seed=4))
    times = [r.arrival_s for r in a]
    assert times == sorted(times) and times[0] == 0.0
    assert times[-1] == pytest.approx(3992 / 3.4, rel=0.05)


def test_hash_ids_follow_the_trace_format() -> None:
    """Every request has ceil(input / 512) ids; a block id is shared exactly where the
    content up to the block's end is the same: two prompts with a common 1,000-token
    segment share block 0 only (block 1 ends past the common part), and a prompt
    extending another shares all of the shorter one's full blocks."""
    for r in generate(SyntheticSpec(requests=300, seed=1)):
        assert len(r.hash_ids) == math.ceil(r.input_length / BLOCK_TOKENS)
    ids = _BlockIds()
    doc = (1, 1000)
    a = ids.ids([doc, (2, 50)], 1050)
    b = ids.ids([doc, (3, 50)], 1050)
    assert a[0] == b[0] and a[1] != b[1] and len(a) == 3
    longer = ids.ids([doc, (2, 50), (4, 2000)], 3050)
    assert longer[:2] == a[:2] and longer[2] != a[2]  # a's last block was partial


def test_cli_writes_a_replayable_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mooncake sim synthetic --out F` writes a trace the simulator loads (same lengths
    and ids, times to the millisecond) and prints the statistics next to Table 2's; a bad
    rate is a one-line error with exit 2."""
    out = tmp_path / "syn.jsonl"
    assert main(["sim", "synthetic", "--out", str(out), "--requests", "200", "--seed", "2"]) == 0
    assert "FAST'25 Table 2" in capsys.readouterr().out
    loaded, made = load_trace(out), generate(SyntheticSpec(requests=200, seed=2))
    assert [(r.input_length, r.output_length, r.hash_ids) for r in loaded] == [
        (r.input_length, r.output_length, r.hash_ids) for r in made
    ]
    assert [r.arrival_s for r in loaded] == pytest.approx([r.arrival_s for r in made], abs=1e-3)
    assert main(["sim", "synthetic", "--out", str(out), "--rate", "0"]) == 2
    assert "rate" in capsys.readouterr().err
    write_trace(made[:2], tmp_path / "two.jsonl")
    assert len(load_trace(tmp_path / "two.jsonl")) == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"requests": 0}, "requests"),
        ({"document_share": 1.5}, "document_share"),
        ({"turns_per_conversation": 0.5}, "turns_per_conversation"),
    ],
)
def test_spec_validates(kwargs: dict[str, float], field: str) -> None:
    """Bad values raise ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        SyntheticSpec(**kwargs)  # type: ignore[arg-type]
