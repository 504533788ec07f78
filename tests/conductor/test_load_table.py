"""The vectorised decision path (load tables) against the per-instance reference:
same choices, same floats, on random states full of ties."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mooncake.conductor import (
    Conductor,
    ConductorConfig,
    CostModel,
    DecodeScheduler,
    PrefillLoad,
    PrefillScheduler,
    Rejection,
    RequestInfo,
)
from mooncake.conductor.load_table import DecodeTable, PrefillTable
from mooncake.conductor.state import DecodeLoad, DecodeSeq

from .conftest import make_tiny_cost


def random_prefill_loads(rng: random.Random, n: int, now: float) -> dict[str, PrefillLoad]:
    """``n`` instances: idle, queued only, one job running (some overran their
    estimate), or several running; queue lengths on a coarse grid so many tie."""
    loads: dict[str, PrefillLoad] = {}
    for i in rng.sample(range(10 * n), n):  # registration order != name order
        load = PrefillLoad()
        kind = rng.random()
        if kind > 0.3:
            for k in range(rng.randint(1, 3)):
                load.enqueue(f"q{i}-{k}", rng.choice([0.5, 1.0, 0.25, rng.random()]))
        if kind > 0.5:
            load.start(f"q{i}-0", now - rng.choice([0.0, 0.25, 2.0, rng.random()]))
        if kind > 0.9 and len(load.queued) > 0:
            load.start(next(iter(load.queued)), now - rng.random())
        loads[f"w{i:03d}"] = load
    return loads


def table_of(loads: dict[str, PrefillLoad]) -> PrefillTable:
    table = PrefillTable()
    for w, load in loads.items():
        table.add(w, load)
    return table


def coarse_estimate(n: int, c: int) -> float:
    """Prefill time on a 0.25 s grid: many instances tie exactly."""
    return round(max(0, n - c) / 4000) * 0.25


@pytest.mark.parametrize("policy", ["load_balancing", "local_cache_aware", "global_cache_aware"])
def test_prefill_vector_path_equals_reference(policy: str) -> None:
    """400 random states of 1-64 prefill instances with random prefix holders (equal
    block counts, holders that are not prefill instances, a zero count), thresholds 1
    and 1.5: the table path returns the very PrefillChoice the reference loop does
    (worker, queue, estimates, fetch source: all equal, floats exactly)."""
    rng = random.Random(7)
    for trial in range(400):
        now = rng.choice([0.0, 1.0, 3.7])
        loads = random_prefill_loads(rng, rng.randint(1, 64), now)
        names = list(loads)
        holders = rng.sample(names, rng.randint(0, len(names)))
        pb = {w: rng.choice([0, 1, 2, 2, 3, 8]) for w in holders}
        if rng.random() < 0.3:
            pb["decode-only"] = 9  # holds blocks, is no prefill instance
        pb = dict(sorted(pb.items()))
        n = rng.choice([1, 600, 2048, 5000])
        req = RequestInfo(f"r{trial}", n, tuple(range(8)), 10)
        s = PrefillScheduler(policy, rng.choice([1.0, 1.5]), 512)  # type: ignore[arg-type]
        estimate = coarse_estimate if trial % 2 else (lambda n, c: (n - c) / 1000)
        transfer = (lambda t: round(t / 2000) * 0.25) if trial % 3 else (lambda t: t / 1e4)
        ref = s.choose(req, now, loads, pb, estimate, transfer)
        fast = s.choose(req, now, loads, pb, estimate, transfer, table_of(loads))
        assert fast == ref, (trial, fast, ref)


def test_decode_vector_path_equals_reference() -> None:
    """400 random decode views (batches and KV on coarse grids: ties; some instances
    full or at the batch cap; sometimes none with room): choose_vector picks the same
    instance with the same TBT and fit as choose."""
    rng = random.Random(11)
    cost = CostModel()
    for trial in range(400):
        k = rng.randint(1, 64)
        names = [f"d{i}" for i in rng.sample(range(100), k)]
        batch = np.array([rng.choice([0, 1, 2, 8, 16]) for _ in names], dtype=np.int64)
        kv = np.array([rng.choice([0, 1000, 5000, 90_000]) for _ in names], dtype=np.int64)
        cap = np.array([rng.choice([6000, 100_000, 10**6]) for _ in names], dtype=np.int64)
        req = RequestInfo("r", rng.choice([100, 3000, 50_000]), (), rng.choice([10, 500]))
        s = DecodeScheduler(max_batch=rng.choice([4, 16, 1024]))
        views = {w: (int(b), int(x)) for w, b, x in zip(names, batch, kv, strict=True)}
        capacity = {w: int(c) for w, c in zip(names, cap, strict=True)}
        ref = s.choose(req, views, capacity, cost.decode_step_time)
        fast = s.choose_vector(
            req, names, batch, kv, cap, cost.decode_step_times, cost.decode_step_time
        )
        assert fast == ref, (trial, fast, ref)


def test_decode_step_times_are_the_scalar_floats() -> None:
    """CostModel.decode_step_times gives decode_step_time's floats bit for bit, on
    both sides of the compute/memory roofline (default model and the tiny one)."""
    for cost in (CostModel(), make_tiny_cost()):
        batch = np.array([1, 2, 7, 64, 513, 1024], dtype=np.int64)
        kv = np.array([0, 1, 4097, 10**5, 3 * 10**6, 10**7], dtype=np.int64)
        vec = cost.decode_step_times(batch, kv)
        for i in range(len(batch)):
            assert vec[i] == cost.decode_step_time(int(batch[i]), int(kv[i]))


def test_fitted_decode_step_times_are_the_scalar_floats() -> None:
    """With a decode fit (an exported cost model) and with the Conductor's online
    estimator, the array forms give the scalar forms' floats bit for bit, so the
    vectorised placement picks what the per-instance one would."""
    from dataclasses import replace

    from mooncake.conductor import DecodeStepEstimator

    batch = np.array([1, 2, 7, 64, 513, 1024], dtype=np.int64)
    kv = np.array([0, 1, 4097, 10**5, 3 * 10**6, 10**7], dtype=np.int64)
    cost = replace(CostModel(), decode_fit=(0.0123, 0.00071, 3.3e-8))
    vec = cost.decode_step_times(batch, kv)
    est = DecodeStepEstimator(make_tiny_cost())
    for i in range(40):
        est.observe(1 + i % 9, 1000 + 77 * i, 0.01 + 0.001 * (1 + i % 9) + 1e-6 * (1000 + 77 * i))
    many = est.estimate_many(batch, kv)
    for i in range(len(batch)):
        assert vec[i] == cost.decode_step_time(int(batch[i]), int(kv[i]))
        assert many[i] == est.estimate(int(batch[i]), int(kv[i]))


def test_tables_follow_load_events_and_membership() -> None:
    """Loads mutated after registration (enqueue/start/finish, expect/join/leave) and
    instances removed from the middle: the tables' rows stay the loads' numbers and
    slots stay registration order."""
    pt, dt = PrefillTable(), DecodeTable()
    ploads = {w: PrefillLoad() for w in "abcd"}
    dloads = {w: DecodeLoad(1000) for w in "abcd"}
    for w in "abcd":
        pt.add(w, ploads[w])
        dt.add(w, dloads[w])
    ploads["c"].enqueue("x", 2.0)
    ploads["c"].enqueue("y", 1.0)
    ploads["c"].start("x", 0.5)
    ploads["d"].enqueue("z", 4.0)
    dloads["b"].expect("r1", DecodeSeq(100, 10, 1.0))
    dloads["b"].expect("r2", DecodeSeq(50, 5, 1.0))
    dloads["b"].join("r1", 1.0)
    pt.remove("a")
    dt.remove("a")
    assert pt.names == ["b", "c", "d"] and dt.names == ["b", "c", "d"]
    ploads["d"].finish("z")
    dloads["b"].leave("r2")
    assert list(pt.queue_times(1.0)) == [ploads[w].queue_time(1.0) for w in "bcd"]
    batch, kv = dt.view(committed=True)
    assert list(batch) == [1, 0, 0] and list(kv) == [110, 0, 0]
    assert ploads["a"].listener is None and pt.slot_of == {"b": 0, "c": 1, "d": 2}
    with pytest.raises(ValueError, match="worker"):
        pt.add("b", PrefillLoad())


def drive(c: Conductor, rng: random.Random, steps: int) -> list[object]:
    """A random life: placements, prefill start/finish, decode join/leave, blocks
    stored/evicted, instances joining and leaving. Returns every decision."""
    out: list[object] = []
    placed: list[str] = []
    started: set[str] = set()
    now = 0.0
    for step in range(steps):
        now += rng.choice([0.0, 0.0, 0.05, 0.3])
        roll = rng.random()
        if roll < 0.45:
            n = rng.choice([300, 1200, 4000])
            first = rng.choice([0, 0, 1, 2])
            keys = tuple([first * 100 + k for k in range(n // 512 + 1)])
            d = c.place(RequestInfo(f"r{step}", n, keys, rng.choice([50, 400])), now)
            out.append(d)
            if not isinstance(d, Rejection):
                placed.append(d.request_id)
        elif roll < 0.6 and placed:
            rid = rng.choice(placed)
            c.on_prefill_start(rid, now)
            started.add(rid)
        elif roll < 0.7 and placed:
            rid = rng.choice(placed)
            p = c.placement_of(rid)
            c.on_prefill_finish(rid, now, 1000, 0, 0.5)
            c.on_decode_join(rid, now)
            if p is not None:
                c.on_blocks_stored(p.prefill, [k for k in range(rng.randint(1, 8))])
        elif roll < 0.8 and placed:
            rid = placed.pop(rng.randrange(len(placed)))
            c.on_request_finished(rid, rng.randint(1, 400))
            c.on_decode_leave(rid, now)
        elif roll < 0.88:
            w = rng.choice(list(c.prefill_loads) or ["p0"])
            first = rng.choice([0, 1, 2])
            c.on_blocks_stored(w, [first * 100 + k for k in range(rng.randint(1, 9))])
        elif roll < 0.93:
            w = rng.choice(list(c.prefill_loads) or ["p0"])
            c.on_blocks_removed(w, [rng.randint(0, 8)])
        elif roll < 0.96:
            victims = list(c.prefill_loads) + list(c.decode_loads)
            if len(c.prefill_loads) > 1 and len(c.decode_loads) > 1:
                out.append(sorted(c.remove_worker(rng.choice(victims))))
        else:
            c.add_prefill_worker(f"p{rng.randint(0, 40)}")
            c.add_decode_worker(f"d{rng.randint(0, 40)}", rng.choice([20_000, 200_000]))
    return out


@pytest.mark.parametrize(
    ("policy", "admission", "extra"),
    [
        ("global_cache_aware", "none", {}),
        ("global_cache_aware", "early", {}),
        ("global_cache_aware", "predictive", {}),
        ("global_cache_aware", "predictive", {"output_prediction": "max_tokens"}),
        ("global_cache_aware", "predictive", {"decode_token_time_s": 0.004}),
        ("local_cache_aware", "ttft", {}),
        ("load_balancing", "none", {}),
    ],
)
def test_conductor_fast_path_equals_reference(
    policy: str, admission: str, extra: dict[str, object]
) -> None:
    """Two Conductors, one deciding over load tables and one with the per-instance
    reference (vectorized=False), live the same random 1000 events (with workers
    joining and leaving; with predictive admission, sequences projected with t_d from
    the step time at the projected load or fixed, and output lengths re-estimated or
    taken as the cap): every placement and rejection is equal, floats included."""
    cost = make_tiny_cost()
    for seed in range(2):
        cfg = ConductorConfig(
            prefill_policy=policy,  # type: ignore[arg-type]
            admission=admission,  # type: ignore[arg-type]
            ttft_slo_s=3.0,
            tbt_slo_s=0.5,
            kvcache_balancing_threshold=1.0 + seed * 0.5,
            **extra,  # type: ignore[arg-type]
        )
        prefill = [f"p{i}" for i in random.Random(seed).sample(range(40), 24)]
        decode = {f"d{i}": 50_000 * (1 + i % 3) for i in range(16)}
        fast = Conductor(cfg, prefill, decode, cost)
        ref = Conductor(cfg, prefill, decode, cost, vectorized=False)
        a = drive(fast, random.Random(seed), 1000)
        b = drive(ref, random.Random(seed), 1000)
        assert a == b


def test_expected_given_many_equals_expected_given() -> None:
    """Random recent lengths (ties, lengths beyond the caps), caps and tokens generated
    (fractional, beyond the cap, beyond every recent length): the vector form gives
    expected_given's integers; with nothing finished yet, the caps."""
    from mooncake.conductor import OutputLengthPredictor

    rng = random.Random(3)
    p = OutputLengthPredictor(window=64, refresh_every=4)
    caps = np.array([rng.choice([1, 5, 50, 300, 2000]) for _ in range(200)], dtype=np.int64)
    gen = np.array([rng.choice([0.0, 0.5, 3.0, 49.0, 50.0, 299.7, 5000.0]) for _ in caps])
    assert list(p.expected_given_many(caps, gen)) == list(caps)
    for _ in range(150):
        p.observe(None, rng.choice([1, 2, 50, 50, 120, 300, 1500]))
        many = p.expected_given_many(caps, gen)
        assert list(many) == [p.expected_given(int(c), float(g)) for c, g in zip(caps, gen)]
