"""The paged KV pool in a shared-memory file, for the same-host pool -> pool hand-off.

A prefill engine whose worker sets ``EngineConfig.kv_pool_path`` (a file in the
worker's own tier directory under ``/dev/shm``) keeps its KV pool there instead of in
private memory: the file is one header page, then the pool tensor ``[layers, K/V,
slots, Hkv, D]`` exactly as ``ModelRunner`` uses it. It is prefaulted at start (every
page written once) so the engine's first prefill does not pay a fault per 4 KiB.

A decode engine on the same host maps the file read-only (:func:`map_pool`), checks the
header once per mapping (model fingerprint, dtype, shape, block size: a mismatch means
the hand-off goes the export arena's way) and copies a request's blocks from the prefill
engine's live pool into its own, one strided copy per block. There is no checksum: the
bytes did not travel, and the prefill engine holds the blocks (neither freed nor
reused) until the hand-off's lease is released or expires (``arena_handoff``).

The file lives in the worker's tier directory, so the tier directories' sweep removes it
after a ``kill -9`` (``mooncake.store.tier_dirs``); the engine unlinks it when it stops.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

MAGIC = "mooncake-kv-pool-1"
HEADER_BYTES = 4096
"""The header page (JSON, NUL-padded); the pool starts at this offset, page aligned."""

_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
"""Bytes per element of each KV dtype (no torch here: the worker imports this module)."""


@dataclass(frozen=True)
class PoolHeader:
    """What a mapping of a pool file must match before any block is copied from it."""

    fingerprint: str
    dtype: str
    shape: tuple[int, ...]
    """``[layers, 2, slots, Hkv, D]``."""
    block_size: int

    def encode(self) -> bytes:
        raw = json.dumps(
            {
                "magic": MAGIC,
                "fingerprint": self.fingerprint,
                "dtype": self.dtype,
                "shape": list(self.shape),
                "block_size": self.block_size,
            }
        ).encode()
        if len(raw) >= HEADER_BYTES:
            raise ValueError("kv_pool_path: header too long")
        return raw + b"\0" * (HEADER_BYTES - len(raw))

    @classmethod
    def decode(cls, raw: bytes) -> PoolHeader:
        d = json.loads(raw.rstrip(b"\0").decode())
        if d.get("magic") != MAGIC:
            raise ValueError("not a mooncake KV pool file")
        return cls(d["fingerprint"], d["dtype"], tuple(d["shape"]), int(d["block_size"]))

    @property
    def nbytes(self) -> int:
        n = 1
        for x in self.shape:
            n *= x
        return n * _ITEMSIZE[self.dtype]


def create_pool(path: str, header: PoolHeader, prefault: Callable[[mmap.mmap], T]) -> T:
    """Create the pool file at ``path`` (replacing one left there), map it shared,
    have ``prefault`` make the pool over the mapping (``ModelRunner``: a tensor at
    ``HEADER_BYTES``, every page written once) and publish the file. Returns what
    ``prefault`` made (it keeps the mapping alive). Raises ``OSError`` where the file
    cannot be made (the caller keeps the pool in private memory)."""
    size = HEADER_BYTES + header.nbytes
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        # Reserved now: a tmpfs too small fails here (ENOSPC), not as a SIGBUS mid-step.
        os.posix_fallocate(fd, 0, size)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    made = prefault(mm)
    mm[:HEADER_BYTES] = header.encode()
    os.replace(tmp, path)  # readers see a file only once its header is there
    return made


@dataclass
class MappedPool:
    """A read-only mapping of another engine's pool file and its checked header."""

    header: PoolHeader
    mm: mmap.mmap
    address: int
    """Address of the pool's first byte (after the header page) in this process."""


def map_pool(path: str) -> MappedPool:
    """Map the pool file at ``path`` read-only and read its header. Raises ``OSError``
    (gone) or ``ValueError`` (not a pool file, or truncated)."""
    import numpy as np

    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < HEADER_BYTES:
            raise ValueError(f"{path}: truncated KV pool file")
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)
    header = PoolHeader.decode(bytes(mm[:HEADER_BYTES]))
    if size < HEADER_BYTES + header.nbytes:
        mm.close()
        raise ValueError(f"{path}: truncated KV pool file")
    address = int(np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data) + HEADER_BYTES
    return MappedPool(header, mm, address)


def header_for(fingerprint: str, dtype: str, pool_shape: Any, block_size: int) -> PoolHeader:
    return PoolHeader(fingerprint, dtype, tuple(int(x) for x in pool_shape), block_size)


__all__ = ["HEADER_BYTES", "MappedPool", "PoolHeader", "create_pool", "header_for", "map_pool"]
