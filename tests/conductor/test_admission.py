"""Admission: SLO checks and the three decode-load views."""

from __future__ import annotations

from mooncake.conductor import (
    DecodeChoice,
    DecodeLoad,
    DecodeSeq,
    PrefillChoice,
    check_slos,
    decode_view,
)


def make_load() -> DecodeLoad:
    """Two running (joined t=0, output 101 and 11 tokens, 100-token prompts) and one
    incoming expected at t=5 (prompt 50, output 50)."""
    load = DecodeLoad(kv_capacity_tokens=1000)
    for rid, out in (("a", 101), ("b", 11)):
        load.expect(rid, DecodeSeq(100, out, 0.0))
        load.join(rid, 0.0)
    load.expect("c", DecodeSeq(50, 50, 5.0))
    return load


def test_views() -> None:
    """current: a,b → batch 2, KV 201+111=312. committed: +c → 3, 412.
    projected at eta=2 s, t_d=0.1 s: b ends at 10·0.1=1 s (gone), a at 10 s (stays),
    c arrives at 5 s (not yet) → 1, 201. At eta=6 s: a and c → 2, 301."""
    load = make_load()
    assert decode_view(load, "current") == (2, 312)
    assert decode_view(load, "committed") == (3, 412)
    assert decode_view(load, "projected", eta=2.0, t_d=0.1) == (1, 201)
    assert decode_view(load, "projected", eta=6.0, t_d=0.1) == (2, 301)


def test_check_slos_reasons() -> None:
    """TTFT 2.5 s > 2 s → rejected, retry after 0.5 s; KV miss → rejected; TBT over → rejected."""
    p = PrefillChoice("P", 1.5, 1.0, 0.0, 0, 0)
    ok = DecodeChoice("D", 0.05, True)
    rej = check_slos("r", p, ok, 2.0, 0.1, 3.0)
    assert rej is not None and "TTFT" in rej.reason and abs(rej.retry_after - 0.5) < 1e-9
    fast = PrefillChoice("P", 0.0, 1.0, 0.0, 0, 0)
    assert check_slos("r", fast, ok, 2.0, 0.1, 3.0) is None
    full = check_slos("r", fast, DecodeChoice("D", 0.05, False), 2.0, 0.1, 3.0)
    assert full is not None and "KV" in full.reason and full.retry_after == 3.0
    slow = check_slos("r", fast, DecodeChoice("D", 0.2, True), 2.0, 0.1, 3.0)
    assert slow is not None and "TBT" in slow.reason


def test_projection_re_estimates_long_running_sequences() -> None:
    """Projected at eta = 2 s with t_d = 0.1 s: a sequence placed with 10 expected output
    tokens at t = 0 would be gone by 0.9 s, but when total_len says a sequence that has
    generated 10 tokens (now = 1 s) runs to 50, it is still decoding at eta and counts."""
    from mooncake.conductor.state import DecodeLoad, DecodeSeq

    load = DecodeLoad(10**6)
    load.expect("a", DecodeSeq(100, 10, 0.0, None, 1000))
    load.join("a", 0.0)
    assert decode_view(load, "projected", eta=2.0, t_d=0.1) == (0, 0)
    assert decode_view(
        load, "projected", eta=2.0, t_d=0.1, now=1.0, total_len=lambda seq, g: 50 if g >= 10 else 10
    ) == (1, 110)


def test_projection_drops_placed_sequences_that_finish_before_eta() -> None:
    """A placed request expected at decode at t = 1 s with 11 output tokens, t_d = 0.1 s,
    decodes from 1 s to 2 s: projected to eta = 1.5 s it counts, to eta = 3 s it has
    finished and no longer does (FAST'25 §7.4 removes every request whose decoding ended
    before that moment, not only the ones running now)."""
    load = DecodeLoad(10**6)
    load.expect("p", DecodeSeq(100, 11, 1.0))
    assert decode_view(load, "projected", eta=1.5, t_d=0.1, now=0.0) == (1, 111)
    assert decode_view(load, "projected", eta=3.0, t_d=0.1, now=0.0) == (0, 0)


def test_projection_starts_late_placed_sequences_now() -> None:
    """A placed request expected at t = 1 s that has not joined by now = 5 s (its prefill
    ran late, or it waits for memory) has not decoded a token: it starts no earlier than
    5 s, so with 11 tokens at t_d = 0.1 s it still counts at eta = 5.5 s (from its
    expected arrival it would have finished at 2 s)."""
    load = DecodeLoad(10**6)
    load.expect("p", DecodeSeq(100, 11, 1.0))
    assert decode_view(load, "projected", eta=5.5, t_d=0.1, now=5.0) == (1, 111)
    assert decode_view(load, "projected", eta=6.5, t_d=0.1, now=5.0) == (0, 0)


def test_projected_peak_over_the_stay() -> None:
    """make_load with t_d = 0.1 s: a runs until 10 s, c (placed) decodes from 5 s to 9.9 s.
    From eta = 2 s: until 4 s only a counts (1, 201); until 20 s the busiest moment is
    5-9.9 s with a and c (2, 301); the load at eta itself is decode_view's."""
    from mooncake.conductor import projected_peak

    load = make_load()
    assert projected_peak(load, 2.0, 4.0, 0.1) == (1, 201)
    assert projected_peak(load, 2.0, 20.0, 0.1) == (2, 301)
    assert projected_peak(load, 2.0, 2.0, 0.1) == decode_view(load, "projected", 2.0, 0.1)


def test_projected_peak_frees_memory_before_an_arrival_at_the_same_moment() -> None:
    """A running sequence (prompt 100, 11 tokens, t_d 0.1 s) ends at 1 s, exactly when a
    placed one (100 + 11) arrives: the busiest moment holds one of them, not both."""
    from mooncake.conductor import projected_peak

    load = DecodeLoad(10**6)
    load.expect("a", DecodeSeq(100, 11, 0.0))
    load.join("a", 0.0)
    load.expect("b", DecodeSeq(100, 11, 1.0))
    assert projected_peak(load, 0.5, 3.0, 0.1) == (1, 111)
