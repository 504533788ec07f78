"""KV block caches with pluggable eviction: one per instance, or one global pool.

A cache holds block keys up to ``capacity`` blocks. ``match`` is the longest cached
prefix of a request's keys; ``insert`` stores a request's blocks (refreshing the ones
already there) and evicts down to capacity, returning what changed so the owner can
publish ``stored``/``removed`` events to the Conductor's index.

Eviction policies (FAST'25 Table 1):

- ``lru``: least recently used block first.
- ``lfu``: least frequently used first, oldest use breaking ties.
- ``length_aware``: blocks deeper in a request (larger position) first, LRU among
  equals: a prefix shared by many requests sits at small positions and survives,
  the unique tail of one long conversation goes first.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Literal

Eviction = Literal["lru", "lfu", "length_aware"]
EVICTIONS: tuple[Eviction, ...] = ("lru", "lfu", "length_aware")


class BlockCache:
    """Block cache of ``capacity`` blocks (``None`` = unbounded).

    Args:
        capacity: most blocks held.
        eviction: one of :data:`EVICTIONS`.
    """

    def __init__(self, capacity: int | None, eviction: Eviction = "lru") -> None:
        if capacity is not None and capacity < 0:
            raise ValueError(f"capacity: must be >= 0 or None, got {capacity}")
        if eviction not in EVICTIONS:
            raise ValueError(f"eviction: must be one of {EVICTIONS}, got {eviction!r}")
        self.capacity = capacity
        self.eviction = eviction
        self._lru: OrderedDict[Hashable, None] = OrderedDict()
        # lfu / length_aware: key -> (priority, last use); heap of the same, stale
        # entries skipped on pop (lazy deletion).
        self._meta: dict[Hashable, tuple[int, int]] = {}
        self._heap: list[tuple[int, int, int, Hashable]] = []
        self._tick = 0

    def __len__(self) -> int:
        return len(self._lru) if self.eviction == "lru" else len(self._meta)

    def __contains__(self, key: Hashable) -> bool:
        return key in (self._lru if self.eviction == "lru" else self._meta)

    def match(self, keys: Sequence[Hashable]) -> int:
        """Number of leading ``keys`` cached (no side effects)."""
        store = self._lru if self.eviction == "lru" else self._meta
        n = 0
        for k in keys:
            if k not in store:
                break
            n += 1
        return n

    def touch(self, keys: Iterable[Hashable]) -> None:
        """Refresh cached ``keys`` (a read, e.g. a remote fetch); absent keys ignored."""
        for pos, k in enumerate(keys):
            if k in self:
                self._use(k, pos)

    def insert(self, keys: Sequence[Hashable]) -> tuple[list[Hashable], list[Hashable]]:
        """Store a request's blocks in order. Returns (newly stored, evicted) keys."""
        if self.capacity == 0:
            return [], []
        stored: list[Hashable] = []
        for pos, k in enumerate(keys):
            if k not in self:
                stored.append(k)
            self._use(k, pos)
        evicted = self._evict_to_capacity()
        if evicted:
            gone = set(evicted)
            stored = [k for k in stored if k not in gone]
        return stored, evicted

    # -- internals -------------------------------------------------------------
    def _use(self, key: Hashable, pos: int) -> None:
        self._tick += 1
        if self.eviction == "lru":
            self._lru[key] = None
            self._lru.move_to_end(key)
            return
        if self.eviction == "lfu":
            old = self._meta.get(key)
            prio = (old[0] if old else 0) + 1  # use count: smallest evicted first
        else:
            prio = -pos  # deepest position: smallest, evicted first
        self._meta[key] = (prio, self._tick)
        heapq.heappush(self._heap, (prio, self._tick, id(key), key))

    def _evict_to_capacity(self) -> list[Hashable]:
        evicted: list[Hashable] = []
        if self.capacity is None:
            return evicted
        if self.eviction == "lru":
            while len(self._lru) > self.capacity:
                k, _ = self._lru.popitem(last=False)
                evicted.append(k)
            return evicted
        while len(self._meta) > self.capacity:
            prio, tick, _, k = heapq.heappop(self._heap)
            if self._meta.get(k) == (prio, tick):
                del self._meta[k]
                evicted.append(k)
        if len(self._heap) > 4 * len(self._meta) + 1024:
            self._heap = [(p, t, id(k), k) for k, (p, t) in self._meta.items()]
            heapq.heapify(self._heap)
        return evicted


def hit_rate(
    requests: Iterable[Sequence[Hashable]], capacity: int | None, eviction: Eviction = "lru"
) -> float:
    """Block hit rate of one global cache replaying requests' block keys in order:
    matched leading blocks / all blocks (FAST'25 Table 1 setting)."""
    cache = BlockCache(capacity, eviction)
    hits = total = 0
    for keys in requests:
        hits += cache.match(keys)
        total += len(keys)
        cache.insert(keys)
    return hits / total if total else 0.0


__all__ = ["EVICTIONS", "BlockCache", "Eviction", "hit_rate"]
