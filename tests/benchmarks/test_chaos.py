"""``benchmarks/chaos.py``'s measures of a move, on made-up request records (no
cluster): the extra end-to-end time against the moved request's own pace and against
unmoved requests, the token gaps that show a selection bias between the two, the
critical path of an early resume, and the trace-slice load."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import chaos  # noqa: E402

from mooncake.client_moves import MoveRecord  # noqa: E402


def _stream(rid: str, start: float, gaps: list[float], prompt_len: int = 64) -> chaos.Outcome:
    """A completed request whose tokens came ``gaps`` apart, the first at ``start + 0.05``."""
    times = [start + 0.05]
    for g in gaps:
        times.append(times[-1] + g)
    return chaos.Outcome(
        rid,
        "completed",
        ttft_s=0.05,
        e2e_s=times[-1] - start,
        prompt_len=prompt_len,
        output_len=len(times),
        start=start,
        token_times=times,
    )


def _move(rid: str, before: chaos.Outcome, k: int, kill_at: float) -> MoveRecord:
    """Its move after ``k`` outputs (the stream acted 5 ms after the kill)."""
    times = before.token_times or []
    return MoveRecord(
        rid,
        f"{rid}~1",
        "w1",
        resumed=k > 0,
        tokens_before=k,
        notice="exit",
        left_at=kill_at + 0.005,
        noticed_at=kill_at + 0.005,
        last_token_at=times[k - 1] if k else None,
        placed_at=kill_at + 0.02,
        submitted_at=kill_at + 0.021,
        first_token_at=times[k] if k < len(times) else None,
        early=True,
        transfer_s=0.01,
    )


def test_own_pace_splits_the_stall_from_a_slower_batch_after_the_move():
    """Tokens 10 ms apart, a 110 ms gap across the move, then 20 ms apart: the stall is
    100 ms against its own pace, the 3 later tokens cost 30 ms more than at that pace;
    no token before the move: no own pace."""
    times = [0.0, 0.01, 0.02, 0.03, 0.14, 0.16, 0.18, 0.20]
    p = chaos.own_pace(times, 0.14)
    assert p is not None and p.from_before
    assert p.pace_s == pytest.approx(0.01)
    assert p.stall_s == pytest.approx(0.10)
    assert p.after_s == pytest.approx(0.03)
    assert p.extra_s == pytest.approx(0.13)
    assert p.post_gap_s == pytest.approx(0.02)
    assert chaos.own_pace(times, 0.0) is None
    # One token before the move: its pace is its whole stream's median gap.
    one = chaos.own_pace([0.0, 0.2, 0.21, 0.22], 0.2)
    assert one is not None and not one.from_before and one.pace_s == pytest.approx(0.01)


def test_selection_bias_shows_in_the_token_gaps_and_not_in_the_own_pace():
    """The moved request decoded at 30 ms a token on the busy worker before the kill;
    four unmoved requests of the same shape in flight decoded at 10 ms. Its move added a
    60 ms stall and nothing else (30 ms a token after it too): against its own pace the
    move cost 60 ms, against the unmoved requests far more (its slower pace before the
    kill counts too); the token gaps around the kill say why."""
    moved = _stream("m", 0.0, [0.03] * 20 + [0.09] + [0.03] * 19)
    k = 21  # outputs before the move
    assert moved.token_times is not None
    kill = moved.token_times[k - 1] + 0.01
    peers = [_stream(f"u{i}", 0.3 + 0.05 * i, [0.01] * 40) for i in range(4)]
    for p in peers:
        assert p.token_times is not None
        assert p.start <= kill <= p.token_times[-1]
    kills = [chaos.Kill(kill, "w1", "decode", 1)]
    bd = chaos.breakdown([moved, *peers], [_move("m", moved, k, kill)], kills, {64: 0.05})
    row = bd["moves"][0]
    assert row["extra_e2e_own_pace_s"] == pytest.approx(0.06)
    assert row["stall_own_pace_s"] == pytest.approx(0.06)
    assert row["extra_e2e_s"] == pytest.approx((moved.e2e_s or 0) - (peers[0].e2e_s or 0))
    assert row["extra_e2e_s"] > 0.5  # the bias: a slower worker before the kill
    assert row["pre_gap_s"] == pytest.approx(0.03)
    assert row["peer_pre_gap_s"] == pytest.approx(0.01)
    assert row["uncached_prefill_s"] == 0.05
    assert bd["ratio_p50"]["extra_e2e_own_pace_s"] == pytest.approx(1.2)


def test_critical_path_of_an_early_resume():
    """The Conductor placed the attempt 8 ms after the stream acted, its decode worker
    started the fetch 2 ms later and had the blocks 4 ms after that; the first token came
    30 ms later; the answer reached the client 7 ms after the placement."""
    m = MoveRecord(
        "r", "r~1", "w", True, 5, "exit", 0.0, 10.0, 9.9, placed_at=10.015, first_token_at=10.044
    )
    off = 1000.0
    hand = {"r~1": {"fetch_start": off + 10.010, "imported": off + 10.014}}
    trace = chaos.Trace(off, {"r~1": off + 10.008}, hand)
    path = chaos.critical_path(m, trace)
    assert path["to_conductor_s"] == pytest.approx(0.008)
    assert path["answer_back_s"] == pytest.approx(0.007)
    assert path["conductor_to_fetch_s"] == pytest.approx(0.002)
    assert path["fetch_s"] == pytest.approx(0.004)
    assert path["imported_to_first_token_s"] == pytest.approx(0.030)
    assert chaos.critical_path(m, chaos.Trace(off, {}, {}))["fetch_s"] is None


def test_trace_slice_load_and_its_extra_ttft(tmp_path):
    """The trace-slice load: prompts of different lengths from the trace file. A
    request moved before its first token is compared with unmoved requests of a similar
    prompt length (within 25%), whatever their output length."""
    trace = tmp_path / "trace.jsonl"
    recs = [
        {
            "timestamp": 0,
            "input_length": 512 * (i + 1),
            "output_length": 400,
            "hash_ids": list(range(10 * i, 10 * i + i + 1)),
        }
        for i in range(6)
    ]
    trace.write_text("\n".join(json.dumps(r) for r in recs))
    args = argparse.Namespace(
        dataset="mooncake-trace",
        trace=str(trace),
        num_prompts=6,
        length_scale=0.05,
        max_input_len=1024,
        output_len=32,
    )
    reqs = chaos.workload(args)
    assert len(reqs) == 6 and len({r.prompt_len for r in reqs}) > 1
    assert all(r.output_len <= 32 for r in reqs)

    def done(rid: str, ttft: float, prompt_len: int, output_len: int) -> chaos.Outcome:
        return chaos.Outcome(rid, "completed", "", ttft, 1.0, prompt_len, output_len, 0.0)

    moved = done("m", 0.3, 100, 20)
    near = [done(f"u{i}", 0.1, 110, 10 + i) for i in range(3)]
    far = done("f", 1.0, 400, 20)
    m = MoveRecord("m", "m~1", "w1", False, 0, "exit", 0.1, 0.1, None, first_token_at=0.3)
    bd = chaos.breakdown([moved, *near, far], [m], [chaos.Kill(0.095, "w1", "decode", 1)])
    assert bd["moves"][0]["extra_ttft_s"] == pytest.approx(0.2)


def test_a_trace_run_saves_a_result_of_its_own_that_renders(tmp_path):
    """``--save-results`` of a trace-slice run writes ``chaos-decode-trace.json`` (the
    prefix-repetition result stays), with the stall and both extra end-to-end times
    judged against one uncached prefill of the moved requests' prompts, and
    ``benchmarks/report.py`` renders it."""
    import report

    moved = _stream("m", 0.0, [0.03] * 20 + [0.09] + [0.03] * 19)
    assert moved.token_times is not None
    kill = moved.token_times[20] + 0.01
    peers = [_stream(f"u{i}", 0.3 + 0.05 * i, [0.01] * 40) for i in range(4)]
    kills = [chaos.Kill(kill, "w1", "decode", 1)]
    args = argparse.Namespace(
        dataset="mooncake-trace",
        kill_roles="decode",
        kill_every=10.0,
        decode_workers=2,
        rate=4.0,
        length_scale=0.05,
        max_input_len=1024,
        output_len=128,
        kill_target="busiest",
        keep_spare=True,
    )
    result, _ = chaos.summarize(
        [moved, *peers],
        {"m": 1},
        [_move("m", moved, 21, kill)],
        kills,
        0.04,
        {64: 0.05},
        None,
        True,
        0.0,
        3.0,
        args,
    )
    assert result["moved_uncached_prefill_p50_s"] == 0.05
    assert result["token_gap_p50_s"]["moved_before"] == pytest.approx(0.03)
    json.dumps(result)  # what --json writes
    path = chaos.save_results(result, args, tmp_path)
    assert path.name == "chaos-decode-trace.json"
    doc = json.loads(path.read_text())
    claims = {c["claim"]: c for c in doc["claims"]}
    own = claims["extra end-to-end time of resumed requests, against their own pace (p50)"]
    assert own["ratio"] == pytest.approx(0.06 / 0.05)
    assert own["baseline"] == "one uncached prefill of their prompt (TTFT p50)"
    page = report.render(report.load(tmp_path), tmp_path / "performance.md", plots=False)
    assert "a slice of the conversation trace" in page
