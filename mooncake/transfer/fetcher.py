"""The transfer interface: move a list of blocks from a peer to this process.

Paths to a peer, best first: the shared host tier (same host, zero copy), RDMA (when
selected and the peer serves it), TCP. A fetch asks the first usable path for every
key; whatever did not arrive intact (missing there, corrupt, connection lost midway)
is asked once more on the next path — or, when there is only one, on a fresh
connection of the same one. What still did not arrive is a miss: the receiver
recomputes it. Bytes that failed a check are never returned.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mooncake.store.block_object import BlockObject
from mooncake.store.store import BlockStore
from mooncake.transfer.base import (
    Backend,
    BufferPool,
    FetchResult,
    PathName,
    PathResult,
    Peer,
    TransferError,
)
from mooncake.transfer.config import TransferConfig
from mooncake.transfer.local import SharedHostBackend
from mooncake.transfer.select import select_backend
from mooncake.transfer.tcp import TcpBackend
from mooncake.types import BlockKey

log = logging.getLogger(__name__)


def default_backends(config: TransferConfig, pool: BufferPool) -> list[Backend]:
    """shm (unless ``config.same_host`` is off), then RDMA if :func:`select_backend`
    picks it, then TCP."""
    backends: list[Backend] = [SharedHostBackend()] if config.same_host else []
    if select_backend(config) == "rdma":
        from mooncake.transfer.rdma import RdmaBackend

        try:
            backends.append(RdmaBackend(config, pool))
        except Exception as e:  # pyverbs import or device errors
            if config.backend == "rdma":
                raise
            log.info("transfer: RDMA backend unavailable (%s); using the TCP backend", e)
    backends.append(TcpBackend(config, pool))
    return backends


class BlockFetcher:
    """Fetches blocks from peers over the best path, retrying once on another.

    Args:
        config: transfer settings.
        backends: paths in preference order (default: :func:`default_backends`).
        pool: receive buffers (default: ordinary memory, ``config.pool_bytes`` kept idle).
    """

    def __init__(
        self,
        config: TransferConfig | None = None,
        backends: Sequence[Backend] | None = None,
        pool: BufferPool | None = None,
    ) -> None:
        self.config = config or TransferConfig()
        self.pool = pool if pool is not None else BufferPool(self.config.pool_bytes)
        self.backends: list[Backend] = (
            list(backends) if backends is not None else default_backends(self.config, self.pool)
        )

    def paths(self, peer: Peer) -> list[Backend]:
        """Usable paths to ``peer``, best first."""
        return [b for b in self.backends if b.usable(peer)]

    def fetch(
        self, keys: Sequence[BlockKey], peer: Peer, into: BlockStore | None = None
    ) -> FetchResult:
        """Fetch ``keys`` from ``peer``; index-aligned objects, ``None`` for misses.

        Args:
            keys: block keys, usually a sequence's prefix in order.
            peer: where they are.
            into: also store every fetched block here (a verbatim copy).
        """
        keys = list(keys)
        result = FetchResult(
            keys=keys, objects=[None] * len(keys), paths=[None] * len(keys), _pool=self.pool
        )
        paths = self.paths(peer)
        if not paths:
            result.errors.append(f"no usable path to peer {peer}")
            return result
        attempts = [paths[0], paths[1] if len(paths) > 1 else paths[0]]
        todo = list(range(len(keys)))
        for n, backend in enumerate(attempts):
            if not todo:
                break
            if n == 1:
                result.retried = len(todo)
                log.info("transfer: retrying %d block(s) via %s", len(todo), backend.name)
            got = self._attempt(backend, [keys[i] for i in todo], peer, result)
            if n == 0 and None not in got:  # the common case, without a loop per block
                result.objects = list(got)
                result.paths = [backend.name] * len(keys)
                todo = []
                break
            for i, obj in zip(todo, got):
                if obj is not None:
                    result.objects[i] = obj
                    result.paths[i] = backend.name
            todo = [i for i in todo if result.objects[i] is None]
        if todo:
            log.info(
                "transfer: %d of %d block(s) missed; the receiver recomputes them",
                len(todo),
                len(keys),
            )
        if into is not None:
            into.put_objects([o for o in result.objects if o is not None])
        return result

    def poll(self, keys: Sequence[BlockKey], peer: Peer) -> FetchResult:
        """Ask ``peer``'s block server once, on the best network path (not the shared
        tier), for ``keys`` that may not all be there yet (a hand-off still streaming):
        no retry, misses are expected. Objects are as :meth:`fetch` returns them: only
        blocks that arrived intact."""
        keys = list(keys)
        result = FetchResult(
            keys=keys, objects=[None] * len(keys), paths=[None] * len(keys), _pool=self.pool
        )
        backend = next((b for b in self.paths(peer) if b.name != "shm"), None)
        if backend is None:
            result.errors.append(f"no network path to peer {peer}")
            return result
        got = self._attempt(backend, keys, peer, result)
        result.objects = list(got)
        result.paths = [backend.name if o is not None else None for o in got]
        return result

    def _attempt(
        self, backend: Backend, keys: list[BlockKey], peer: Peer, result: FetchResult
    ) -> list[BlockObject | None]:
        name: PathName = backend.name
        try:
            res: PathResult = backend.fetch(keys, peer)
        except TransferError as e:
            result.errors.append(f"{name}: {e}")
            res = e.partial or PathResult([None] * len(keys))
        else:
            if res.error:
                result.errors.append(res.error)
        result._buffers.extend(res.buffers)
        return res.objects

    def close(self) -> None:
        for b in self.backends:
            b.close()

    def __enter__(self) -> BlockFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BlockFetcher", "default_backends"]
