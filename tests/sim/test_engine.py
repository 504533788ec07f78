"""End-to-end replays of tiny synthetic traces with hand-computed results.

Tiny cost model (conftest): prefill (n − c)/1000 s, decode step 2·batch/1000 s,
KV transfer tokens/1e6 s (one layer, so the whole transfer to decode is exposed).
"""

from __future__ import annotations

import pytest

from mooncake.conductor import ConductorConfig, CostModel
from mooncake.sim import SimConfig, Simulator, make_request, simulate


def disagg(cost: CostModel, p: int = 1, d: int = 1, **conductor: object) -> SimConfig:
    cc = ConductorConfig(**conductor)  # type: ignore[arg-type]
    return SimConfig(
        prefill_instances=p, decode_instances=d, conductor=cc, cost=cost, prefill_cache_blocks=None
    )


def test_prefill_fifo_queueing(tiny_cost: CostModel) -> None:
    """1P+1D. r0 (1000 tok) and r1 (2000) at t=0, r2 (1000) at t=0.5, one output token
    each. Prefill runs 0–1, 1–3, 3–4; transfer to decode adds n/1e6 s.
    TTFT: 1.001, 3.002, 4.001 − 0.5 = 3.501."""
    reqs = [
        make_request(0, 0.0, 1000, 1),
        make_request(1, 0.0, 2000, 1),
        make_request(2, 0.5, 1000, 1),
    ]
    res = simulate(disagg(tiny_cost, prefill_policy="load_balancing"), reqs)
    assert [r.ttft_s for r in res.records] == pytest.approx([1.001, 3.002, 3.501])
    assert [r.tbt_s for r in res.records] == [0.0, 0.0, 0.0]
    assert res.summary.prefill_gpu_s == pytest.approx(4.0)


def test_decode_batch_step_time(tiny_cost: CostModel) -> None:
    """2P+1D: two 1000-token prompts prefill in parallel (0–1 s), reach decode at
    1.001 s and decode 10 tokens each in a batch of 2 (4 ms per step): finish at
    1.041 s, TBT 4 ms."""
    reqs = [make_request(0, 0.0, 1000, 11), make_request(1, 0.0, 1000, 11)]
    res = simulate(disagg(tiny_cost, p=2, prefill_policy="load_balancing"), reqs)
    assert {r.prefill_instance for r in res.records} == {"prefill-0", "prefill-1"}
    assert [r.finish_s for r in res.records] == pytest.approx([1.041, 1.041])
    assert [r.tbt_s for r in res.records] == pytest.approx([0.004, 0.004])


def test_prefix_hits_are_counted(tiny_cost: CostModel) -> None:
    """A = blocks [1,2] (1024 tok) at t=0; B = [1,2,3] (1536 tok) at t=10 reuses 1024
    tokens: prefill 0.512 s, TTFT 0.512 + 0.001536. Hit rate 1024 / 2560 = 0.4."""
    reqs = [make_request(0, 0.0, 1024, 1, [1, 2]), make_request(1, 10.0, 1536, 1, [1, 2, 3])]
    res = simulate(disagg(tiny_cost), reqs)
    b = res.records[1]
    assert b.cached_tokens == 1024 and b.ttft_s == pytest.approx(0.513536)
    assert res.summary.cache_hit_rate == pytest.approx(0.4)
    assert res.summary.prefill_gpu_s == pytest.approx(1.024 + 0.512)


def test_global_cache_aware_fetches_and_replicates(tiny_cost: CostModel) -> None:
    """2P. A ([1,2], 1024 tok) prefills on prefill-0 (0–1.024 s). L (5000 unique tokens)
    lands on prefill-0 at 1.1 s (tie → first). B ([1,2,3]) at 1.2 s: prefill-0 has
    ~4.9 s queued, so Algorithm 1 sends B to idle prefill-1, fetching 1024 tokens from
    prefill-0: TTFT = 0.001024 + 0.512 + 0.001536. Afterwards both hold blocks 1 and 2."""
    reqs = [
        make_request(0, 0.0, 1024, 1, [1, 2]),
        make_request(1, 1.1, 5000, 1),
        make_request(2, 1.2, 1536, 1, [1, 2, 3]),
    ]
    sim = Simulator(disagg(tiny_cost, p=2, prefill_policy="global_cache_aware"), reqs)
    res = sim.run()
    a, long, b = res.records
    assert (a.prefill_instance, long.prefill_instance, b.prefill_instance) == (
        "prefill-0",
        "prefill-0",
        "prefill-1",
    )
    assert b.cached_tokens == 1024
    assert b.ttft_s == pytest.approx(0.001024 + 0.512 + 0.001536)
    assert sim.conductor.index.holders(1) == {"prefill-0", "prefill-1"}


def test_early_rejection_in_replay(tiny_cost: CostModel) -> None:
    """TTFT SLO 1.5 s, early admission, 1P: r0 (1000 tok) is admitted (1 s); r1 at the
    same time would wait 1 s + 1 s = 2 s > 1.5 s → rejected. r2 at t=5 is admitted."""
    reqs = [
        make_request(0, 0.0, 1000, 1),
        make_request(1, 0.0, 1000, 1),
        make_request(2, 5.0, 1000, 1),
    ]
    res = simulate(
        disagg(tiny_cost, prefill_policy="load_balancing", admission="early", ttft_slo_s=1.5), reqs
    )
    assert [r.rejected for r in res.records] == [False, True, False]
    assert "TTFT" in res.records[1].reason
    assert res.summary.rejected == 1 and res.summary.served == 2


def test_decode_full_rejects_after_prefill_under_what_if(tiny_cost: CostModel) -> None:
    """What-if decode_refusal, no admission, 2P+1D, decode KV capacity 1500 tokens. Both
    1000-token prompts (100 output tokens, so 1100 KV tokens each) prefill in parallel
    and reach decode at 1.001 s; the first joins, the second no longer fits and is
    refused there — after its prefill was spent (FAST'25's baseline behaviour)."""
    reqs = [make_request(0, 0.0, 1000, 100), make_request(1, 0.0, 1000, 100)]
    cc = ConductorConfig(prefill_policy="load_balancing")
    cfg = SimConfig(
        prefill_instances=2,
        decode_instances=1,
        conductor=cc,
        cost=tiny_cost,
        decode_kv_tokens=1500,
        decode_refusal=True,
    )
    res = simulate(cfg, reqs)
    assert [r.rejected for r in res.records] == [False, True]
    assert "full" in res.records[1].reason
    assert res.summary.prefill_gpu_s == pytest.approx(2.0)  # the refused prefill was still spent


def test_decode_waits_for_memory_by_default(tiny_cost: CostModel) -> None:
    """As above without the what-if (the live engine's behaviour): B's KV waits in the
    decode instance's queue until A finishes at 1.001 + 99·0.002 = 1.199 s, then B
    decodes its 99 steps alone → 1.397 s. Nothing is refused; B's TTFT is its arrival at
    decode (1.001 s); its 0.198 s wait counts as one token gap, so its TBT (slowest 10
    of 100 gaps) is (0.198 + 9·0.002)/10."""
    reqs = [make_request(0, 0.0, 1000, 100), make_request(1, 0.0, 1000, 100)]
    cc = ConductorConfig(prefill_policy="load_balancing")
    cfg = SimConfig(
        prefill_instances=2, decode_instances=1, conductor=cc, cost=tiny_cost, decode_kv_tokens=1500
    )
    a, b = simulate(cfg, reqs).records
    assert not a.rejected and not b.rejected
    assert a.finish_s == pytest.approx(1.199) and b.ttft_s == pytest.approx(1.001)
    assert b.finish_s == pytest.approx(1.397) and b.tbt_s == pytest.approx(0.0216)


def test_decode_preempts_newest_and_recomputes(tiny_cost: CostModel) -> None:
    """2P+1D, decode KV 2100 tokens taken on demand; A and B (1000 tokens, 101 out)
    reach decode at 1.001 s and both fit (2000 + room for a step). The batch grows 2
    tokens per 4 ms step: after 50 steps (1.201 s) the next would pass 2100, so B, the
    newest, is preempted with 50 tokens generated. A finishes its 50 remaining 2 ms
    steps at 1.301; B's 1050 tokens are recomputed in 512/512/26-token chunks
    (1.05 s → 2.351), then B decodes its last 49 tokens → 2.449. B's slowest 10 gaps:
    the 1.15 s outage and nine 4 ms steps. With the what-if reserve_full_output, B
    (1101 tokens reserved) waits for A instead (1.201), nothing is preempted, and
    finishes at 1.401."""
    reqs = [make_request(0, 0.0, 1000, 101), make_request(1, 0.0, 1000, 101)]
    cc = ConductorConfig(prefill_policy="load_balancing")
    base = dict(
        prefill_instances=2, decode_instances=1, conductor=cc, cost=tiny_cost, decode_kv_tokens=2100
    )
    res = simulate(SimConfig(**base), reqs)  # type: ignore[arg-type]
    a, b = res.records
    assert (res.summary.preemptions, a.preemptions, b.preemptions) == (1, 0, 1)
    assert a.finish_s == pytest.approx(1.301) and b.finish_s == pytest.approx(2.449)
    assert b.tbt_s == pytest.approx((1.15 + 9 * 0.004) / 10)
    a, b = simulate(SimConfig(**base, reserve_full_output=True), reqs).records  # type: ignore[arg-type]
    assert (a.preemptions, b.preemptions) == (0, 0)
    assert a.finish_s == pytest.approx(1.201) and b.finish_s == pytest.approx(1.401)


def test_colocated_chunked_prefill_stretches_tbt(tiny_cost: CostModel) -> None:
    """One colocated instance, 512-token step budget.
    A (100 tok, 11 out) at 0: step 0–0.1 s prefills it (TTFT 0.1), then decodes alone
    at 2 ms/step. B (1000 tok, 2 out) at 0.104 s (A has done 2 steps): mixed steps of
    A's token + 511 B tokens (0.513 s) and A's token + 489 (0.491 s) → B's TTFT
    1.108 − 0.104 = 1.004. Then A and B decode together (4 ms): B finishes at 1.112;
    A has 5 more 2 ms steps → 1.122. A's 10 gaps: slowest 10% = one 0.513 s gap."""
    reqs = [make_request(0, 0.0, 100, 11), make_request(1, 0.104, 1000, 2)]
    cc = ConductorConfig(prefill_policy="load_balancing", colocated=True)
    cfg = SimConfig(
        mode="colocated",
        prefill_instances=1,
        decode_instances=0,
        conductor=cc,
        cost=tiny_cost,
        chunk_tokens=512,
    )
    a, b = simulate(cfg, reqs).records
    assert a.ttft_s == pytest.approx(0.1)
    assert b.ttft_s == pytest.approx(1.004)
    assert b.finish_s == pytest.approx(1.112) and b.tbt_s == pytest.approx(0.004)
    assert a.finish_s == pytest.approx(1.122) and a.tbt_s == pytest.approx(0.513)


def test_colocated_waits_for_kv_memory(tiny_cost: CostModel) -> None:
    """Colocated instance with 1200 KV tokens: A (1000 + 11) runs; B (1000 + 11) arrives
    at 0 too but cannot be reserved until A finishes at 1.0 + 10·0.002 = 1.02 s; then
    B prefills in 2 steps (512 + 488 tokens → 1.0 s) → TTFT 2.02 s, nothing rejected."""
    reqs = [make_request(0, 0.0, 1000, 11), make_request(1, 0.0, 1000, 11)]
    cc = ConductorConfig(prefill_policy="load_balancing", colocated=True)
    cfg = SimConfig(
        mode="colocated",
        prefill_instances=1,
        decode_instances=0,
        conductor=cc,
        cost=tiny_cost,
        decode_kv_tokens=1200,
    )
    a, b = simulate(cfg, reqs).records
    assert a.ttft_s == pytest.approx(1.0)
    assert b.ttft_s == pytest.approx(2.02)
    assert not a.rejected and not b.rejected


def test_progress_bar_counts_finished_requests(
    tiny_cost: CostModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All 5 requests arrive at t=0 and take seconds to serve: the bar moves only when a
    request is finished (or rejected), so after the arrivals it still reads 0, and every
    update matches the number of requests done."""
    import mooncake.sim.engine as engine

    counts: list[tuple[int, int]] = []
    sim = Simulator(
        SimConfig(cost=tiny_cost, prefill_instances=1, decode_instances=1),
        [make_request(i, 0.0, 1000, 50) for i in range(5)],
        progress=True,
    )

    class Bar:
        def __init__(self, **kw: object) -> None:
            self.n = 0

        def update(self, k: int) -> None:
            self.n += k
            done = sum(1 for r in sim.records if r.rejected or r.finish_s is not None)
            counts.append((self.n, done))

        def close(self) -> None:
            pass

    monkeypatch.setattr(engine, "tqdm", Bar)
    sim.run()
    assert [n for n, _ in counts] == [1, 2, 3, 4, 5]
    assert all(n == done for n, done in counts)


def test_replay_reports_output_length_prediction_error(tiny_cost: CostModel) -> None:
    """40 requests that generate 10 tokens each, all capped at max_tokens=200. The first
    is predicted at the cap (error 190); once requests finish the Conductor predicts
    10, so the mean error is far below 190 and the bias positive. Planning with the cap
    (output_prediction="max_tokens") errs by 190 on every request."""
    reqs = [make_request(i, 0.5 * i, 600, 10) for i in range(40)]
    cfg = disagg(tiny_cost)
    res = simulate(SimConfig(**{**cfg.__dict__, "max_tokens": 200}), reqs)
    s = res.summary
    assert res.records[0].predicted_output_len == 200 and res.records[-1].predicted_output_len == 10
    assert 0 < s.output_len_mae < 50 and s.output_len_bias > 0
    capped = simulate(
        SimConfig(
            **{
                **cfg.__dict__,
                "max_tokens": 200,
                "conductor": ConductorConfig(output_prediction="max_tokens"),
            }
        ),
        reqs,
    )
    assert capped.summary.output_len_mae == pytest.approx(
        190
    ) and capped.summary.output_len_rel_error == pytest.approx(19)


def test_step_overhead_lengthens_every_step(tiny_cost: CostModel) -> None:
    """A 5 ms per-step overhead on the tiny model: a 1000-token prompt with 11 output
    tokens decodes 10 steps of 2 + 5 ms on its decode instance → finishes at
    1.001 + 0.07 s, TBT 7 ms. Colocated, its two 512-token-budget prefill steps cost
    5 ms more each too."""
    from mooncake.conductor import HardwareSpec

    cost = CostModel(
        tiny_cost.model,
        HardwareSpec(
            **{
                **{f: getattr(tiny_cost.hardware, f) for f in HardwareSpec.__slots__},
                "step_overhead_s": 0.005,
            }
        ),
    )
    (r,) = simulate(disagg(cost), [make_request(0, 0.0, 1000, 11)]).records
    assert r.finish_s == pytest.approx(1.071) and r.tbt_s == pytest.approx(0.007)
    cc = ConductorConfig(prefill_policy="load_balancing", colocated=True)
    (c,) = simulate(
        SimConfig(
            mode="colocated", prefill_instances=1, decode_instances=0, conductor=cc, cost=cost
        ),
        [make_request(0, 0.0, 1000, 11)],
    ).records
    assert c.ttft_s == pytest.approx(1.01)


def test_colocated_cache_aware_routing_and_no_prefix_cache(tiny_cost: CostModel) -> None:
    """Two colocated instances. A (blocks 1,2) at 0 and B (blocks 3,4) at 0 go to one
    instance each; C (blocks 1,2,5) at 5 s: load-based routing sends it to the least
    loaded instance by name order (instance-0, where A ran: a hit either way), so D
    (blocks 3,4,6) tells them apart: cache-aware routing sends it where B ran and reuses
    1024 tokens; load-only routing picks instance-0 and reuses nothing. Without prefix
    caching (cache 0 blocks) nothing is reused at all."""
    reqs = [
        make_request(0, 0.0, 1024, 2, [1, 2]),
        make_request(1, 0.0, 1024, 2, [3, 4]),
        make_request(2, 5.0, 1536, 2, [1, 2, 5]),
        make_request(3, 10.0, 1536, 2, [3, 4, 6]),
    ]

    def run(policy: str, cache: int | None) -> list[int]:
        cc = ConductorConfig(prefill_policy=policy, colocated=True)  # type: ignore[arg-type]
        cfg = SimConfig(
            mode="colocated",
            prefill_instances=2,
            decode_instances=0,
            conductor=cc,
            cost=tiny_cost,
            colocated_cache_blocks=cache,
        )
        return [r.cached_tokens for r in simulate(cfg, reqs).records]

    assert run("local_cache_aware", None) == [0, 0, 1024, 1024]
    assert run("load_balancing", None)[3] == 0
    assert run("local_cache_aware", 0) == [0, 0, 0, 0]


def test_request_overhead_delays_each_prefill(tiny_cost: CostModel) -> None:
    """A 50 ms serving-path overhead per request (a live cluster's export): r0 and r1
    (1000 tokens each, t=0) reach the prefill queue at 0.05 s, so TTFTs are 1.051 and
    2.051 instead of 1.001 and 2.001; colocated, the lone request's TTFT grows by 50 ms
    too."""
    from dataclasses import replace

    cost = replace(tiny_cost, hardware=replace(tiny_cost.hardware, request_overhead_s=0.05))
    reqs = [make_request(0, 0.0, 1000, 1), make_request(1, 0.0, 1000, 1)]
    res = simulate(disagg(cost, prefill_policy="load_balancing"), reqs)
    assert [r.ttft_s for r in res.records] == pytest.approx([1.051, 2.051])
    cc = ConductorConfig(prefill_policy="load_balancing", colocated=True)
    colocated = [
        simulate(
            SimConfig(
                mode="colocated", prefill_instances=1, decode_instances=0, conductor=cc, cost=c
            ),
            [make_request(0, 0.0, 1000, 2)],
        ).records[0]
        for c in (tiny_cost, cost)
    ]
    assert colocated[1].ttft_s == pytest.approx(colocated[0].ttft_s + 0.05)


def batched(tiny_cost: CostModel, **hw: object) -> CostModel:
    """The tiny cost model with a fitted prefill of (n − c)/1000 s + 50 ms per step and
    the given hardware fields (a live export's prefill step budget, hand-off, ...)."""
    from dataclasses import replace

    return replace(
        tiny_cost,
        hardware=replace(tiny_cost.hardware, **hw),  # type: ignore[arg-type]
        prefill_fit=(0.0, 1e-3, 0.05),
    )


def test_batched_prefill_computes_a_burst_in_one_step(tiny_cost: CostModel) -> None:
    """With the live engine's step budget (4096 tokens) r0 (1000 tok) and r1 (2000) at
    t=0 share one prefill step of 3000/1000 + 0.05 = 3.05 s (the fixed cost once), so
    both TTFTs are 3.05 s + their transfer; one prompt at a time (no budget) gives
    1.05 and 3.10 s."""
    reqs = [make_request(0, 0.0, 1000, 1), make_request(1, 0.0, 2000, 1)]
    res = simulate(disagg(batched(tiny_cost, prefill_step_tokens=4096)), reqs)
    assert [r.ttft_s for r in res.records] == pytest.approx([3.051, 3.052])
    assert res.summary.prefill_gpu_s == pytest.approx(3.05)
    fifo = simulate(disagg(batched(tiny_cost)), reqs)
    assert [r.ttft_s for r in fifo.records] == pytest.approx([1.051, 3.102])


def test_batched_prefill_chunks_under_the_budget(tiny_cost: CostModel) -> None:
    """Budget 1500 tokens: step 1 computes r0 whole (1000) and r1's first 500 (1.55 s),
    step 2 r1's last 1500 (1.55 s): TTFTs 1.551 and 3.102. With at most one prompt per
    step (max_num_seqs 1) r1 waits for r0's step: 1.051 and 1.05 + 2.05 + 0.002."""
    reqs = [make_request(0, 0.0, 1000, 1), make_request(1, 0.0, 2000, 1)]
    res = simulate(disagg(batched(tiny_cost, prefill_step_tokens=1500)), reqs)
    assert [r.ttft_s for r in res.records] == pytest.approx([1.551, 3.102])
    one = batched(tiny_cost, prefill_step_tokens=4096, prefill_max_seqs=1)
    res = simulate(disagg(one), reqs)
    assert [r.ttft_s for r in res.records] == pytest.approx([1.051, 3.102])
    chunked = batched(tiny_cost, prefill_step_tokens=4096, prefill_chunk_tokens=800)
    res = simulate(disagg(chunked), [make_request(0, 0.0, 2000, 1)])
    # 800 + 800 + 400 tokens in three steps, each with its 50 ms.
    assert res.records[0].ttft_s == pytest.approx(2.0 + 0.15 + 0.002)


def test_handoff_and_step_gap_are_token_gaps(tiny_cost: CostModel) -> None:
    """A measured 100 ms hand-off and 1 ms engine-loop gap per step: r0 (1000 tok, 11
    out) keeps its TTFT (1.001 s), joins decode 0.1 s later and decodes 10 tokens at
    2 + 1 ms each: finish 1.131 s; its TBT counts the hand-off as one gap. r1 (one
    output token, finished by prefill) has no hand-off."""
    from mooncake.sim.metrics import slowest_gaps_mean

    cost = batched(tiny_cost, handoff_s=0.1, token_overhead_s=0.001)
    cost = CostModel(cost.model, cost.hardware)  # the unfitted prefill: (n − c)/1000 s
    res = simulate(disagg(cost), [make_request(0, 0.0, 1000, 11)])
    r = res.records[0]
    assert r.ttft_s == pytest.approx(1.001) and r.finish_s == pytest.approx(1.131)
    assert r.tbt_s == pytest.approx(slowest_gaps_mean([(0.1, 1.0), (0.003, 10.0)]))
    one = simulate(disagg(cost), [make_request(1, 0.0, 1000, 1)]).records[0]
    assert one.ttft_s == pytest.approx(1.001) and one.tbt_s == 0.0
