"""Block pool bookkeeping: reference counts, free-list eviction order, verified hits, events."""

from __future__ import annotations

import pytest

from mooncake.kvcache import BlockPool, NoFreeBlocksError
from mooncake.types import BlockKey


def k(i: int) -> BlockKey:
    return BlockKey(i.to_bytes(16, "little"))


def test_allocate_and_free_counts():
    """Allocating takes blocks off the free list; freeing returns them."""
    pool = BlockPool(4)
    blocks = pool.allocate(3)
    assert pool.num_free == 1 and all(b.ref_count == 1 for b in blocks)
    pool.free(blocks)
    assert pool.num_free == 4
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(5)


def test_double_free_is_an_error():
    pool = BlockPool(2)
    (b,) = pool.allocate(1)
    pool.free([b])
    with pytest.raises(RuntimeError, match="double free"):
        pool.free([b])


def test_cached_blocks_evicted_lru_after_unkeyed():
    """Freed cached blocks are kept; fresh blocks go first, then cached ones LRU-first,
    and a sequence's tail is evicted before its prefix."""
    pool = BlockPool(4)
    seq_a = pool.allocate(2)
    pool.register(seq_a[0], k(1), [1])
    pool.register(seq_a[1], k(2), [2])
    pool.free(seq_a)  # tail (k2) released first -> evicted first
    assert pool.num_cached == 2
    pool.allocate(2)  # the two never-used blocks
    assert pool.num_cached == 2
    (victim,) = pool.allocate(1)
    assert victim.block_id == seq_a[1].block_id and pool.lookup(k(2), [2]) is None
    assert pool.lookup(k(1), [1]) is not None
    events = pool.drain_events()
    assert [(e.kind, e.key) for e in events] == [
        ("stored", k(1)),
        ("stored", k(2)),
        ("removed", k(2)),
    ]


def test_hit_verified_by_tokens():
    """A key whose tokens differ is a miss."""
    pool = BlockPool(2)
    (b,) = pool.allocate(1)
    pool.register(b, k(1), [1, 2, 3])
    assert pool.lookup(k(1), [1, 2, 3]) is b
    assert pool.lookup(k(1), [1, 2, 4]) is None


def test_match_prefix_stops_at_first_miss():
    pool = BlockPool(4)
    bs = pool.allocate(3)
    for i, b in enumerate(bs):
        pool.register(b, k(i), [i])
    hits = pool.match_prefix([k(0), k(1), k(9), k(2)], [[0], [1], [9], [2]])
    assert [h.block_id for h in hits] == [bs[0].block_id, bs[1].block_id]


def test_touch_takes_cached_block_off_free_list():
    """Re-using a freed cached block removes it from the free list and bumps its count."""
    pool = BlockPool(2)
    (b,) = pool.allocate(1)
    pool.register(b, k(1), [1])
    pool.free([b])
    assert pool.num_free == 2
    pool.touch([b])
    assert pool.num_free == 1 and b.ref_count == 1


def test_duplicate_register_keeps_first():
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    assert pool.register(a, k(1), [1])
    assert not pool.register(b, k(1), [1])
    assert pool.lookup(k(1), [1]) is a and b.key is None


def test_caching_disabled():
    pool = BlockPool(2, enable_caching=False)
    (a,) = pool.allocate(1)
    assert not pool.register(a, k(1), [1])
    assert pool.match_prefix([k(1)], [[1]]) == []


def test_hand_off_blocks_matchable_once_without_caching():
    """Without prefix caching, a block imported for a hand-off (a decode worker getting a
    request's KV from its prefill worker) is addressable until a sequence has taken it;
    when that sequence frees it, its key goes (no reuse by later requests), and a block a
    sequence computed itself never becomes addressable."""
    pool = BlockPool(3, enable_caching=False)
    (imp,) = pool.allocate(1)
    assert pool.register(imp, k(1), [1], hand_off=True)
    pool.free([imp])  # imported: unreferenced until its request arrives
    assert pool.match_prefix([k(1)], [[1]]) == [imp]
    pool.touch([imp])  # the request takes it
    (own,) = pool.allocate(1)
    assert not pool.register(own, k(2), [2])
    pool.free([imp, own])
    assert pool.match_prefix([k(1)], [[1]]) == []
    assert imp.key is None and pool.num_cached == 0
    assert [e.kind for e in pool.drain_events()] == ["stored", "removed"]
