"""Leases: time-limited pins that keep blocks from being evicted.

A running transfer or prefill leases the blocks it is about to read; eviction skips a
leased block until every lease on it is released or has expired. Expiry means a
crashed or stuck holder cannot pin memory forever. Pure bookkeeping, clock injected.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from types import TracebackType

from mooncake.types import BlockKey


class LeaseTable:
    """Which keys are leased, by whom, until when.

    Args:
        clock: monotonic seconds (``time.monotonic``; tests pass a fake).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._by_key: dict[BlockKey, dict[int, float]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def acquire(self, keys: Iterable[BlockKey], ttl_s: float) -> tuple[int, float]:
        """Lease ``keys`` for ``ttl_s`` seconds; returns (lease id, expiry)."""
        if ttl_s <= 0:
            raise ValueError(f"ttl_s: must be positive, got {ttl_s}")
        lid = next(self._ids)
        until = self._clock() + ttl_s
        with self._lock:
            for k in keys:
                self._by_key.setdefault(k, {})[lid] = until
        return lid, until

    def renew(self, lid: int, keys: Iterable[BlockKey], ttl_s: float) -> float:
        until = self._clock() + ttl_s
        with self._lock:
            for k in keys:
                holders = self._by_key.get(k)
                if holders is not None and lid in holders:
                    holders[lid] = until
        return until

    def release(self, lid: int, keys: Iterable[BlockKey]) -> None:
        with self._lock:
            for k in keys:
                holders = self._by_key.get(k)
                if holders is None:
                    continue
                holders.pop(lid, None)
                if not holders:
                    del self._by_key[k]

    def is_leased(self, key: BlockKey) -> bool:
        """True while at least one unexpired lease holds ``key``."""
        with self._lock:
            holders = self._by_key.get(key)
            if not holders:
                return False
            now = self._clock()
            live = {lid: t for lid, t in holders.items() if t > now}
            if live:
                if len(live) != len(holders):
                    self._by_key[key] = live
                return True
            del self._by_key[key]
            return False

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_key)


class Lease:
    """Handle of one lease; a context manager that releases on exit."""

    def __init__(self, table: LeaseTable, keys: Iterable[BlockKey], ttl_s: float) -> None:
        self.keys: tuple[BlockKey, ...] = tuple(keys)
        self._table = table
        self.id, self.expires_at = table.acquire(self.keys, ttl_s)
        self._released = False

    def renew(self, ttl_s: float) -> None:
        """Push the expiry to ``ttl_s`` seconds from now."""
        self.expires_at = self._table.renew(self.id, self.keys, ttl_s)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._table.release(self.id, self.keys)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


__all__ = ["Lease", "LeaseTable"]
