"""Which block keys a worker holds in any tier (device pool, host, SSD).

The Conductor's index sees a block on a worker as present until it is gone from all of
the worker's tiers: a block evicted from the device pool but still in the host tier can
still be fetched. This folds the engine's and the store's stored/removed events into
the keys that appeared and the keys that disappeared for the worker as a whole."""

from __future__ import annotations

from collections.abc import Iterable


class BlockPresence:
    def __init__(self) -> None:
        self._holders: dict[bytes, set[str]] = {}

    def fold(self, changes: Iterable[tuple[str, bytes, str]]) -> tuple[list[bytes], list[bytes]]:
        """Apply ``(kind, key, tier)`` changes (kind ``stored`` or anything else for a
        removal) in order; returns (keys now held, keys now gone)."""
        stored: list[bytes] = []
        removed: list[bytes] = []
        for kind, key, tier in changes:
            holders = self._holders.setdefault(key, set())
            before = bool(holders)
            if kind == "stored":
                holders.add(tier)
            else:
                holders.discard(tier)
            if holders and not before:
                stored.append(key)
            elif before and not holders:
                removed.append(key)
            if not holders:
                del self._holders[key]
        return stored, removed

    def __len__(self) -> int:
        return len(self._holders)


__all__ = ["BlockPresence"]
