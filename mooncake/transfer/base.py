"""What every transfer backend shares: peer addresses, the fetch result, receive buffers.

A backend moves a list of blocks from the peer that has them to this process. It
returns each block as a checked :class:`~mooncake.store.BlockObject` or reports it
missing; it never hands out bytes that failed their checksum.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from mooncake.store.block_object import BlockObject
from mooncake.types import BlockKey

PathName = str  # "shm", "tcp", "rdma"


@functools.cache
def local_host_id() -> str:
    """Identity of this host: processes with equal ids share /dev/shm and the host tier.

    The hostname and boot id, and the device of /dev/shm: containers (or test hosts in
    namespaces) on one machine share the boot id and may share a hostname, but a private
    /dev/shm is a tmpfs of its own, and a peer whose shared memory is elsewhere must be
    reached over the network."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:  # pragma: no cover - non-Linux
        boot = ""
    try:
        shm = str(os.stat("/dev/shm").st_dev)
    except OSError:  # pragma: no cover - no /dev/shm
        shm = ""
    return f"{socket.gethostname()}/{boot}/{shm}"


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a worker's blocks can be fetched from (published by that worker)."""

    host_id: str
    """:func:`local_host_id` of the peer's host."""
    tcp: tuple[str, int] | None = None
    """Address of its block server."""
    host_tier_path: str | None = None
    """Its host tier directory (readable zero-copy by processes on the same host)."""
    rdma: bool = False
    """Its block server accepts RDMA reads."""

    def to_msg(self) -> dict[str, Any]:
        """As it travels in the worker's info (msgpack: the address becomes a list)."""
        return {
            "host_id": self.host_id,
            "tcp": list(self.tcp) if self.tcp is not None else None,
            "host_tier_path": self.host_tier_path,
            "rdma": self.rdma,
        }

    @classmethod
    def from_msg(cls, msg: dict[str, Any] | None) -> Peer | None:
        """The peer of a worker's info (None: the worker has no store)."""
        if not msg:
            return None
        tcp = msg.get("tcp")
        return cls(
            str(msg["host_id"]),
            (str(tcp[0]), int(tcp[1])) if tcp else None,
            msg.get("host_tier_path"),
            bool(msg.get("rdma", False)),
        )


class TransferError(RuntimeError):
    """A path failed (connect, protocol, timeout); the fetcher retries elsewhere.

    ``partial`` holds what arrived intact before the failure, if anything.
    """

    def __init__(self, msg: str, partial: PathResult | None = None) -> None:
        super().__init__(msg)
        self.partial = partial


class BufferPool:
    """Reusable receive buffers by size: reusing pages avoids a page fault per 4 KiB,
    which halves the copy rate of a fresh allocation.

    Args:
        max_bytes: most bytes kept idle in the pool.
    """

    def __init__(self, max_bytes: int) -> None:
        self._free: dict[int, list[np.ndarray]] = {}
        self._idle = 0
        self._max = max_bytes
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            bufs = self._free.get(nbytes)
            if bufs:
                self._idle -= nbytes
                return bufs.pop()
        return np.empty(nbytes, dtype=np.uint8)

    def give(self, buf: np.ndarray) -> None:
        with self._lock:
            if self._idle + buf.nbytes <= self._max:
                self._free.setdefault(buf.nbytes, []).append(buf)
                self._idle += buf.nbytes


@dataclass
class FetchResult:
    """Blocks fetched from a peer, index-aligned with the requested keys.

    ``objects[i]`` is ``None`` for a miss (the receiver recomputes that block). Objects
    may live in pooled receive buffers: use them, copy them (``put_objects`` into a
    store, or ``to_kvblock``), then :meth:`release` (or use ``with``); do not touch them
    after release.
    """

    keys: list[BlockKey]
    objects: list[BlockObject | None]
    paths: list[PathName | None]
    """Path that delivered each block (``None`` for a miss)."""
    retried: int = 0
    """Blocks that needed the second path."""
    errors: list[str] = field(default_factory=list)
    """What went wrong on each failed attempt (for logs and tests)."""
    _buffers: list[np.ndarray] = field(default_factory=list, repr=False)
    _pool: BufferPool | None = field(default=None, repr=False)

    @property
    def missing(self) -> list[BlockKey]:
        return [k for k, o in zip(self.keys, self.objects) if o is None]

    @property
    def num_fetched(self) -> int:
        return len(self.objects) - self.objects.count(None)

    @property
    def prefix_len(self) -> int:
        """Leading blocks received: only a prefix of a sequence's KV is usable."""
        n = 0
        for o in self.objects:
            if o is None:
                break
            n += 1
        return n

    @property
    def nbytes(self) -> int:
        return sum(o.header.payload_nbytes for o in self.objects if o is not None)

    def release(self) -> None:
        """Return receive buffers to the pool; the objects are invalid afterwards."""
        self.objects = [None] * len(self.objects)
        if self._pool is not None:
            for b in self._buffers:
                self._pool.give(b)
        self._buffers = []

    def __enter__(self) -> FetchResult:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


@dataclass
class PathResult:
    """What one backend returned for the keys it was asked for."""

    objects: list[BlockObject | None]
    buffers: list[np.ndarray] = field(default_factory=list)
    error: str | None = None


class Backend(Protocol):
    """One path to a peer's blocks."""

    name: PathName

    def usable(self, peer: Peer) -> bool:
        """Whether this path can reach ``peer`` at all."""
        ...

    def fetch(self, keys: Sequence[BlockKey], peer: Peer) -> PathResult:
        """Fetch ``keys``; checked objects or ``None`` each. Raises :class:`TransferError`
        when the path fails as a whole (what arrived before the failure is kept in
        the error's ``partial`` attribute when there is any)."""
        ...

    def close(self) -> None: ...


__all__ = [
    "Backend",
    "BufferPool",
    "FetchResult",
    "PathName",
    "PathResult",
    "Peer",
    "TransferError",
    "local_host_id",
]
