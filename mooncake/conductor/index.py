"""Global block index: which worker holds which prefix block.

Built from the workers' ``stored``/``removed`` events. Keys are any hashable: the live
system uses 16-byte ``BlockKey`` digests, traces use integer hash ids. Because keys are
prefix-chained, a worker holding key i for a request usually holds keys 0..i-1 as
well; :meth:`GlobalBlockIndex.match_prefix` still checks every position, so a hole
(an evicted middle block) ends the usable prefix there.

Determinism: holders are kept in sets (fast membership), but nothing a caller sees
depends on a set's iteration order, which varies with ``PYTHONHASHSEED`` for string
worker names: :meth:`GlobalBlockIndex.match_prefix` returns workers sorted by name, so
the same events give the same placements in any process.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence


class GlobalBlockIndex:
    """Map from block key to the set of workers that hold it."""

    def __init__(self) -> None:
        self._holders: dict[Hashable, set[str]] = {}
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._holders)

    def blocks_on(self, worker: str) -> int:
        """Number of indexed blocks held by ``worker``."""
        return self._counts.get(worker, 0)

    def holders(self, key: Hashable) -> frozenset[str]:
        return frozenset(self._holders.get(key, ()))

    def stored(self, worker: str, keys: Iterable[Hashable]) -> None:
        """Apply a ``stored`` event: ``worker`` now holds ``keys``."""
        n = 0
        for key in keys:
            holders = self._holders.setdefault(key, set())
            if worker not in holders:
                holders.add(worker)
                n += 1
        self._counts[worker] = self._counts.get(worker, 0) + n

    def removed(self, worker: str, keys: Iterable[Hashable]) -> None:
        """Apply a ``removed`` event: ``worker`` dropped ``keys`` (unknown keys ignored)."""
        n = 0
        for key in keys:
            holders = self._holders.get(key)
            if holders is None or worker not in holders:
                continue
            holders.discard(worker)
            n += 1
            if not holders:
                del self._holders[key]
        self._counts[worker] = self._counts.get(worker, 0) - n

    def drop_worker(self, worker: str) -> None:
        """Forget everything a departed worker held."""
        for key in [k for k, h in self._holders.items() if worker in h]:
            self.removed(worker, [key])
        self._counts.pop(worker, None)

    def match_prefix(self, keys: Sequence[Hashable]) -> dict[str, int]:
        """Per worker, how many leading ``keys`` it holds (workers with 0 are omitted),
        in ascending order of worker name."""
        out: dict[str, int] = {}
        if not keys:
            return out
        alive = set(self._holders.get(keys[0], ()))
        i = 1
        while alive and i < len(keys):
            nxt = self._holders.get(keys[i])
            if nxt is None:
                break
            dropped = alive - nxt
            for w in dropped:
                out[w] = i
            alive -= dropped
            i += 1
        for w in alive:
            out[w] = i
        return {w: out[w] for w in sorted(out)}


__all__ = ["GlobalBlockIndex"]
