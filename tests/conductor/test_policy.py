"""The Conductor façade: events in, decisions out (tiny cost model: prefill
(n − c)/1000 s, decode step 2·batch/1000 s, transfer tokens/1e6 s)."""

from __future__ import annotations

import pytest

from mooncake.conductor import (
    Conductor,
    ConductorConfig,
    CostModel,
    Placement,
    Rejection,
    RequestInfo,
)


def req(rid: str, n: int, keys: tuple[int, ...], out: int = 10) -> RequestInfo:
    return RequestInfo(rid, n, keys, out)


def test_queue_estimate_follows_events(tiny_cost: CostModel) -> None:
    """One prefill instance. r1 (1000 tokens) placed at t=0 → est 1 s queued.
    r2 placed at t=0 sees queue 1 s → est TTFT 1 + 2 = 3 s. After r1 starts at t=0
    and time reaches 0.4 s, r3 sees 0.6 s left of r1 + 2 s of r2 = 2.6 s queue."""
    c = Conductor(ConductorConfig(prefill_policy="load_balancing"), ["P"], {"D": 10**6}, tiny_cost)
    p1 = c.place(req("r1", 1000, (1, 2)), 0.0)
    p2 = c.place(req("r2", 2000, (3, 4, 5, 6)), 0.0)
    assert isinstance(p1, Placement) and isinstance(p2, Placement)
    assert p2.est_ttft_s == pytest.approx(3.0)
    c.on_prefill_start("r1", 0.0)
    p3 = c.place(req("r3", 1000, (7, 8)), 0.4)
    assert isinstance(p3, Placement) and p3.prefill_choice.queue_s == pytest.approx(2.6)


def test_mostly_cached_request_is_not_rejected_for_its_length(tiny_cost: CostModel) -> None:
    """TTFT SLO 1 s, early admission. A 1500-token prompt costs 1.5 s raw → rejected
    (retry after 0.5 s). Once P reports blocks 1,2 stored (1024 tokens cached), the same
    prompt costs 0.476 s → admitted."""
    cfg = ConductorConfig(prefill_policy="global_cache_aware", admission="early", ttft_slo_s=1.0)
    c = Conductor(cfg, ["P"], {"D": 10**6}, tiny_cost)
    r = req("r", 1500, (1, 2, 3))
    rej = c.place(r, 0.0)
    assert isinstance(rej, Rejection) and rej.retry_after == pytest.approx(0.5)
    c.on_blocks_stored("P", [1, 2])
    ok = c.place(r, 0.0)
    assert isinstance(ok, Placement)
    assert ok.prefill_choice.cached_tokens == 1024 and ok.est_ttft_s == pytest.approx(0.476)


def test_predictive_admits_what_early_rejects(tiny_cost: CostModel) -> None:
    """Decode D holds 1000 KV tokens. 'old' (prompt 400, output 500 = 900 tokens)
    is decoding since t=0 with t_d = 0.01 s/token → done at 499·0.01 = 4.99 s. A new
    request (prompt 100: 0.1 s prefill behind 5 s of queued work) needs 110 KV tokens
    and reaches decode at 5.1 s. Early (current load 900 + 110 > 1000) rejects;
    predictive (old gone by 5.1 s) admits."""

    def build(admission: str) -> Conductor:
        cfg = ConductorConfig(
            prefill_policy="load_balancing",
            admission=admission,  # type: ignore[arg-type]
            decode_token_time_s=0.01,
        )
        c = Conductor(cfg, ["P"], {"D": 1000}, tiny_cost)
        assert isinstance(c.place(req("old", 400, (1,), 500), 0.0), Placement)
        c.on_prefill_start("old", 0.0)
        c.on_prefill_finish("old", 0.0, 400, 0, 0.4)
        c.on_decode_join("old", 0.0)
        c.prefill_loads["P"].enqueue("filler", 5.0)
        return c

    new = req("new", 100, (2,), 10)
    early = build("early").place(new, 0.0)
    assert isinstance(early, Rejection) and "KV" in early.reason
    pred = build("predictive").place(new, 0.0)
    assert isinstance(pred, Placement) and pred.est_ttft_s == pytest.approx(5.1)


@pytest.mark.parametrize("vectorized", [True, False])
def test_predictive_projects_with_the_step_time_at_the_projected_load(
    tiny_cost: CostModel, vectorized: bool
) -> None:
    """Decode D holds 3000 KV tokens. Four 'old' sequences (prompt 400, output 100) are
    decoding since t=0; twenty placed sequences (prompt 10, output 100: 110 KV tokens
    each, still decoding at 1.0 s) reach D by 0.5 s; a new one (110 tokens) would reach
    D at ~1.0 s. At today's step time (batch 4: 8 ms)
    the old ones finish at 0.79 s, so a fixed t_d of 8 ms projects 2200 + 110 tokens and
    admits. By default t_d is the step time of the projected batch with the new request
    in it (25 sequences: 50 ms): the old ones are still decoding at 1.0 s, 4310 tokens
    do not fit, and the request is rejected."""
    from mooncake.conductor import DecodeSeq

    def build(t_d: float | None) -> Conductor:
        cfg = ConductorConfig(
            prefill_policy="load_balancing", admission="predictive", decode_token_time_s=t_d
        )
        c = Conductor(cfg, ["P"], {"D": 3000}, tiny_cost, vectorized=vectorized)
        for i in range(4):
            assert isinstance(c.place(req(f"old{i}", 400, (i,), 100), 0.0), Placement)
            c.on_prefill_start(f"old{i}", 0.0)
            c.on_prefill_finish(f"old{i}", 0.0, 400, 0, 0.4)
            c.on_decode_join(f"old{i}", 0.0)
        for i in range(20):
            c.decode_loads["D"].expect(f"mid{i}", DecodeSeq(10, 100, 0.5, None, 100))
        c.prefill_loads["P"].enqueue("filler", 0.9)
        return c

    new = req("new", 100, (99,), 10)
    assert isinstance(build(0.008).place(new, 0.0), Placement)
    rej = build(None).place(new, 0.0)
    assert isinstance(rej, Rejection) and "KV" in rej.reason


def test_decode_refuses_when_full_and_leave_frees(tiny_cost: CostModel) -> None:
    """No admission: both requests (600 KV tokens each) are placed on D (1000 tokens).
    The first joins; the second is refused at decode; after the first leaves, D is
    empty again."""
    c = Conductor(ConductorConfig(prefill_policy="load_balancing"), ["P"], {"D": 1000}, tiny_cost)
    a, b = req("a", 500, (1,), 100), req("b", 500, (2,), 100)
    assert isinstance(c.place(a, 0.0), Placement) and isinstance(c.place(b, 0.0), Placement)
    assert c.admit_to_decode("a", 1.0) is None
    c.on_decode_join("a", 1.0)
    refused = c.admit_to_decode("b", 1.5)
    assert isinstance(refused, Rejection) and "full" in refused.reason
    c.on_decode_leave("b", 1.5)
    c.on_decode_leave("a", 2.0)
    load = c.decode_loads["D"]
    assert (load.kv_running, load.kv_incoming, len(load.running)) == (0, 0, 0)
    assert c.prefill_loads["P"].queue_time(2.0) == 0.0


def test_prefill_timings_refine_estimates(tiny_cost: CostModel) -> None:
    """Observed prefills 3× slower than the formula pull the estimate up."""
    c = Conductor(ConductorConfig(), ["P"], {"D": 10**6}, tiny_cost)
    before = c.estimator.estimate(4000, 0)
    for n in range(500, 20000, 250):
        c.on_prefill_finish("x", 0.0, n, 0, 3 * n / 1000)
    assert before == pytest.approx(4.0)
    assert c.estimator.estimate(4000, 0) == pytest.approx(12.0, rel=0.1)


def test_decode_steps_take_over_the_step_time_after_enough_of_them(tiny_cost: CostModel) -> None:
    """The TBT estimate uses the roofline (2 ms per sequence) until MIN_DECODE_STEPS
    decode-only steps were observed, then the fit: an engine at 50 ms + 10 ms per
    sequence makes a batch of 4 cost ~90 ms instead of 8 ms."""
    from mooncake.conductor.policy import MIN_DECODE_STEPS

    c = Conductor(ConductorConfig(), ["P"], {"D": 10**6}, tiny_cost)
    for i in range(MIN_DECODE_STEPS - 1):
        c.on_decode_step(1 + i % 4, 100, 0.05 + 0.01 * (1 + i % 4))
    assert c.step_time(4, 100) == pytest.approx(0.008)
    for i in range(64):
        c.on_decode_step(1 + i % 4, 100 + i, 0.05 + 0.01 * (1 + i % 4))
    assert c.step_time(4, 100) == pytest.approx(0.09, rel=0.05)


def test_colocated_decodes_where_it_prefills(tiny_cost: CostModel) -> None:
    """Colocated: the decode instance is the prefill instance."""
    cfg = ConductorConfig(prefill_policy="load_balancing", colocated=True)
    c = Conductor(cfg, ["I0", "I1"], {"I0": 10**6, "I1": 10**6}, tiny_cost)
    c.prefill_loads["I0"].enqueue("busy", 5.0)
    p = c.place(req("r", 100, (1,)), 0.0)
    assert isinstance(p, Placement) and p.prefill == p.decode == "I1"
    with pytest.raises(ValueError, match="decode_workers"):
        Conductor(cfg, ["I0"], {"D": 1}, tiny_cost)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prefill_policy": "best"}, "prefill_policy"),
        ({"admission": "maybe"}, "admission"),
        ({"ttft_slo_s": 0}, "ttft_slo_s"),
        ({"kvcache_balancing_threshold": 0.5}, "kvcache_balancing_threshold"),
    ],
)
def test_config_validates(kwargs: dict[str, object], field: str) -> None:
    """Bad values raise ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        ConductorConfig(**kwargs)  # type: ignore[arg-type]


def test_ttft_only_admission_leaves_decode_check_for_later(tiny_cost: CostModel) -> None:
    """admission='ttft' (Table 3's baseline): a request whose KV cannot fit on the decode
    instance is still admitted at arrival (TTFT 0.5 s ≤ 30 s) and only refused by
    admit_to_decode; a request estimated at 40 s TTFT is rejected up front."""
    cfg = ConductorConfig(prefill_policy="load_balancing", admission="ttft")
    c = Conductor(cfg, ["P"], {"D": 100}, tiny_cost)
    big = c.place(req("big", 500, (1,), 10), 0.0)
    assert isinstance(big, Placement)
    assert isinstance(c.admit_to_decode("big", 0.5), Rejection)
    slow = c.place(req("slow", 40_000, (2,), 10), 0.0)
    assert isinstance(slow, Rejection) and "TTFT" in slow.reason


def test_worker_removal_forgets_its_blocks_and_load(tiny_cost: CostModel) -> None:
    """Two decode instances; D1 holds a request and P's blocks are indexed. P2 and D1
    leave: remove_worker names the requests placed on them, their blocks leave the global
    index, and every later event for those requests (start, finish, join, leave, the
    decode check) is a no-op instead of a KeyError."""
    c = Conductor(ConductorConfig(), ["P1", "P2"], {"D1": 10**6, "D2": 10**6}, tiny_cost)
    c.on_blocks_stored("P2", [1, 2])
    placed = [c.place(req(f"r{i}", 1000, (1, 2)), 0.0) for i in range(4)]
    assert all(isinstance(p, Placement) for p in placed)
    on_d1 = sorted(p.request_id for p in placed if isinstance(p, Placement) and p.decode == "D1")
    on_p2 = sorted(p.request_id for p in placed if isinstance(p, Placement) and p.prefill == "P2")
    assert on_d1 and sorted(c.remove_worker("D1")) == on_d1
    assert sorted(c.remove_worker("P2")) == sorted(set(on_d1) | set(on_p2))
    assert c.index.match_prefix([1, 2]) == {} and "D1" not in c.decode_loads
    for p in placed:
        assert isinstance(p, Placement)
        c.on_prefill_start(p.request_id, 0.1)
        c.on_prefill_finish(p.request_id, 0.2, 1000, 0, 0.1)
        c.on_decode_join(p.request_id, 0.3)
        if p.decode == "D1":
            rej = c.admit_to_decode(p.request_id, 0.3)
            assert isinstance(rej, Rejection) and "left" in rej.reason
        c.on_decode_leave(p.request_id, 0.4)
    assert c.placement_of("r0") is None
    assert not c.decode_loads["D2"].running and not c.prefill_loads["P1"].running
    again = c.place(req("r9", 1000, (1, 2)), 1.0)
    assert isinstance(again, Placement) and (again.prefill, again.decode) == ("P1", "D2")


def test_no_worker_of_a_role_rejects_as_unavailable(tiny_cost: CostModel) -> None:
    """With the only decode instance gone, placing is refused with the no-worker reason
    (an outage), not a KeyError; once one joins, requests are placed again."""
    from mooncake.conductor.policy import NO_WORKER

    c = Conductor(ConductorConfig(), ["P"], {"D": 10**6}, tiny_cost)
    c.remove_worker("D")
    rej = c.place(req("r", 100, (1,)), 0.0)
    assert isinstance(rej, Rejection) and rej.reason == f"{NO_WORKER}decode"
    c.add_decode_worker("D-new", 10**6)
    ok = c.place(req("r", 100, (1,)), 0.0)
    assert isinstance(ok, Placement) and ok.decode == "D-new"


def test_decode_load_uses_expected_output_length(tiny_cost: CostModel) -> None:
    """Requests cap their output at 1000 tokens but 16 finished ones generated 20: the
    next placement plans 20 output tokens on the decode instance (not 1000), reports it
    on the Placement, and the error of the tracked guesses is scored. With
    output_prediction="max_tokens" the cap is planned."""
    c = Conductor(ConductorConfig(), ["P"], {"D": 10**6}, tiny_cost)
    for i in range(16):
        c.on_request_finished(f"old{i}", 20)
    p = c.place(req("new", 1000, (1, 2), out=1000), 0.0)
    assert isinstance(p, Placement) and p.expected_output_len == 20
    assert c.decode_loads["D"].incoming["new"].output_len == 20
    c.on_request_finished("new", 30)
    assert c.outputs.error().count == 1 and c.outputs.error().mae_tokens == 10
    cap = Conductor(ConductorConfig(output_prediction="max_tokens"), ["P"], {"D": 10**6}, tiny_cost)
    for i in range(16):
        cap.on_request_finished(f"old{i}", 20)
    q = cap.place(req("new", 1000, (1, 2), out=1000), 0.0)
    assert isinstance(q, Placement) and q.expected_output_len == 1000


@pytest.mark.parametrize("vectorized", [True, False])
def test_excluded_instances_are_placed_as_if_gone(tiny_cost: CostModel, vectorized: bool) -> None:
    """P2 holds the prompt's blocks and D1 is the emptier decode instance, so a plain
    placement takes P2 (or fetches from it) and D1. Excluding P2 and D1 (a client saw them
    die before the scheduler removed them) places on P1 and D2 without fetching from P2,
    leaves the instances known (nothing removed), and excluding the only decode instance
    left refuses the request as unavailable."""
    from mooncake.conductor.policy import NO_WORKER

    decoders = {"D1": 10**6, "D2": 10**6}
    c = Conductor(ConductorConfig(), ["P1", "P2"], decoders, tiny_cost, vectorized=vectorized)
    c.on_blocks_stored("P2", [1, 2])
    c.place(req("busy", 100, (9,)), 0.0, exclude=("D1",))  # D2 holds one request
    plain = c.place(req("a", 1000, (1, 2)), 0.0)
    assert isinstance(plain, Placement) and plain.decode == "D1"
    assert plain.prefill == "P2" or plain.fetch_from == "P2"
    moved = c.place(req("b", 1000, (1, 2)), 0.0, exclude=("P2", "D1"))
    assert isinstance(moved, Placement)
    assert (moved.prefill, moved.decode, moved.fetch_from) == ("P1", "D2", None)
    assert set(c.decode_loads) == {"D1", "D2"} and set(c.prefill_loads) == {"P1", "P2"}
    none = c.place(req("c", 1000, (1, 2)), 0.0, exclude=("D1", "D2"))
    assert isinstance(none, Rejection) and none.reason == f"{NO_WORKER}decode"
    unknown = c.place(req("d", 1000, (1, 2)), 0.0, exclude=("gone-long-ago",))
    assert isinstance(unknown, Placement)


@pytest.mark.parametrize("vectorized", [True, False])
def test_predictive_checks_the_whole_stay_at_decode(tiny_cost: CostModel, vectorized: bool) -> None:
    """Decode D holds 1000 KV tokens, t_d fixed at 0.1 s. A request already placed (700
    KV tokens) reaches D at 3 s. A new one (prompt 300, 10 output tokens: 310 tokens)
    reaches D at 0.3 s and decodes until 1.2 s: it fits the whole time, admitted. With
    100 output tokens (400 tokens) it would still be decoding at 3 s, when the placed
    one arrives: 700 + 400 > 1000 tokens then, so predictive admission refuses it,
    although D is empty at its arrival (a live decode instance would make one of them
    wait for memory)."""
    from mooncake.conductor import DecodeSeq

    def build() -> Conductor:
        cfg = ConductorConfig(
            prefill_policy="load_balancing", admission="predictive", decode_token_time_s=0.1
        )
        c = Conductor(cfg, ["P"], {"D": 1000}, tiny_cost, vectorized=vectorized)
        c.decode_loads["D"].expect("placed", DecodeSeq(600, 100, 3.0))
        return c

    assert isinstance(build().place(req("short", 300, (1,), 10), 0.0), Placement)
    rej = build().place(req("long", 300, (1,), 100), 0.0)
    assert isinstance(rej, Rejection) and "KV" in rej.reason
