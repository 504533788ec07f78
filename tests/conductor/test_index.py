"""GlobalBlockIndex: events in, per-worker prefix lengths out."""

from __future__ import annotations

from mooncake.conductor import GlobalBlockIndex


def test_match_prefix_per_worker() -> None:
    """A holds blocks 1,2,3; B holds 1,2; C holds 2,3 (no first block).
    For keys [1,2,3,4]: A matches 3, B matches 2, C matches 0 (omitted)."""
    idx = GlobalBlockIndex()
    idx.stored("A", [1, 2, 3])
    idx.stored("B", [1, 2])
    idx.stored("C", [2, 3])
    assert idx.match_prefix([1, 2, 3, 4]) == {"A": 3, "B": 2}
    assert idx.match_prefix([]) == {}
    assert idx.match_prefix([9]) == {}


def test_removed_block_ends_prefix_at_the_hole() -> None:
    """A evicts its middle block 2: its usable prefix of [1,2,3] shrinks to 1."""
    idx = GlobalBlockIndex()
    idx.stored("A", [1, 2, 3])
    idx.removed("A", [2])
    assert idx.match_prefix([1, 2, 3]) == {"A": 1}
    assert idx.blocks_on("A") == 2


def test_bytes_keys_and_drop_worker() -> None:
    """16-byte keys (the live system's BlockKey) work; a departed worker is forgotten."""
    k1, k2 = b"\x01" * 16, b"\x02" * 16
    idx = GlobalBlockIndex()
    idx.stored("w1", [k1, k2])
    idx.stored("w2", [k1])
    idx.removed("w2", [b"\x09" * 16])  # unknown keys are ignored
    assert idx.match_prefix([k1, k2]) == {"w1": 2, "w2": 1}
    idx.drop_worker("w1")
    assert idx.match_prefix([k1, k2]) == {"w2": 1}
    assert len(idx) == 1


def test_match_prefix_orders_workers_by_name() -> None:
    """Workers stored in the order z, a, m with the same prefix come back sorted
    (a, m, z): callers never see a set's hash-seed-dependent order."""
    idx = GlobalBlockIndex()
    for w in ("worker-z", "worker-a", "worker-m"):
        idx.stored(w, [1, 2])
    assert list(idx.match_prefix([1, 2, 3])) == ["worker-a", "worker-m", "worker-z"]
