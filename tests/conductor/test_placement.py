"""Prefill placement policies (incl. Algorithm 1) and decode placement."""

from __future__ import annotations

import pytest

from mooncake.conductor import (
    DecodeScheduler,
    PrefillLoad,
    PrefillScheduler,
    RequestInfo,
    prefix_tokens,
)


def est(n: int, c: int) -> float:
    """Prefill time (n − c)/1000 s."""
    return (n - c) / 1000


def xfer(tokens: int) -> float:
    """Transfer time tokens/10000 s."""
    return tokens / 10_000


def make_loads(**queued: float) -> dict[str, PrefillLoad]:
    loads = {}
    for w, q in queued.items():
        load = PrefillLoad()
        if q:
            load.enqueue(f"busy-{w}", q)
        loads[w] = load
    return loads


REQ = RequestInfo("r", 2048, (1, 2, 3, 4), 10)


def test_prefix_tokens_keeps_one_token_to_compute() -> None:
    """4 matched blocks of 512 for a 2048-token prompt → 2047 reusable, not 2048."""
    assert prefix_tokens(4, 2048, 512) == 2047
    assert prefix_tokens(2, 2048, 512) == 1024
    assert prefix_tokens(0, 2048, 512) == 0


def test_load_balancing_picks_shortest_queue() -> None:
    """Queues A=3 s, B=1 s, C=2 s: load balancing ignores the cache and picks B."""
    s = PrefillScheduler("load_balancing")
    c = s.choose(REQ, 0.0, make_loads(A=3, B=1, C=2), {"A": 4}, est, xfer)
    assert (
        c.worker == "B"
        and c.queue_s == 1
        and c.cached_tokens == 0
        and c.prefill_s == pytest.approx(2.048)
    )


def test_local_cache_aware_trades_queue_for_prefix() -> None:
    """A: queue 1 s, holds 4 blocks → 1 + 0.001 = 1.001 s; B: queue 0.5 s, no cache →
    0.5 + 2.048 = 2.548 s. Local cache-aware picks A."""
    s = PrefillScheduler("local_cache_aware")
    c = s.choose(REQ, 0.0, make_loads(A=1, B=0.5), {"A": 4}, est, xfer)
    assert c.worker == "A" and c.ttft_s == pytest.approx(1.001)


def test_algorithm1_fetches_hot_prefix_to_idle_instance() -> None:
    """A holds the whole prefix but has 5 s queued; B is idle with nothing.
    A: 5 + 0.001 = 5.001 s. B (fetch 2047 tokens): 0.2047 + 0.001 = 0.2057 s → B,
    fetching from A (the hot prefix gets replicated on B)."""
    s = PrefillScheduler("global_cache_aware")
    c = s.choose(REQ, 0.0, make_loads(A=5, B=0), {"A": 4}, est, xfer)
    assert (c.worker, c.fetch_from, c.fetch_tokens) == ("B", "A", 2047)
    assert c.ttft_s == pytest.approx(0.2047 + 0.001)


def test_balancing_threshold_keeps_work_local() -> None:
    """A holds 4 blocks (2047 tokens), B holds 1 block (512), both idle except A (5 s).
    Threshold 5: 2047 ≤ 5·512 so B recomputes from its own prefix: 1.536 s.
    Threshold 1: B fetches 1535 tokens: 0.1535 + 0.001 s."""
    loads = make_loads(A=5, B=0)
    local = PrefillScheduler("global_cache_aware", kvcache_balancing_threshold=5.0).choose(
        REQ, 0.0, loads, {"A": 4, "B": 1}, est, xfer
    )
    assert (local.worker, local.fetch_from, local.prefill_s) == ("B", None, pytest.approx(1.536))
    fetch = PrefillScheduler("global_cache_aware", kvcache_balancing_threshold=1.0).choose(
        REQ, 0.0, loads, {"A": 4, "B": 1}, est, xfer
    )
    assert (fetch.worker, fetch.fetch_from, fetch.fetch_tokens) == ("B", "A", 1535)


def test_random_is_seeded() -> None:
    """Same seed, same sequence of 20 choices, and more than one instance is used."""
    loads = make_loads(A=0, B=0, C=0)

    def picks(seed: int) -> list[str]:
        s = PrefillScheduler("random", seed=seed)
        return [s.choose(REQ, 0.0, loads, {}, est, xfer).worker for _ in range(20)]

    assert picks(3) == picks(3)
    assert len(set(picks(3))) > 1


def test_decode_prefers_fitting_lowest_tbt() -> None:
    """Step = batch·0.01 s. D1 (batch 1) lacks KV room for 2058 tokens; D2 (batch 5)
    fits → D2 with estimated TBT 0.06 s. With no room anywhere: lowest TBT, fits=False."""
    s = DecodeScheduler()
    step = lambda b, kv: 0.01 * b  # noqa: E731
    c = s.choose(REQ, {"D1": (1, 9000), "D2": (5, 0)}, {"D1": 10_000, "D2": 10_000}, step)
    assert (c.worker, c.fits, c.tbt_s) == ("D2", True, pytest.approx(0.06))
    c = s.choose(REQ, {"D1": (1, 9000), "D2": (5, 9000)}, {"D1": 10_000, "D2": 10_000}, step)
    assert (c.worker, c.fits) == ("D1", False)


def test_algorithm1_equal_prefixes_fetch_from_smallest_name() -> None:
    """C is idle with nothing cached; A and B both hold all 4 blocks, queued 5 s each.
    C fetches the prefix; of the two equally long sources it takes A, whichever order
    the prefix map lists them in."""
    s = PrefillScheduler("global_cache_aware")
    for prefix in ({"B": 4, "A": 4}, {"A": 4, "B": 4}):
        c = s.choose(REQ, 0.0, make_loads(A=5, B=5, C=0), prefix, est, xfer)
        assert (c.worker, c.fetch_from) == ("C", "A")
