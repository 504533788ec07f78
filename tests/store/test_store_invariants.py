from __future__ import annotations

import random

import pytest

from mooncake.store.store import BlockStore
from mooncake.types import BlockKey
from tests.store.kvfactories import block_bytes, make_chain, store_config


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("policy", ["lru", "lfu", "length_aware"])
def test_random_operations_keep_every_invariant(policy: str, host_dir: str, ssd_dir: str) -> None:
    """600 random puts, batch puts, gets, deletes, leases and clock jumps on a 4-block host over an
    8-block SSD: after each step byte counts stay within capacity and match the LMDB records, every
    indexed block reads back with its own bytes, and a block under a live lease is never evicted."""
    rng = random.Random(policy)
    blocks = make_chain(24, seed=11)
    by_key = {b.key: b for b in blocks}
    clock = FakeClock()
    per = block_bytes()
    leases: list[tuple[object, set[BlockKey], float]] = []
    seen_present: set[BlockKey] = set()
    with BlockStore(
        store_config(host_dir, ssd_dir, host_blocks=4, ssd_blocks=8, eviction=policy), clock=clock
    ) as store:
        for _ in range(600):
            op = rng.random()
            if op < 0.35:
                store.put(rng.choice(blocks))
            elif op < 0.45:
                store.put_many(rng.sample(blocks, 3))
            elif op < 0.75:
                k = rng.choice(blocks).key
                obj = store.get(k)  # type: ignore[arg-type]
                if obj is not None:
                    assert obj.numpy().tobytes() == by_key[k].data.tobytes()
                    del obj
            elif op < 0.82:
                present = store.keys()
                if present:
                    store.delete(rng.choice(present))
            elif op < 0.92:
                keys = set(rng.sample(store.keys(), min(2, len(store))))
                ttl = rng.choice([1.0, 5.0])
                leases.append((store.lease(keys, ttl_s=ttl), keys, clock.t + ttl))
            else:
                clock.t += rng.choice([0.5, 2.0])
                if leases and rng.random() < 0.5:
                    lease, _, _ = leases.pop(rng.randrange(len(leases)))
                    lease.release()  # type: ignore[attr-defined]
            live_before = {k for _, ks, until in leases if until > clock.t for k in ks}

            for tier in ("host", "ssd"):
                keys = store.keys(tier)  # type: ignore[arg-type]
                assert store.used_bytes(tier) == per * len(keys) <= store.tiers[tier].capacity_bytes  # type: ignore[arg-type, index]
                assert store.tiers[tier].stat_entries() == len(keys)  # type: ignore[index]
            # leased blocks that were present are still present (only explicit deletes remove them)
            deleted_now = op >= 0.75 and op < 0.82
            if not deleted_now:
                for k in live_before:
                    if k in seen_present:
                        assert store.contains(k), "a leased block was evicted"
            seen_present = set(store.keys())
        assert store.stats.corrupt == 0 and store.stats.evictions > 0 and store.stats.demotions > 0
