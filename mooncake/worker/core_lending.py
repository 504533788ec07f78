"""Core lending: an engine with work computes on its own cores plus those of idle peers on
the same host (``WorkerConfig.cpu_core_lending``).

An embedded cluster pins each engine process to its own slice of the CPUs, so in 1
prefill + 1 decode on a small box a lone prefill runs on half the machine while the
decode engine's cores sit idle. Here, before each step, an engine with work marks itself
busy in the host's ledger (``mooncake.worker.core_ledger``) and takes the cores of peers
that have none: its thread pool grows to own + borrowed cores, thread t pinned to the
t-th (own first, so the loop's own thread never moves). A peer that gets work marks
itself busy before its first step; the borrower sees that at its next step boundary and
gives the cores back, so a lender waits at most one of the borrower's steps (one prefill
chunk) with a shared core. An engine that runs out of work gives back at once.

The decision is :func:`cores_to_use`, a pure function of the slots; :class:`CoreLender`
applies it (the ledger under its lock, then the thread binding only when the set
changed: rebinding costs microseconds, the ledger check tens of them).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mooncake.worker.core_ledger import CoreLedger, Slot, process_alive, process_start_time

logger = logging.getLogger(__name__)

ALIVE_RECHECK_S = 1.0
"""How long a peer found alive is taken to be alive before /proc is read again."""


@dataclass(frozen=True, slots=True)
class LendingSetup:
    """What an engine process needs to lend and borrow cores (sent by its worker)."""

    ledger_path: str
    """The host's ledger (``core_ledger.ledger_path``)."""
    idle_s: float = 0.0
    """A peer lends its cores once it has had no work for this long."""


def cores_to_use(
    own: Sequence[int],
    peers: Iterable[Slot],
    now: float,
    idle_s: float,
    usable: frozenset[int],
) -> tuple[int, ...]:
    """The cores an engine with work may compute on: its own, then (sorted) each core
    that a live peer owns and no live peer needs.

    A core is lent only if every peer that owns it has been idle for ``idle_s`` (a core
    two engines own is lent by neither while one of them has work), no other peer
    borrows it already (two borrowers never share a core), the engine does not own it
    itself and this process may run on it (``usable``).

    Args:
        own: the engine's own cores, in the order its threads are pinned to them.
        peers: the other live engines' slots.
        now: ``time.monotonic()``.
        idle_s: how long a peer must have been idle to lend.
        usable: the CPUs this process may run on.
    Returns:
        ``own`` followed by the borrowed cores.
    """
    needed: set[int] = set()
    lendable: set[int] = set()
    for p in peers:
        needed |= p.borrowed
        if p.busy or now - p.last_busy < idle_s:
            needed |= p.owned
        else:
            lendable |= p.owned
    borrow = (lendable - needed - set(own)) & usable
    return tuple(own) + tuple(sorted(borrow))


@dataclass
class LendingStats:
    """Counters since the engine started lending (``EngineLoop.stats()["core_lending"]``)."""

    steps: int = 0
    """Steps taken with a ledger check."""
    borrowed_steps: int = 0
    """Of them, steps run with at least one borrowed core."""
    rebinds: int = 0
    """Thread-pool changes (only when the set of cores changed)."""
    ledger_s: float = 0.0
    """Seconds spent in ledger checks (the lock, reading the slots, writing its own)."""
    rebind_s: float = 0.0
    """Seconds spent resizing and re-pinning the thread pool."""
    reclaimed: int = 0
    """Slots of dead processes this engine cleared."""


class CoreLender:
    """One engine process's side of core lending; the engine loop calls :meth:`step`
    before each step and :meth:`idle` when it has no work.

    Args:
        ledger: the host's ledger (owned from now on: :meth:`close` closes it).
        own: the cores the engine's threads are pinned to, thread t to ``own[t]``.
        usable: the CPUs the process may run on (before the engine pinned itself).
        rebind: pins thread t of the compute pool to ``cpus[t]``, resizing the pool
            (``mooncake.engine.thread_bind.bind_threads``).
        idle_s: a peer lends once idle this long (``LendingSetup.idle_s``).
        clock: ``time.monotonic`` (system-wide on Linux, so comparable across processes).
        alive: whether a slot's process still runs (``core_ledger.process_alive``).
    """

    def __init__(
        self,
        ledger: CoreLedger,
        own: Sequence[int],
        usable: Iterable[int],
        rebind: Callable[[list[int]], object],
        idle_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        alive: Callable[[int, int], bool] = process_alive,
    ) -> None:
        self.ledger = ledger
        self.own = tuple(own)
        self.usable = frozenset(usable)
        self.rebind = rebind
        self.idle_s = idle_s
        self.clock = clock
        self.alive = alive
        self.pid = os.getpid()
        self.start_time = process_start_time(self.pid) or 0
        self.cores: tuple[int, ...] = self.own
        """The cores the thread pool is pinned to now."""
        self.stats = LendingStats()
        self._busy = False
        self._alive_at: dict[tuple[int, int], float] = {}
        with ledger.locked():
            self.index = ledger.take(self._slot(False, clock(), frozenset()), alive)

    def _slot(self, busy: bool, now: float, borrowed: frozenset[int]) -> Slot:
        return Slot(self.pid, self.start_time, busy, now, frozenset(self.own), borrowed)

    def _live_peers(self, slots: dict[int, Slot], now: float) -> list[Slot]:
        peers = []
        for i, s in slots.items():
            if i == self.index:
                continue
            key = (s.pid, s.start_time)
            seen = self._alive_at.get(key)
            if seen is None or now - seen > ALIVE_RECHECK_S:
                if not self.alive(s.pid, s.start_time):
                    # A dead engine lends nothing and keeps no claim: free its slot.
                    self.ledger.clear(i)
                    self._alive_at.pop(key, None)
                    self.stats.reclaimed += 1
                    logger.info("core lending: cleared the slot of dead process %d", s.pid)
                    continue
                self._alive_at[key] = now
            peers.append(s)
        return peers

    def _mine(self, slots: dict[int, Slot]) -> None:
        """Take a slot again if ours was cleared (a peer judged this process dead)."""
        s = slots.get(self.index)
        if s is None or (s.pid, s.start_time) != (self.pid, self.start_time):
            self.index = self.ledger.take(
                self._slot(self._busy, self.clock(), frozenset()), self.alive
            )

    def step(self) -> tuple[int, ...]:
        """Before a step: mark this engine busy, keep its own cores plus those idle peers
        lend now, and re-pin the thread pool if that set changed.

        Returns:
            The cores the step runs on.
        """
        t0 = time.perf_counter()
        now = self.clock()
        with self.ledger.locked():
            slots = self.ledger.read()
            self._mine(slots)
            cores = cores_to_use(
                self.own, self._live_peers(slots, now), now, self.idle_s, self.usable
            )
            self.ledger.write(self.index, self._slot(True, now, frozenset(cores[len(self.own) :])))
        self._busy = True
        self.stats.steps += 1
        self.stats.ledger_s += time.perf_counter() - t0
        if len(cores) > len(self.own):
            self.stats.borrowed_steps += 1
        self._apply(cores)
        return cores

    def idle(self) -> None:
        """No work left: mark this engine idle (it lends its cores from now on) and give
        back what it borrowed. Cheap when already idle."""
        if not self._busy:
            return
        t0 = time.perf_counter()
        with self.ledger.locked():
            self._mine(self.ledger.read())
            self.ledger.write(self.index, self._slot(False, self.clock(), frozenset()))
        self._busy = False
        self.stats.ledger_s += time.perf_counter() - t0
        self._apply(self.own)

    def _apply(self, cores: tuple[int, ...]) -> None:
        if cores == self.cores:
            return
        t0 = time.perf_counter()
        self.rebind(list(cores))
        self.cores = cores
        self.stats.rebinds += 1
        self.stats.rebind_s += time.perf_counter() - t0

    def report(self) -> dict[str, Any]:
        """The counters and the cores in use now (for the engine's stats)."""
        import dataclasses

        return {**dataclasses.asdict(self.stats), "own": list(self.own), "cores": list(self.cores)}

    def close(self) -> None:
        """Leave the ledger (a process that dies without this is cleared by its peers)."""
        try:
            with self.ledger.locked():
                slots = self.ledger.read()
                s = slots.get(self.index)
                if s is not None and (s.pid, s.start_time) == (self.pid, self.start_time):
                    self.ledger.clear(self.index)
        finally:
            self.ledger.close()


__all__ = ["CoreLender", "LendingSetup", "LendingStats", "cores_to_use"]
