"""Read-only access to a tier owned by another process on the same host.

The host tier is plasma-like: one worker process writes it, every process on the host
maps the same LMDB file on tmpfs and reads blocks zero-copy. A reader never writes: a
block that fails its checks is counted and reported as a miss (the owning store deletes
it the next time it reads it).
"""

from __future__ import annotations

from collections.abc import Sequence

from mooncake.store.block_object import BlockObject, CorruptBlockError
from mooncake.store.config import TierConfig
from mooncake.store.tier import LmdbTier, TierName
from mooncake.types import BlockKey


class TierReader:
    """Zero-copy reader of one tier's LMDB environment.

    Args:
        path: the tier directory (``TierConfig.path`` of the owning store).
        name: which tier it is (for messages only).
        verify: check payload checksums (a mismatch is a miss).
        max_readers: must match the owner's setting when this process opens first.
    """

    def __init__(
        self, path: str, name: TierName = "host", verify: bool = True, max_readers: int = 512
    ) -> None:
        # Capacity is irrelevant to a reader; map size 0 keeps the owner's size.
        cfg = _ReaderConfig(path=path, capacity_bytes=1, max_readers=max_readers)
        self._tier = LmdbTier(name, cfg, readonly=True)
        self.verify = verify
        self.corrupt = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: BlockKey) -> BlockObject | None:
        """The checked block or ``None``; the view lives as long as the object."""
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[BlockKey]) -> list[BlockObject | None]:
        out: list[BlockObject | None] = []
        for res in self._tier.read_many(keys, self.verify):
            if isinstance(res, CorruptBlockError):
                self.corrupt += 1
                res = None
            self.hits += res is not None
            self.misses += res is None
            out.append(res)
        return out

    def contains(self, key: BlockKey) -> bool:
        return self._tier.contains(key)

    def match_prefix(self, keys: Sequence[BlockKey]) -> int:
        """Number of leading ``keys`` present in this tier."""
        n = 0
        txn = self._tier.begin_read()
        try:
            for k in keys:
                if self._tier.read_record(txn, k) is None:
                    break
                n += 1
        finally:
            txn.abort()
        return n

    def close(self) -> None:
        self._tier.close()

    def __enter__(self) -> TierReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ReaderConfig(TierConfig):
    """A TierConfig whose map size is 0: LMDB then uses the size the owner set."""

    @property
    def map_size(self) -> int:
        return 0


HostTierReader = TierReader

__all__ = ["HostTierReader", "TierReader"]
