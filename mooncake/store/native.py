"""Compiled block-record checks (``csrc/block_records.c``), loaded on first use.

The C library computes ``sum64`` and checks records laid back to back (a transfer
response), and can receive such a response from a socket checking each record as soon
as it has arrived, in one call without the GIL. It is built by
:mod:`mooncake.native_build` (``-O3 -march=native``, cached). Where it cannot be built
(no compiler, ``MOONCAKE_NATIVE_KERNELS=0``) :func:`records_lib` returns ``None`` and the
callers use their numpy twins in :mod:`mooncake.store.records`, which give identical
results (``tests/store/test_records.py`` checks both).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from mooncake import native_build

SOURCE = Path(__file__).with_name("csrc") / "block_records.c"
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=gnu11"]


class RecordsLib:
    """ctypes bindings of the compiled library (raw addresses; see ``records.py``)."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.path = path
        p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
        self.sum64 = lib.mc_sum64
        self.sum64.argtypes = [p, i64]
        self.sum64.restype = ctypes.c_uint64
        self.copy_sum64 = lib.mc_copy_sum64
        self.copy_sum64.argtypes = [p, p, i64]
        self.copy_sum64.restype = ctypes.c_uint64
        self.copy_sum64_strided = lib.mc_copy_sum64_strided
        self.copy_sum64_strided.argtypes = [p, i64, p, i64, i64, i64]
        self.copy_sum64_strided.restype = ctypes.c_uint64
        self.copy_sum64_many = lib.mc_copy_sum64_many
        self.copy_sum64_many.argtypes = [p, p, i64, p, p, i64, i64, i64, i64, p]
        self.copy_sum64_many.restype = None
        self.copy_many = lib.mc_copy_many
        self.copy_many.argtypes = [p, p, i64, p, p, i64, i64, i64, i64]
        self.copy_many.restype = None
        self.check_records = lib.mc_check_records
        self.check_records.argtypes = [p, p, i64, p, p, p, p]
        self.check_records.restype = i64
        self.recv_records = lib.mc_recv_records
        self.recv_records.argtypes = [ctypes.c_int, p, p, i64, p, p, p, p, i64, i32, p]
        self.recv_records.restype = i64


_LIB = native_build.LoadOnce(SOURCE, FLAGS, RecordsLib, what="native block checks")


def records_lib() -> RecordsLib | None:
    """The compiled library, built on first call; ``None`` where unavailable."""
    return _LIB.get()


__all__ = ["RecordsLib", "records_lib"]
