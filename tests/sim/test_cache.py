"""Block caches: prefix matching, eviction order per policy, hit-rate replay."""

from __future__ import annotations

import pytest

from mooncake.sim import BlockCache, hit_rate


def test_lru_evicts_least_recently_used() -> None:
    """Capacity 3: insert [1,2], [3], then re-use [1] and insert [4] → 2 is the oldest
    and goes; then [5] evicts 3."""
    c = BlockCache(3, "lru")
    c.insert([1, 2])
    c.insert([3])
    c.touch([1])
    stored, evicted = c.insert([4])
    assert (stored, evicted) == ([4], [2])
    assert c.insert([5])[1] == [3]
    assert c.match([1, 4, 5]) == 3 and c.match([2, 1]) == 0 and len(c) == 3


def test_lfu_evicts_least_frequently_used() -> None:
    """Capacity 2: 1 used three times, 2 once; inserting 3 evicts 2 (count 1, older
    than 3's single use)."""
    c = BlockCache(2, "lfu")
    c.insert([1])
    c.insert([1])
    c.insert([1, 2])
    assert c.insert([3]) == ([3], [2])
    assert 1 in c and 3 in c


def test_length_aware_evicts_deepest_blocks_first() -> None:
    """Capacity 4: request A = [a0,a1,a2], request B = [b0,b1]. Inserting B overflows by
    one: the deepest block (a2, position 2) goes, not the older shallow a0."""
    c = BlockCache(4, "length_aware")
    c.insert(["a0", "a1", "a2"])
    assert c.insert(["b0", "b1"]) == (["b0", "b1"], ["a2"])
    assert c.match(["a0", "a1", "a2"]) == 2


def test_insert_reports_only_surviving_new_keys() -> None:
    """Capacity 1, insert [1,2]: 1 is evicted by 2 inside the same insert, so the
    stored list is [2] and evicted [1] (the index never sees 1)."""
    c = BlockCache(1, "lru")
    assert c.insert([1, 2]) == ([2], [1])
    assert BlockCache(0).insert([1]) == ([], [])


def test_hit_rate_counts_leading_blocks() -> None:
    """Unbounded: [1,2] (0 hits), [1,2,3] (2 hits), [4,2] (0: prefix broken at 4)
    → 2 / 7."""
    assert hit_rate([[1, 2], [1, 2, 3], [4, 2]], None) == pytest.approx(2 / 7)
    # capacity 1 keeps only the last block: [1,2,3] finds 1 missing.
    assert hit_rate([[1, 2], [1, 2, 3]], 1) == 0.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="eviction"):
        BlockCache(1, "fifo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity"):
        BlockCache(-1)
