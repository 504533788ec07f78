"""``SharedPrefixProbe``: explaining a prefix-cache miss by what an earlier prompt shared."""

from __future__ import annotations

from mooncake.kvcache import block_keys, root_key
from mooncake.kvcache.shared_prefix import SharedPrefixProbe

BS = 4
ROOT = root_key(0, "model")


def _probe(probe: SharedPrefixProbe, ids: list[int], hit_blocks: int):
    return probe.probe(ROOT, block_keys(ids, BS, ROOT), ids, hit_blocks)


def _record(probe: SharedPrefixProbe, ids: list[int]) -> None:
    probe.record(ROOT, block_keys(ids, BS, ROOT), ids)


def test_nothing_seen_is_none():
    """A first prompt shares nothing."""
    assert _probe(SharedPrefixProbe(BS), [1, 2, 3, 4, 5], 0) == ("none", 0)


def test_share_shorter_than_a_block():
    """Two prompts agree on 3 tokens (block size 4): a 0-token hit, explained as a
    3-token share below one block."""
    p = SharedPrefixProbe(BS)
    _record(p, [1, 2, 3, 4, 9])
    assert _probe(p, [1, 2, 3, 7, 9], 0) == ("below_block", 3)


def test_share_after_cached_blocks():
    """Past two cached blocks, the next block agrees on 2 tokens."""
    p = SharedPrefixProbe(BS)
    _record(p, [1, 2, 3, 4, 5, 6, 7, 8, 1, 1, 0, 0])
    assert _probe(p, [1, 2, 3, 4, 5, 6, 7, 8, 1, 1, 2, 2], 2) == ("below_block", 2)
    # A different second block is a different parent: nothing shared after it.
    assert _probe(p, [1, 2, 3, 4, 0, 0, 0, 0, 1, 1, 2, 2], 2) == ("none", 0)


def test_whole_block_shared_but_not_cached():
    """A prompt that shared a whole further block that the cache no longer holds
    (evicted, or cached on another worker)."""
    p = SharedPrefixProbe(BS)
    _record(p, [1, 2, 3, 4, 5, 6, 7, 8])
    assert _probe(p, [1, 2, 3, 4, 5, 6, 7, 8], 0) == ("block_or_more", 4)


def test_bounded_memory():
    """Only ``capacity`` parents are remembered, least recently used out."""
    p = SharedPrefixProbe(BS, capacity=2)
    for first in (10, 20, 30):
        _record(p, [first, 0, 0, 0, first, 1])
    assert len(p._children) == 2
    assert _probe(p, [30, 0, 0, 0, 30, 1], 1) == ("below_block", 2)
