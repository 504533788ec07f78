"""Prefaulting a tier's memory map (``TierConfig.prefault``).

A put into a fresh tmpfs-backed tier writes pages that do not exist yet: each 4 KiB
page costs a page fault in which the kernel allocates and zeroes it, and those faults,
not the copy, are most of a put's time until the tier has filled once and LMDB reuses
freed pages. Prefaulting takes the pages (and this process's page-table entries for
them) when the tier opens, as a memory pool allocated up front would: the tier's
capacity in RAM from the start, instead of as it fills.

Linux: ``madvise(MADV_POPULATE_WRITE)`` (5.14+) on LMDB's own mapping, found in
``/proc/self/maps``; where that is refused, ``posix_fallocate`` of the file (the pages
exist, a put still takes a cheaper fault to map each one).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Literal

log = logging.getLogger(__name__)

MADV_POPULATE_WRITE = 23
Prefaulted = Literal["madvise", "fallocate", "none"]


def _mapping_of(path: str) -> tuple[int, int] | None:
    """(address, length) of this process's mapping of ``path`` from offset 0."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].strip() == real and int(parts[2], 16) == 0:
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    return lo, hi - lo
    except OSError:
        return None
    return None


def prefault(path: str, nbytes: int) -> Prefaulted:
    """Take the first ``nbytes`` of the file ``path`` (a tier's ``data.mdb``, mapped by
    LMDB in this process) into memory now. Returns how (``none``: not done, logged)."""
    mapping = _mapping_of(path)
    if mapping is not None:
        addr, length = mapping
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.madvise(addr, min(nbytes, length), MADV_POPULATE_WRITE) == 0:
            return "madvise"
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, nbytes)
        finally:
            os.close(fd)
        return "fallocate"
    except OSError as e:
        log.warning("could not prefault %s: %s", path, e)
        return "none"


__all__ = ["Prefaulted", "prefault"]
