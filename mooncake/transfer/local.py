"""Same-host backend: read the peer's host tier directly, zero copy.

Both workers map the same LMDB file on tmpfs, so "moving" a block is handing out a
view of the pages the peer already wrote. Nothing is copied until the receiver copies
the KV into its own device pool.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from mooncake.store.reader import TierReader
from mooncake.transfer.base import PathResult, Peer, TransferError, local_host_id
from mooncake.types import BlockKey


class SharedHostBackend:
    """Fetch from a same-host peer's host tier."""

    name = "shm"

    def __init__(self) -> None:
        self._readers: dict[str, TierReader] = {}
        self._lock = threading.Lock()

    def usable(self, peer: Peer) -> bool:
        return (
            peer.host_id == local_host_id()
            and peer.host_tier_path is not None
            and os.path.exists(os.path.join(peer.host_tier_path, "data.mdb"))
        )

    def _reader(self, path: str) -> TierReader:
        with self._lock:
            r = self._readers.get(path)
            if r is None:
                r = self._readers[path] = TierReader(path)
            return r

    def fetch(self, keys: Sequence[BlockKey], peer: Peer) -> PathResult:
        if peer.host_tier_path is None:
            raise TransferError("shm: peer has no host tier")
        try:
            reader = self._reader(peer.host_tier_path)
        except Exception as e:  # lmdb.Error and OSError: the path is not usable
            raise TransferError(f"shm: cannot open {peer.host_tier_path}: {e}") from e
        before = reader.corrupt
        objs = reader.get_many(keys)
        bad = reader.corrupt - before
        return PathResult(objs, error=f"shm: {bad} corrupt block(s)" if bad else None)

    def close(self) -> None:
        with self._lock:
            for r in self._readers.values():
                r.close()
            self._readers.clear()


__all__ = ["SharedHostBackend"]
