"""Counters of the KV bytes each process copies, by where the copy happens.

The hand-off of a request's KV from a prefill engine to a decode engine crosses several
processes (engine, worker, peer worker, engine), and every copy on the way costs memory
bandwidth on the critical path. Each place that copies KV payload bytes adds them here,
so a test (or an operator, through the engine's ``stats``) can count copies per block:
bytes copied at a place / bytes of the blocks handed off.

Places (``<layer>.<what>``):

- ``engine.export``: the engine copies a block out of its paged pool;
- ``engine.import``: the engine copies a block into its paged pool;
- ``channel.send`` / ``channel.recv``: worker <-> engine socket (each side of it);
- ``store.stage``: the store assembles a record before LMDB takes it;
- ``store.put``: LMDB copies a record into the tier's map;
- ``transfer.send`` / ``transfer.recv``: a block server / the fetcher moves records
  over a network path.

Separate checksum passes (a read of the payload that is not fused with its copy) count
under ``check.<where>``, apart from the copies: ``check.export`` (an engine summed a
record it had written), ``check.read`` (a store read verified a payload),
``check.import`` (an engine checked a block before copying it in).

Plain integers in one process, no lock: a lost increment under a race only blurs a
diagnostic.
"""

from __future__ import annotations

from collections import Counter

COPIED: Counter[str] = Counter()
"""Bytes copied per place, since the process started (or :func:`reset`)."""


def count(place: str, nbytes: int) -> None:
    """Record that ``nbytes`` of KV payload were copied at ``place``."""
    COPIED[place] += nbytes


def snapshot() -> dict[str, int]:
    """The counters now (a copy)."""
    return dict(COPIED)


def reset() -> None:
    COPIED.clear()


__all__ = ["COPIED", "count", "reset", "snapshot"]
