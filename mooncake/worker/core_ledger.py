"""A host-wide ledger of CPU cores between engine processes (``WorkerConfig.cpu_core_lending``).

Each engine process on a host that lends cores has one slot in a small shared file
(tmpfs, under ``WorkerConfig.store_root``): its pid and the process's start time (so a
reused pid is not taken for the engine), the cores it owns (the CPUs its threads are
pinned to), whether it has work and when it last had, and the cores it borrows from
peers right now. ``mooncake.worker.core_lending`` decides from these what an engine
may use; this module only reads and writes the file.

Every read and write happens under an exclusive ``flock`` on the file: a slot is a few
hundred bytes and the whole ledger a few kilobytes, so one lock is cheap (microseconds)
and two borrowers can never both take the same idle core. A process that dies keeps its
slot until a peer notices (``process_alive``) and clears it: a dead engine neither lends
nor keeps a claim.

Layout (little-endian): a 64-byte header (magic, version, slot count, slots in use)
then ``NUM_SLOTS`` slots of ``SLOT.size`` bytes each. Core sets are bit masks of
``MAX_CPUS`` bits.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"MCCORES1"
VERSION = 1
MAX_CPUS = 1024
"""Highest CPU number + 1 a core set can name."""
NUM_SLOTS = 32
"""Engine processes that can lend on one host (the ledger is full past this)."""
_MASK = MAX_CPUS // 8
HEADER = struct.Struct("<8sIII44x")
"""magic, version, slot count, slots in use (the highest index ever taken + 1)."""
SLOT = struct.Struct(f"<iIQIId{_MASK}s{_MASK}s")
"""pid, -, start time, busy, -, last busy (CLOCK_MONOTONIC s), owned mask, borrowed mask."""
SIZE = HEADER.size + NUM_SLOTS * SLOT.size


def ledger_path(store_root: str) -> str:
    """The ledger of the engines that share ``store_root`` (one per user: a tmpfs file is
    readable by its owner only)."""
    return str(Path(store_root) / f"mooncake-cores-{os.getuid()}")


@dataclass(frozen=True, slots=True)
class Slot:
    """One engine process's entry."""

    pid: int
    start_time: int
    """The process's start time (``/proc/PID/stat`` field 22; 0 where unknown)."""
    busy: bool
    """It has running or waiting requests."""
    last_busy: float
    """``time.monotonic()`` (system-wide on Linux) of its last step, or when it went idle."""
    owned: frozenset[int]
    borrowed: frozenset[int]


def _mask(cpus: Iterable[int]) -> bytes:
    bits = 0
    for c in cpus:
        if not 0 <= c < MAX_CPUS:
            raise ValueError(f"cpu_core_lending: CPU {c} is outside 0..{MAX_CPUS - 1}")
        bits |= 1 << c
    return bits.to_bytes(_MASK, "little")


def _cpus(mask: bytes) -> frozenset[int]:
    bits = int.from_bytes(mask, "little")
    out = []
    while bits:
        low = bits & -bits
        out.append(low.bit_length() - 1)
        bits ^= low
    return frozenset(out)


def process_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot, ``None`` if there is
    no such process (0 where /proc does not say)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0


def process_alive(pid: int, start_time: int) -> bool:
    """Whether ``pid`` is still the process that took the slot (same start time)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process with this pid: alive, judged by the start time
    now = process_start_time(pid)
    return now is not None and (start_time == 0 or now == 0 or now == start_time)


class CoreLedger:
    """The ledger file at ``path``, created if missing.

    Raises:
        ValueError: the file exists and is not a ledger of this version.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            with self.locked():
                size = os.fstat(self._fd).st_size
                if size == 0:
                    os.ftruncate(self._fd, SIZE)
                    os.pwrite(self._fd, HEADER.pack(MAGIC, VERSION, NUM_SLOTS, 0), 0)
                elif size != SIZE:
                    raise ValueError(f"cpu_core_lending: {path} is not a core ledger")
                self._mm = mmap.mmap(self._fd, SIZE)
                if self._mm[:8] == bytes(8):  # its creator died before writing the header
                    HEADER.pack_into(self._mm, 0, MAGIC, VERSION, NUM_SLOTS, 0)
                magic, version, slots, _ = HEADER.unpack_from(self._mm, 0)
                if (magic, version, slots) != (MAGIC, VERSION, NUM_SLOTS):
                    self._mm.close()
                    raise ValueError(f"cpu_core_lending: {path} is not a core ledger")
        except BaseException:
            os.close(self._fd)
            raise

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the ledger's lock (every other method expects it held)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _used(self) -> int:
        n: int = HEADER.unpack_from(self._mm, 0)[3]
        return min(n, NUM_SLOTS)

    def read(self) -> dict[int, Slot]:
        """The slots in use, by index (lock held)."""
        out = {}
        for i in range(self._used()):
            pid, _, start, busy, _, last, owned, borrowed = SLOT.unpack_from(
                self._mm, HEADER.size + i * SLOT.size
            )
            if pid:
                out[i] = Slot(pid, start, bool(busy), last, _cpus(owned), _cpus(borrowed))
        return out

    def take(self, slot: Slot, alive: Callable[[int, int], bool] | None = None) -> int:
        """Write ``slot`` into a free slot, or one whose process is gone (lock held).

        Args:
            alive: whether a slot's process still runs (default :func:`process_alive`).

        Returns:
            Its index.
        Raises:
            RuntimeError: every slot belongs to a live process.
        """
        taken = self.read()
        for i in range(NUM_SLOTS):
            old = taken.get(i)
            if old is None or not (alive or process_alive)(old.pid, old.start_time):
                self.write(i, slot)
                if i >= self._used():
                    HEADER.pack_into(self._mm, 0, MAGIC, VERSION, NUM_SLOTS, i + 1)
                return i
        raise RuntimeError(f"cpu_core_lending: all {NUM_SLOTS} slots of {self.path} are in use")

    def write(self, index: int, slot: Slot) -> None:
        """Overwrite slot ``index`` (lock held)."""
        SLOT.pack_into(
            self._mm,
            HEADER.size + index * SLOT.size,
            slot.pid,
            0,
            slot.start_time,
            int(slot.busy),
            0,
            slot.last_busy,
            _mask(slot.owned),
            _mask(slot.borrowed),
        )

    def clear(self, index: int) -> None:
        """Free slot ``index`` (lock held)."""
        SLOT.pack_into(self._mm, HEADER.size + index * SLOT.size, 0, 0, 0, 0, 0, 0.0, b"", b"")

    def close(self) -> None:
        self._mm.close()
        os.close(self._fd)


__all__ = [
    "NUM_SLOTS",
    "CoreLedger",
    "Slot",
    "ledger_path",
    "process_alive",
    "process_start_time",
]
