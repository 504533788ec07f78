"""Shared-memory arenas: tmpfs files a worker and its engine process both map, so KV
crosses between them without the engine socket.

- The **export arena**: an engine exporting a prefilled request's KV for the hand-off
  used to copy every block out of its pool into a numpy array and pickle it down the
  socket to its worker (two more copies), where the store staged it (another) before
  LMDB copied it into the host tier. Now the engine lays each block's record (header,
  checksum, payload: :func:`~mooncake.store.records.write_record_in_place`) straight
  from its pool into the arena, and the worker hands the records to LMDB, which copies
  them into the tier: two copies per block. (One would need LMDB's reserve-then-write
  put, which py-lmdb does not offer.)
- The **receive arena**: blocks fetched from another host land (checked) in receive
  buffers carved from it (``mooncake.transfer.base.ShmBufferPool``); the engine imports
  them from there into its pool, told only where they are.

Both mappings are prefaulted (``MAP_POPULATE``): an arena's pages are taken when the
worker makes it. The worker owns an arena: it makes the file, carves a region per use out of it
(:meth:`ShmArena.alloc`) and frees the region when done. The engine only maps the file
(:func:`map_arena`) and reads or writes where it is told.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from dataclasses import dataclass

_ALIGN = 4096
_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
"""Prefaulted: the worker's mapping allocates the arena's pages when it makes the file,
and each process that maps it gets all its page-table entries at once, so no copy into
or out of the arena pays a page fault per 4 KiB (the first export into a fresh region
did: most of its time). An arena is tens of MiB, taken up front like a pool."""


@dataclass(frozen=True, slots=True)
class Region:
    """A part of the arena lent to one export."""

    offset: int
    size: int


class ShmArena:
    """A tmpfs file of ``size`` bytes shared with the engine process, and its allocator.

    Args:
        path: the file (in the worker's own directory on tmpfs); created, replaced if
            it exists, and removed by :meth:`close`.
        size: bytes; regions are carved out of it first-fit, 4 KiB aligned.
    """

    def __init__(self, path: str, size: int) -> None:
        if size <= 0:
            raise ValueError(f"size: must be positive, got {size}")
        self.path = path
        self.size = size
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size, flags=_FLAGS)
        finally:
            os.close(fd)
        self._free: list[tuple[int, int]] = [(0, size)]  # (offset, size), by offset
        probe = ctypes.c_char.from_buffer(self._map)
        self.address = ctypes.addressof(probe)
        """Where this process mapped the arena (to tell whether a view lies inside)."""
        del probe  # an exported buffer would keep the map from closing
        self._lock = threading.Lock()

    def alloc(self, nbytes: int) -> Region | None:
        """A free region of at least ``nbytes``, or ``None`` when none is (then the
        caller goes the old way)."""
        need = max(_ALIGN, -(-nbytes // _ALIGN) * _ALIGN)
        with self._lock:
            for i, (off, size) in enumerate(self._free):
                if size >= need:
                    if size == need:
                        del self._free[i]
                    else:
                        self._free[i] = (off + need, size - need)
                    return Region(off, need)
        return None

    def most_records(self, record_bytes: int) -> int:
        """How many records of ``record_bytes`` one region can hold at most (the whole
        arena, after alignment); at least 1, so a caller asks and is refused."""
        return max(1, (self.size // _ALIGN * _ALIGN) // record_bytes)

    def free(self, region: Region) -> None:
        """Give a region back (merged with free neighbours)."""
        with self._lock:
            spans = sorted([*self._free, (region.offset, region.size)])
            merged: list[tuple[int, int]] = []
            for off, size in spans:
                if merged and merged[-1][0] + merged[-1][1] == off:
                    merged[-1] = (merged[-1][0], merged[-1][1] + size)
                else:
                    merged.append((off, size))
            self._free = merged

    def view(self, region: Region) -> memoryview:
        """The region's bytes (valid until :meth:`close`)."""
        return memoryview(self._map)[region.offset : region.offset + region.size]

    def offset_of(self, address: int, nbytes: int) -> int | None:
        """The arena offset of ``nbytes`` at ``address`` in this process, ``None`` when
        they are not all inside the arena."""
        off = address - self.address
        return off if 0 <= off and off + nbytes <= self.size else None

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return sum(s for _, s in self._free)

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a view is still out: the mapping goes with the process
            pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def map_arena(path: str) -> mmap.mmap:
    """The engine side: map an arena its worker made (read-write, shared)."""
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size, flags=_FLAGS)
    finally:
        os.close(fd)


__all__ = ["Region", "ShmArena", "map_arena"]
