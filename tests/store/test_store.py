from __future__ import annotations

import numpy as np
import pytest

from mooncake.store.store import BlockStore
from tests.store.kvfactories import make_chain, store_config


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("tier", ["host", "ssd"])
def test_put_get_round_trip_is_byte_identical(tier: str, host_dir: str, ssd_dir: str) -> None:
    """Blocks put into a host-only or SSD-only store read back byte-identical, header intact."""
    cfg = store_config(host_dir if tier == "host" else None, ssd_dir if tier == "ssd" else None)
    blocks = make_chain(5)
    with BlockStore(cfg) as store:
        assert all(store.put_many(blocks))
        objs = store.get_many([b.key for b in blocks])  # type: ignore[misc]
        for b, o in zip(blocks, objs):
            assert o is not None
            assert o.numpy().tobytes() == b.data.tobytes()
            assert (o.key, o.header.parent, o.header.token_ids) == (b.key, b.parent, b.token_ids)
            assert store.tier_of(o.key) == tier  # type: ignore[arg-type]
        assert store.stats.hits[tier] == 5 and store.stats.corrupt == 0


def test_get_returns_read_only_zero_copy_view_that_survives_delete(host_dir: str) -> None:
    """The numpy view is read-only, and stays intact after the block is
    deleted and overwritten (MVCC)."""
    a, b = make_chain(2)
    with BlockStore(store_config(host_dir)) as store:
        store.put(a)
        view = store.get(a.key).numpy()  # type: ignore[arg-type, union-attr]
        assert not view.flags.writeable
        store.delete(a.key)  # type: ignore[arg-type]
        store.put(b)  # may reuse freed pages, but not the ones the open reader still sees
        assert view.tobytes() == a.data.tobytes()
        assert store.get(a.key) is None  # type: ignore[arg-type]


def test_batch_forms_and_match_prefix(host_dir: str, ssd_dir: str) -> None:
    """put_many/contains_many/delete_many agree; match_prefix stops at the
    first gap and reports tiers."""
    blocks = make_chain(6)
    keys = [b.key for b in blocks]
    with BlockStore(store_config(host_dir, ssd_dir, host_blocks=2)) as store:
        store.put_many(blocks[:4])
        m = store.match_prefix(keys)  # type: ignore[arg-type]
        assert m.num_matched == 4 and m.tiers == ("ssd", "ssd", "host", "host")
        assert store.contains_many(keys) == [True] * 4 + [False] * 2  # type: ignore[arg-type]
        assert store.delete_many([keys[1], keys[5]]) == [True, False]  # type: ignore[list-item]
        assert store.match_prefix(keys).num_matched == 1  # type: ignore[arg-type]
        assert store.put(blocks[0])  # already present: touched, not duplicated
        assert len(store) == 3


def test_capacity_limit_and_lru_order(host_dir: str) -> None:
    """A 3-block host tier keeps the 3 most recently used blocks; a read refreshes a block."""
    blocks = make_chain(5)
    k = [b.key for b in blocks]
    with BlockStore(store_config(host_dir, host_blocks=3)) as store:
        store.put_many(blocks[:3])
        store.get(k[0])  # type: ignore[arg-type]
        store.put(blocks[3])  # evicts k1 (LRU), not k0
        store.put(blocks[4])  # evicts k2
        assert sorted(store.keys()) == sorted([k[0], k[3], k[4]])  # type: ignore[type-var]
        assert store.used_bytes("host") <= store.tiers["host"].capacity_bytes
        assert store.stats.evictions == 2
        removed = [e.key for e in store.events.drain() if e.kind == "removed"]
        assert removed == [k[1], k[2]]


def test_demotion_to_ssd_and_promotion_on_hit(host_dir: str, ssd_dir: str) -> None:
    """Host full -> LRU block moves to SSD; reading it from SSD moves it
    back to host; bytes intact."""
    blocks = make_chain(3)
    k = [b.key for b in blocks]
    with BlockStore(store_config(host_dir, ssd_dir, host_blocks=2, ssd_blocks=4)) as store:
        store.put_many(blocks)
        assert store.tier_of(k[0]) == "ssd" and store.tier_of(k[2]) == "host"  # type: ignore[arg-type]
        ev = store.events.drain()
        assert [(e.kind, e.tier, e.from_tier) for e in ev if e.key == k[0]] == [
            ("stored", "host", None),
            ("moved", "ssd", "host"),
        ]
        obj = store.get(k[0])  # type: ignore[arg-type]
        assert obj is not None and obj.numpy().tobytes() == blocks[0].data.tobytes()
        assert store.tier_of(k[0]) == "host" and store.tier_of(k[1]) == "ssd"  # type: ignore[arg-type]
        assert store.stats.promotions == 1 and store.stats.demotions == 2
        assert store.tiers["ssd"].stat_entries() == 1 and store.tiers["host"].stat_entries() == 2
        moved = [(e.key, e.tier) for e in store.events.drain() if e.kind == "moved"]
        assert (k[0], "host") in moved and (k[1], "ssd") in moved


def test_ssd_full_drops_lru_block(host_dir: str, ssd_dir: str) -> None:
    """When SSD is full too, demotion evicts SSD's LRU block, which is removed from the store."""
    blocks = make_chain(4)
    with BlockStore(store_config(host_dir, ssd_dir, host_blocks=1, ssd_blocks=2)) as store:
        store.put_many(blocks)
        assert not store.contains(blocks[0].key)  # type: ignore[arg-type]
        assert [store.tier_of(b.key) for b in blocks[1:]] == ["ssd", "ssd", "host"]  # type: ignore[arg-type]
        assert any(e.kind == "removed" and e.key == blocks[0].key for e in store.events.drain())


def test_lease_blocks_eviction_until_it_expires(host_dir: str) -> None:
    """A leased block is skipped by eviction; once every block is leased puts are
    rejected; expiry frees them."""
    clock = FakeClock()
    blocks = make_chain(4)
    k = [b.key for b in blocks]
    with BlockStore(store_config(host_dir, host_blocks=2), clock=clock) as store:
        store.put_many(blocks[:2])
        lease = store.lease([k[0]], ttl_s=10)
        store.put(blocks[2])  # LRU victim is k0, but it is leased -> k1 goes
        assert store.contains(k[0]) and not store.contains(k[1])  # type: ignore[arg-type]
        with store.lease([k[2]], ttl_s=10):
            assert store.put(blocks[3]) is False
            assert store.stats.rejected_puts == 1
        clock.t = 11.0  # k0's lease expired without release
        assert store.put(blocks[3]) is True
        assert not store.contains(k[0])  # type: ignore[arg-type]
        lease.release()


@pytest.mark.parametrize("tier", ["host", "ssd"])
@pytest.mark.parametrize("what", ["payload", "header"])
def test_corrupted_value_is_a_counted_miss_and_deleted(
    tier: str, what: str, host_dir: str, ssd_dir: str
) -> None:
    """A flipped byte in a stored payload or header is never returned: miss,
    counted, deleted, event emitted."""
    cfg = store_config(host_dir if tier == "host" else None, ssd_dir if tier == "ssd" else None)
    a, b = make_chain(2)
    with BlockStore(cfg) as store:
        store.put_many([a, b])
        t = store.tiers[tier]  # type: ignore[index]
        txn = t.begin_read()
        raw = t.read_raw(txn, a.key)  # type: ignore[arg-type]
        assert raw is not None
        damaged = bytearray(raw[0] if what == "header" else raw[1])
        txn.abort()
        damaged[40 if what == "header" else 3] ^= 0x10
        (t.overwrite_header if what == "header" else t.overwrite_payload)(a.key, bytes(damaged))  # type: ignore[arg-type]
        got = store.get_many([a.key, b.key])  # type: ignore[list-item]
        assert got[0] is None and got[1] is not None
        assert store.stats.corrupt == 1 and not store.contains(a.key)  # type: ignore[arg-type]
        assert t.stat_entries() == 1
        assert any(e.kind == "removed" and e.reason == "corrupt" for e in store.events.drain())


def test_ssd_tier_survives_reopen_with_order_and_accounting(ssd_dir: str) -> None:
    """Close and reopen an SSD store: same keys, same used bytes, LRU order = insertion order."""
    blocks = make_chain(4)
    cfg = store_config(None, ssd_dir, ssd_blocks=4)
    with BlockStore(cfg) as store:
        store.put_many(blocks)
        used = store.used_bytes("ssd")
    with BlockStore(cfg) as store:
        assert store.used_bytes("ssd") == used
        assert store.eviction_order("ssd") == [b.key for b in blocks]
        o = store.get(blocks[2].key)  # type: ignore[arg-type]
        assert o is not None and np.array_equal(o.numpy(), blocks[2].data)


def test_reopen_with_smaller_capacity_evicts_down(ssd_dir: str) -> None:
    """Reopening with a smaller capacity trims the tier to fit it."""
    blocks = make_chain(4)
    with BlockStore(store_config(None, ssd_dir, ssd_blocks=4)) as store:
        store.put_many(blocks)
    with BlockStore(store_config(None, ssd_dir, ssd_blocks=2)) as store:
        assert sorted(store.keys()) == sorted([blocks[2].key, blocks[3].key])  # type: ignore[type-var]


def test_length_aware_store_keeps_prefix_blocks(host_dir: str) -> None:
    """With length_aware eviction, positions come from put_export order and deep blocks go first."""
    blocks = make_chain(4)
    with BlockStore(store_config(host_dir, host_blocks=3, eviction="length_aware")) as store:
        store.put_many(blocks[:3], positions=[0, 1, 2])
        store.get(blocks[2].key)  # type: ignore[arg-type]  # recency must not save the deepest block
        store.put(blocks[3])  # position guessed from its parent: 3
        assert not store.contains(blocks[2].key) and store.contains(blocks[0].key)  # type: ignore[arg-type]


def test_partial_block_is_rejected(host_dir: str) -> None:
    """A block without a key (trailing partial block) cannot be cached."""
    b = make_chain(1)[0]
    b.key = None
    with (
        BlockStore(store_config(host_dir)) as store,
        pytest.raises(ValueError, match="without a key"),
    ):
        store.put(b)


def test_block_larger_than_tier_is_rejected(host_dir: str) -> None:
    """A block bigger than the whole tier is refused without evicting anything."""
    a = make_chain(1)[0]
    cfg = store_config(host_dir, host_blocks=1)
    with BlockStore(cfg) as store:
        store.put(a)
        big = make_chain(1, seed=7)[0]
        big.data = np.zeros((2, 2, 8, 2, 8), np.uint16)
        big.token_ids = tuple(range(8))
        assert store.put(big) is False and store.contains(a.key)  # type: ignore[arg-type]


def test_crc32_store_reads_blocks_of_either_algorithm(host_dir: str) -> None:
    """A store configured for crc32 writes crc32 headers and still reads
    sum64 blocks written before."""
    a, b = make_chain(2)
    with BlockStore(store_config(host_dir)) as store:
        store.put(a)
    with BlockStore(store_config(host_dir, checksum="crc32")) as store:
        store.put(b)
        oa, ob = store.get_many([a.key, b.key])  # type: ignore[list-item]
        assert oa is not None and oa.header.checksum_algo == "sum64"
        assert ob is not None and ob.header.checksum_algo == "crc32"
        assert ob.numpy().tobytes() == b.data.tobytes()


def test_map_pinned_by_an_open_view_refuses_writes_then_recovers(host_dir: str) -> None:
    """An open zero-copy view pins every page freed after it; once the map is exhausted puts are
    refused (False) and deletes raise TierFullError, the view stays intact, and after the view is
    dropped writes succeed again."""
    from mooncake.store.tier import TierFullError
    from tests.store.procs import CRASH_SPEC

    blocks = make_chain(6, CRASH_SPEC, seed=9)
    cfg = store_config(host_dir, host_blocks=4, spec=CRASH_SPEC)
    with BlockStore(cfg) as store:
        store.put(blocks[0])
        obj = store.get(blocks[0].key)  # type: ignore[arg-type]
        assert obj is not None
        view = obj.numpy()
        refused = 0
        for i in range(120):
            b = blocks[1 + i % 5]
            refused += not store.put(b)
            try:
                store.delete(b.key)  # type: ignore[arg-type]
            except TierFullError:
                refused += 1
        assert refused > 0
        assert view.tobytes() == blocks[0].data.tobytes()
        del view, obj
        store.delete_many([b.key for b in blocks])  # type: ignore[misc]
        assert all(store.put_many(blocks[:4]))


def test_a_tier_has_one_writing_store_at_a_time(host_dir: str) -> None:
    """A second writing store on the same tier is refused while the first is
    open, allowed after it closes."""
    from mooncake.store.tier import TierOwnedError

    cfg = store_config(host_dir)
    with BlockStore(cfg), pytest.raises(TierOwnedError, match="TierReader"):
        BlockStore(cfg)
    with BlockStore(cfg) as again:
        assert len(again) == 0
