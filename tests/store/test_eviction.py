from __future__ import annotations

import pytest

from mooncake.store.eviction import LengthAwarePolicy, LFUPolicy, LRUPolicy, make_policy


def test_lru_evicts_least_recently_used_first() -> None:
    """Insert a, b, c; touching a makes b the first victim and a the last."""
    p: LRUPolicy[str] = LRUPolicy()
    for k in "abc":
        p.insert(k)
    p.touch("a")
    assert list(p.victims()) == ["b", "c", "a"]


def test_lfu_evicts_least_frequent_then_oldest() -> None:
    """a read 3 times, b once, c never: c then b then a; equal counts fall back to LRU."""
    p: LFUPolicy[str] = LFUPolicy()
    for k in "abcd":
        p.insert(k)
    for _ in range(3):
        p.touch("a")
    p.touch("b")
    assert list(p.victims()) == ["c", "d", "b", "a"]


def test_length_aware_evicts_deepest_block_first() -> None:
    """Blocks late in a sequence go first; among equal positions the older goes first."""
    p: LengthAwarePolicy[str] = LengthAwarePolicy()
    p.insert("root", 0)
    p.insert("mid", 5)
    p.insert("deep_old", 9)
    p.insert("deep_new", 9)
    p.touch("root")
    assert list(p.victims()) == ["deep_old", "deep_new", "mid", "root"]


@pytest.mark.parametrize("name", ["lru", "lfu", "length_aware"])
def test_skipped_victims_stay_and_removed_ones_go(name: str) -> None:
    """Skipping a victim (it is leased) keeps it tracked; removing one mid-iteration drops it."""
    p = make_policy(name)  # type: ignore[arg-type]
    for i, k in enumerate("abcd"):
        p.insert(k, i)
    it = p.victims()
    first = next(it)
    second = next(it)
    p.remove(second)
    it.close()
    assert first in p and second not in p and len(p) == 3
    assert sorted(p.victims()) == sorted(set("abcd") - {second})


def test_reinsert_and_unknown_keys() -> None:
    """Touching/removing unknown keys is a no-op; re-inserting keeps one entry."""
    p: LFUPolicy[str] = LFUPolicy()
    p.touch("x")
    p.remove("x")
    p.insert("a")
    p.insert("a")
    assert len(p) == 1 and list(p.victims()) == ["a"]


def test_unknown_policy_name_is_rejected() -> None:
    """make_policy names the bad value."""
    with pytest.raises(ValueError, match="eviction"):
        make_policy("fifo")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["lru", "lfu", "length_aware"])
def test_same_choices_as_the_simulator_cache(name: str) -> None:
    """Replaying prefix-sharing requests, the store's policy evicts exactly what the simulator's
    BlockCache (FAST'25 Table 1 policies) evicts, request after request."""
    import random

    from mooncake.sim.cache import BlockCache

    rng = random.Random(3)
    prefixes = [[f"p{i}-{j}" for j in range(rng.randrange(1, 6))] for i in range(6)]
    requests = []
    for r in range(300):
        tail = [f"r{r}-{j}" for j in range(rng.randrange(0, 5))]
        requests.append(rng.choice(prefixes) + tail)
    capacity = 12
    sim = BlockCache(capacity, name)  # type: ignore[arg-type]
    policy = make_policy(name)  # type: ignore[arg-type]
    seen: set[str] = set()
    for keys in requests:
        sim.insert(keys)
        seen.update(keys)
        for pos, k in enumerate(keys):
            policy.insert(k, pos)
        while len(policy) > capacity:
            policy.remove(next(iter(policy.victims())))
        assert set(policy.victims()) == {k for k in seen if k in sim}
