"""Folding a worker's per-tier block events into what the Conductor's index sees."""

from __future__ import annotations

from mooncake.worker.block_presence import BlockPresence

K, J = b"k" * 16, b"j" * 16


def test_block_is_present_until_gone_from_every_tier() -> None:
    """Stored in the device pool then the store: one ``stored``; evicted from the device
    pool: nothing; removed from the store too: one ``removed``."""
    p = BlockPresence()
    assert p.fold([("stored", K, "device"), ("stored", K, "store")]) == ([K], [])
    assert p.fold([("removed", K, "device")]) == ([], [])
    assert p.fold([("removed", K, "store")]) == ([], [K])
    assert len(p) == 0


def test_removal_of_an_unknown_key_is_nothing() -> None:
    """A removal of a key never reported stored changes nothing and keeps no entry."""
    p = BlockPresence()
    assert p.fold([("removed", J, "device")]) == ([], [])
    assert len(p) == 0
