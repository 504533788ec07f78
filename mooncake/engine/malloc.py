"""Keep freed activation memory in the process (glibc ``mallopt``).

An engine step allocates and frees the same large activation buffers every layer
(a long prefill makes tens of MB of temporaries per layer). With glibc's defaults,
buffers above the (dynamic) mmap threshold are mapped and unmapped each time and the
heap top is trimmed back to the OS, so the next layer page-faults the same memory in
again, which costs a noticeable share of a long prefill's CPU time. Raising the
thresholds once makes those buffers come back from malloc's free lists instead. vLLM's CPU backend
gets the same effect by preloading tcmalloc.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20

_done = False


def keep_freed_memory() -> bool:
    """Raise malloc's mmap/trim thresholds for this process (once). Returns whether they
    were set (False off glibc)."""
    global _done
    if _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = all(
            libc.mallopt(opt, value) == 1
            for opt, value in (
                (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                (M_TOP_PAD, TOP_PAD),
            )
        )
    except (OSError, AttributeError):
        return False
    if not ok:
        log.info("mallopt refused a threshold; activation buffers may be re-faulted each step")
    _done = ok
    return ok


__all__ = ["keep_freed_memory"]
