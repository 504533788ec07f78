"""A worker's KV store on the hand-off: the prefill side leases what the decode side has
yet to fetch; the lease ends when the decode side fetched it, or the request was aborted,
or it expired (reported)."""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import pytest

from mooncake.metrics import LEASE_EXPIRED, MetricsState
from mooncake.store.shm_arena import Region
from mooncake.worker import request_state
from mooncake.worker.config import WorkerConfig
from mooncake.worker.kv_store import KVStore
from mooncake.worker.plugin import MooncakeWorker
from mooncake.worker.request_table import RequestTable
from tests.store.kvfactories import make_chain


@pytest.fixture
def stores(tmp_path):
    cfg = WorkerConfig(store_root=str(tmp_path), host_capacity_bytes=1 << 20)
    prefill, decode = KVStore(cfg, "p", "c"), KVStore(cfg, "d", "c")
    yield prefill, decode
    decode.close()
    prefill.close()


def test_lease_released_when_decode_side_fetched(stores) -> None:
    """Prefill leases the blocks it stores for r1; a same-host decode worker fetches
    them from its tier (shm) and releases the lease in the prefill's table itself."""
    prefill, decode = stores
    blocks = make_chain(3)
    keys = [b.key for b in blocks]
    prefill.lease_handoff("r1", keys)
    prefill.put(blocks)
    assert prefill.leases.leased(keys) == [True] * 3
    got = decode.fetch(keys, prefill.peer, len)
    assert got.num_blocks == 3 and set(got.paths) == {"shm"}
    assert decode.release_peer_handoff(prefill.peer, "r1") is True
    assert prefill.leases.leased(keys) == [False] * 3 and len(prefill.leases) == 0


def test_peer_on_another_host_is_released_by_message(stores) -> None:
    """A peer whose host differs cannot be released in place: the caller sends it a message."""
    prefill, decode = stores
    prefill.lease_handoff("r1", [b.key for b in make_chain(1)])
    elsewhere = dataclasses.replace(prefill.peer, host_id="another-host")
    assert decode.release_peer_handoff(elsewhere, "r1") is None
    assert len(prefill.leases) == 1


def test_lease_released_when_request_aborted(stores) -> None:
    """An abort on the prefill worker (the request table's DropKV, whose ``forget`` is
    the plugin's) releases the request's hand-off lease."""
    prefill, _ = stores
    prefill.lease_handoff("r1", [b.key for b in make_chain(2)])
    plugin = MooncakeWorker.__new__(MooncakeWorker)
    plugin.engine = SimpleNamespace(token_times={})
    plugin.kv_store = prefill
    table: RequestTable[object, object, object, object] = RequestTable(
        request_state.WorkerRequests(), abort_engine=lambda rid: None, forget=plugin._forget
    )
    table.handle(request_state.Abort("r1", 0.0))
    assert len(prefill.leases) == 0


def test_expired_lease_is_reported(tmp_path) -> None:
    """A decode side that never fetches: the lease expires, the sweep logs and counts
    it, and the Conductor's metric counts what workers report."""
    cfg = WorkerConfig(store_root=str(tmp_path), handoff_lease_ttl_s=0.05)
    kvs = KVStore(cfg, "p", "c")
    try:
        blocks = make_chain(2)
        kvs.lease_handoff("r9", [b.key for b in blocks])
        kvs.put(blocks)
        time.sleep(0.1)
        (e,) = kvs.sweep_leases()
        assert e.holder == "handoff:r9" and kvs.store.stats.leases_expired == 1
    finally:
        kvs.close()
    m = MetricsState("m")
    m.leases_expired += 1
    fam = next(f for f in m.families() if f.name == LEASE_EXPIRED)
    assert fam.samples[0].value == 1
    with pytest.raises(ValueError, match="handoff_lease_ttl_s"):
        WorkerConfig(handoff_lease_ttl_s=0)


def test_blocks_from_another_host_land_in_the_receive_arena(stores) -> None:
    """A fetch over TCP (the peer looks like another host) receives the blocks, checked,
    into the receive arena: the engine is told where each payload is, and the bytes
    there are the block's; the receive buffer goes back to the arena afterwards."""
    prefill, decode = stores
    blocks = make_chain(4, seed=5)
    prefill.put(blocks)
    elsewhere = dataclasses.replace(prefill.peer, host_id="another-host")
    arena = decode.recv_arena
    assert arena is not None
    free = arena.free_bytes
    seen = []

    def use(got):
        refs = decode.in_recv_arena(got)
        assert refs is not None and arena.free_bytes < free
        view = arena.view(Region(0, arena.size))
        for r, b in zip(refs, blocks):
            n = b.data.nbytes
            assert r.key == b.key and bytes(view[r.offset : r.offset + n]) == b.data.tobytes()
        seen.extend(refs)
        return len(got)

    f = decode.fetch([b.key for b in blocks], elsewhere, use)
    assert f.num_blocks == 4 and set(f.paths) == {"tcp"} and len(seen) == 4
    assert arena.free_bytes == free
    # Blocks outside the arena (the shared tier's views) are not described as in it.
    assert decode.in_recv_arena(blocks) is None
