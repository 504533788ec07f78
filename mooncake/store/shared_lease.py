"""Hand-off leases that every process on the host sees.

A prefill worker leases the blocks a decode worker still has to fetch, from the moment
it stores them until the decode side has them (or the request ends). The holder that
releases the lease is often another process — the decode worker, which reads the tier
in place on the same host — and the process that evicts from the tier must see the
lease, whichever it is. So the table is not a dict in one process (``LeaseTable``) but
a small LMDB environment next to the tier, opened read-write by any process on the host
(LMDB serialises writers across processes with its lock file).

Records (one write transaction per change, so a reader sees a lease whole or not at all):

- ``holders``: holder name (``handoff:<request id>``) -> expiry (``<d``) + its keys;
- ``by_key`` (sorted duplicates): block key -> holder name, for the evictor's check.

Expiry is on ``time.monotonic``: CLOCK_MONOTONIC is one clock for every process of a
Linux host. An expired lease no longer protects its blocks; :meth:`sweep` removes it and
returns it, so that its owner reports it (a decode side that never fetched: lost, or
much slower than the lease's lifetime).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import lmdb

from mooncake.types import BlockKey

_EXPIRY = struct.Struct("<d")
_LEN = struct.Struct("<H")
_MAP_SIZE = 64 << 20
"""Room for ~hundreds of thousands of leased keys; a full map raises ``LeaseTableFull``."""


def lease_dir(host_tier_path: str) -> str:
    """Where the hand-off leases of the tier at ``host_tier_path`` live (owner and
    same-host peers compute it the same way)."""
    return os.path.join(host_tier_path, "leases")


@dataclass(frozen=True, slots=True)
class ExpiredLease:
    """A lease that expired before its holder released it."""

    holder: str
    num_keys: int
    overdue_s: float
    """How long past its expiry it was found."""


class LeaseTableFull(RuntimeError):
    """The lease table's map is full."""


class SharedLeaseTable:
    """Leases by holder name, stored where every process on the host can see them.

    Args:
        path: the table's directory (:func:`lease_dir` of the tier); created if absent.
        clock: seconds on a host-wide clock (``time.monotonic``; tests pass a fake).
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = path
        self._clock = clock
        # sync off: leases are about live processes; after a host crash nothing is pending.
        self._env, self._holders, self._by_key = _open(path)

    # -- writes -----------------------------------------------------------------------
    def acquire(self, holder: str, keys: Iterable[BlockKey], ttl_s: float) -> float:
        """Lease ``keys`` to ``holder`` for ``ttl_s`` seconds (a holder that has a lease
        already gets these keys added and the later expiry); returns the expiry."""
        if ttl_s <= 0:
            raise ValueError(f"ttl_s: must be positive, got {ttl_s}")
        name = holder.encode()
        until = self._clock() + ttl_s
        try:
            with self._env.begin(write=True) as txn:
                old = txn.get(name, db=self._holders)
                have = _unpack_keys(old) if old is not None else []
                seen = set(have)
                new: list[bytes] = []
                for k in keys:
                    if k not in seen:
                        seen.add(k)
                        new.append(k)
                for nk in new:
                    txn.put(nk, name, db=self._by_key, dupdata=True)
                txn.put(name, _pack(until, have + new), db=self._holders)
        except lmdb.MapFullError as e:
            raise LeaseTableFull(f"{self.path}: lease table is full") from e
        return until

    def release(self, holder: str) -> bool:
        """Drop ``holder``'s lease; returns whether it had one."""
        name = holder.encode()
        with self._env.begin(write=True) as txn:
            rec = txn.get(name, db=self._holders)
            if rec is None:
                return False
            self._drop(txn, name, _unpack_keys(rec))
        return True

    def sweep(self) -> list[ExpiredLease]:
        """Remove every expired lease and return them (the owner reports them)."""
        now = self._clock()
        with self._env.begin() as txn:
            expired = [
                (bytes(name), rec)
                for name, rec in txn.cursor(db=self._holders)
                if _EXPIRY.unpack_from(rec)[0] <= now
            ]
        if not expired:
            return []
        out = []
        with self._env.begin(write=True) as txn:
            for name, _ in expired:
                rec = txn.get(name, db=self._holders)
                if rec is None:
                    continue  # released meanwhile
                until = _EXPIRY.unpack_from(rec)[0]
                if until > now:
                    continue  # renewed meanwhile
                keys = _unpack_keys(rec)
                self._drop(txn, name, keys)
                out.append(ExpiredLease(name.decode(), len(keys), now - until))
        return out

    def _drop(self, txn: lmdb.Transaction, name: bytes, keys: Sequence[bytes]) -> None:
        for k in keys:
            txn.delete(k, name, db=self._by_key)
        txn.delete(name, db=self._holders)

    # -- reads ------------------------------------------------------------------------
    def is_leased(self, key: BlockKey) -> bool:
        """True while an unexpired lease holds ``key``."""
        now = self._clock()
        with self._env.begin() as txn:
            cur = txn.cursor(db=self._by_key)
            if not cur.set_key(key):
                return False
            for name in cur.iternext_dup():
                rec = txn.get(name, db=self._holders)
                if rec is not None and _EXPIRY.unpack_from(rec)[0] > now:
                    return True
        return False

    def leased(self, keys: Sequence[BlockKey]) -> list[bool]:
        """:meth:`is_leased` of each key."""
        return [self.is_leased(k) for k in keys]

    def expiry(self, holder: str) -> float | None:
        """When ``holder``'s lease expires (``clock`` time), ``None`` when it has none
        (released, or swept after expiring)."""
        with self._env.begin() as txn:
            rec = txn.get(holder.encode(), db=self._holders)
            return None if rec is None else float(_EXPIRY.unpack_from(rec)[0])

    def holders(self) -> dict[str, float]:
        """Every lease: holder -> expiry (expired ones included until swept)."""
        with self._env.begin() as txn:
            return {
                bytes(n).decode(): _EXPIRY.unpack_from(r)[0]
                for n, r in txn.cursor(db=self._holders)
            }

    def __len__(self) -> int:
        with self._env.begin() as txn:
            return int(txn.stat(self._holders)["entries"])

    def close(self) -> None:
        if self._env is not None:
            _close(self.path)
            self._env = None  # type: ignore[assignment]


# LMDB allows one environment per path per process: the owner's store and a same-host
# peer's handle in one process (tests, a worker that is both sides) share it.
_ENVS: dict[str, tuple[lmdb.Environment, Any, Any, int]] = {}
_ENVS_LOCK = threading.Lock()


def _open(path: str) -> tuple[lmdb.Environment, Any, Any]:
    real = os.path.realpath(path)
    with _ENVS_LOCK:
        got = _ENVS.get(real)
        if got is not None:
            env, holders, by_key, refs = got
            _ENVS[real] = (env, holders, by_key, refs + 1)
            return env, holders, by_key
        # sync off: leases are about live processes; after a host crash none is pending.
        env = lmdb.open(
            real,
            map_size=_MAP_SIZE,
            subdir=True,
            max_dbs=2,
            sync=False,
            metasync=False,
            readahead=False,
            lock=True,
        )
        holders = env.open_db(b"holders")
        by_key = env.open_db(b"by_key", dupsort=True)
        _ENVS[real] = (env, holders, by_key, 1)
        return env, holders, by_key


def _close(path: str) -> None:
    real = os.path.realpath(path)
    with _ENVS_LOCK:
        got = _ENVS.get(real)
        if got is None:
            return
        env, holders, by_key, refs = got
        if refs > 1:
            _ENVS[real] = (env, holders, by_key, refs - 1)
        else:
            del _ENVS[real]
            env.close()


def _pack(until: float, keys: Sequence[bytes]) -> bytes:
    parts = [_EXPIRY.pack(until)]
    for k in keys:
        parts += [_LEN.pack(len(k)), k]
    return b"".join(parts)


def _unpack_keys(rec: bytes) -> list[bytes]:
    out, off, n = [], _EXPIRY.size, len(rec)
    while off < n:
        (ln,) = _LEN.unpack_from(rec, off)
        off += _LEN.size
        out.append(bytes(rec[off : off + ln]))
        off += ln
    return out


__all__ = ["ExpiredLease", "LeaseTableFull", "SharedLeaseTable", "lease_dir"]
