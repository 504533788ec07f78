"""Eviction policies: pure bookkeeping of which cached block to drop next.

No I/O here, so the simulator can replay the same policies the live store runs. A
policy only *suggests* victims, best first; the store decides, and skips what it must
not evict (leased blocks).

- ``lru``: least recently used first.
- ``lfu``: least frequently used first, ties broken by recency.
- ``length_aware``: the block deepest in its sequence first (largest block index),
  ties broken by recency — the paper's LengthAwareCache (Table 1): blocks late in a
  prompt are shared by fewer requests than the prefix blocks every turn reuses.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from mooncake.store.config import EvictionPolicyName

K = TypeVar("K", bound=Hashable)


class EvictionPolicy(ABC, Generic[K]):
    """Tracks cached keys and orders them for eviction."""

    @abstractmethod
    def insert(self, key: K, position: int | None = None) -> None:
        """A key was stored (or stored again); ``position`` is its block index if known."""

    @abstractmethod
    def touch(self, key: K) -> None:
        """A key was read. Unknown keys are ignored."""

    def touch_many(self, keys: Iterable[K]) -> None:
        """:meth:`touch` each of ``keys``, in order."""
        for key in keys:
            self.touch(key)

    @abstractmethod
    def remove(self, key: K) -> None:
        """A key left the cache. Unknown keys are ignored."""

    @abstractmethod
    def victims(self) -> Iterator[K]:
        """Keys in eviction order, best victim first. The caller may stop early, skip
        keys, and call :meth:`remove` on the one it evicts while iterating."""

    @abstractmethod
    def __contains__(self, key: object) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...


class LRUPolicy(EvictionPolicy[K]):
    """Least recently used first; O(1) per operation."""

    def __init__(self) -> None:
        self._order: OrderedDict[K, None] = OrderedDict()

    def insert(self, key: K, position: int | None = None) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: K) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def touch_many(self, keys: Iterable[K]) -> None:
        # One C-level loop (a block server touches every key it sends); an unknown key
        # stops it, and the plain loop, which skips unknown keys, finishes the job.
        keys = list(keys)
        try:
            deque(map(self._order.move_to_end, keys), maxlen=0)
        except KeyError:
            for key in keys:
                self.touch(key)

    def remove(self, key: K) -> None:
        self._order.pop(key, None)

    def victims(self) -> Iterator[K]:
        # A snapshot, so the caller may remove keys while iterating.
        yield from list(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)


@dataclass(slots=True)
class _Entry:
    tick: int
    count: int
    position: int


class _HeapPolicy(EvictionPolicy[K]):
    """Priority-ordered policy over a lazily invalidated heap: O(log n) per operation."""

    def __init__(self) -> None:
        self._entries: dict[K, _Entry] = {}
        self._heap: list[tuple[tuple[int, ...], int, K]] = []
        self._tick = 0

    @abstractmethod
    def _priority(self, e: _Entry) -> tuple[int, ...]:
        """Smaller is evicted first."""

    def _push(self, key: K, e: _Entry) -> None:
        heapq.heappush(self._heap, (self._priority(e), e.tick, key))
        if len(self._heap) > 4 * len(self._entries) + 64:  # drop stale entries
            self._heap = [(self._priority(v), v.tick, k) for k, v in self._entries.items()]
            heapq.heapify(self._heap)

    def insert(self, key: K, position: int | None = None) -> None:
        self._tick += 1
        old = self._entries.get(key)
        e = _Entry(
            self._tick,
            (old.count if old else 0) + 1,
            position if position is not None else (old.position if old else 0),
        )
        self._entries[key] = e
        self._push(key, e)

    def touch(self, key: K) -> None:
        e = self._entries.get(key)
        if e is None:
            return
        self._tick += 1
        e.tick = self._tick
        e.count += 1
        self._push(key, e)

    def remove(self, key: K) -> None:
        self._entries.pop(key, None)

    def victims(self) -> Iterator[K]:
        popped: list[tuple[tuple[int, ...], int, K]] = []
        try:
            while self._heap:
                item = heapq.heappop(self._heap)
                popped.append(item)
                _, tick, key = item
                e = self._entries.get(key)
                if e is None or e.tick != tick:
                    continue  # stale: removed or re-pushed with a newer tick
                yield key
        finally:
            for item in popped:
                e = self._entries.get(item[2])
                if e is not None and e.tick == item[1]:
                    heapq.heappush(self._heap, item)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class LFUPolicy(_HeapPolicy[K]):
    """Fewest accesses first; among equals, least recently used first."""

    def _priority(self, e: _Entry) -> tuple[int, ...]:
        return (e.count, e.tick)


class LengthAwarePolicy(_HeapPolicy[K]):
    """Deepest block (largest index in its sequence) first; among equals, LRU."""

    def _priority(self, e: _Entry) -> tuple[int, ...]:
        return (-e.position, e.tick)


def make_policy(name: EvictionPolicyName) -> EvictionPolicy[K]:
    """The policy called ``name`` (see :data:`mooncake.store.config.EVICTION_POLICIES`)."""
    if name == "lru":
        return LRUPolicy()
    if name == "lfu":
        return LFUPolicy()
    if name == "length_aware":
        return LengthAwarePolicy()
    raise ValueError(f"eviction: unknown policy {name!r}")


__all__ = ["EvictionPolicy", "LFUPolicy", "LRUPolicy", "LengthAwarePolicy", "make_policy"]
