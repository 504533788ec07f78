"""Hand-off leases shared by the processes of a host (``mooncake.store.shared_lease``)."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from mooncake.store.shared_lease import SharedLeaseTable, lease_dir
from mooncake.store.store import BlockStore
from mooncake.types import BlockKey
from tests.store import procs
from tests.store.kvfactories import make_chain, store_config

A, B, C = BlockKey(b"a" * 16), BlockKey(b"b" * 16), BlockKey(b"c" * 16)
CTX = mp.get_context("spawn")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_acquire_release_and_per_holder_keys(tmp_path) -> None:
    """Two holders on A: releasing one keeps A leased; releasing both frees it; a holder
    that leases again gets the keys added; releasing twice is harmless."""
    t = SharedLeaseTable(str(tmp_path / "leases"), FakeClock())
    t.acquire("handoff:r1", [A, B], 10)
    t.acquire("handoff:r2", [A], 10)
    t.acquire("handoff:r2", [C], 10)
    assert t.leased([A, B, C]) == [True, True, True]
    assert t.release("handoff:r1")
    assert t.leased([A, B, C]) == [True, False, True]
    assert t.release("handoff:r2") and not t.release("handoff:r2")
    assert t.leased([A, B, C]) == [False, False, False] and len(t) == 0
    with pytest.raises(ValueError, match="ttl_s"):
        t.acquire("x", [A], 0)
    t.close()


def test_expired_lease_stops_protecting_and_is_reported_once(tmp_path) -> None:
    """Past its expiry a lease no longer holds its keys; sweep returns it (holder, key
    count, how overdue) once and removes it; a live lease is left alone."""
    clock = FakeClock()
    t = SharedLeaseTable(str(tmp_path / "leases"), clock)
    t.acquire("handoff:old", [A, B], 5)
    t.acquire("handoff:new", [C], 50)
    clock.t += 7
    assert not t.is_leased(A) and t.is_leased(C)
    (e,) = t.sweep()
    assert (e.holder, e.num_keys) == ("handoff:old", 2) and e.overdue_s == pytest.approx(2)
    assert t.sweep() == [] and list(t.holders()) == ["handoff:new"]
    t.close()


def test_lease_taken_and_released_by_other_processes(tmp_path) -> None:
    """A lease acquired in another process is seen here, and one taken here is released
    by another process (the decode worker that fetched the blocks)."""
    path = str(tmp_path / "leases")
    t = SharedLeaseTable(path)
    t.acquire("handoff:mine", [A], 60)
    parent, child = CTX.Pipe()
    p = CTX.Process(target=procs.lease_in_child, args=(path, "handoff:theirs", [B], child))
    p.start()
    assert parent.recv() == (False, ["handoff:mine", "handoff:theirs"])
    p.join(30)
    assert t.is_leased(B)
    p = CTX.Process(target=procs.lease_in_child, args=(path, "handoff:mine", None, child))
    p.start()
    assert parent.recv() == (True, ["handoff:theirs"])
    p.join(30)
    assert not t.is_leased(A) and t.is_leased(B)
    t.close()


def test_eviction_pressure_skips_leased_blocks_until_released_or_expired(tmp_path) -> None:
    """An 8-block host tier holds a pending hand-off's 4 leased blocks; 12 more puts
    evict only the others. Released, or expired (and reported), they can go."""
    clock = FakeClock()
    host = str(tmp_path / "host")
    leases = SharedLeaseTable(lease_dir(host), clock)
    store = BlockStore(store_config(host, host_blocks=8), clock=clock, shared_leases=leases)
    handoff = make_chain(4, seed=1)
    keys = [b.key for b in handoff]
    leases.acquire("handoff:r1", keys, 30)
    assert all(store.put_many(handoff))
    assert all(store.put_many(make_chain(12, seed=2)))
    assert store.contains_many(keys) == [True] * 4
    assert store.stats.leased_skips > 0 and len(store) == 8
    # Released: the next pressure evicts them (LRU: they are the oldest).
    leases.release("handoff:r1")
    store.put_many(make_chain(4, seed=3))
    assert store.contains_many(keys) == [False] * 4
    # A lease that expires is reported by the store's sweep and then protects nothing.
    again = make_chain(2, seed=4)
    leases.acquire("handoff:r2", [b.key for b in again], 30)
    store.put_many(again)
    clock.t += 31
    (e,) = store.sweep_leases()
    assert e.holder == "handoff:r2" and store.stats.leases_expired == 1
    store.put_many(make_chain(8, seed=5))
    assert store.contains_many([b.key for b in again]) == [False, False]
    store.close()
    leases.close()
