"""The prefill worker's side of the same-host hand-off served from its export arena
(``mooncake.worker.arena_handoff``): the region holding a request's records is not
reused while the decode side may still read it, and the host tier gets the records
only afterwards, off the hand-off's critical path."""

from __future__ import annotations

import mmap
import random
import time

import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from mooncake.worker.arena_handoff import ArenaHandoffs
from mooncake.worker.config import WorkerConfig
from mooncake.worker.kv_store import KVStore


@pytest.fixture
def exported(tiny_llama, tmp_path):
    """A worker store whose export arena holds a 4-block prompt's records (leased for
    request ``r``), written there by a real engine."""
    cfg = WorkerConfig(
        store_root=str(tmp_path), host_capacity_bytes=1 << 24, export_arena_bytes=1 << 22
    )
    kvs = KVStore(cfg, "p", "c")
    kvs.held.close()  # driven by hand here (settle), not by its thread
    kvs.held = ArenaHandoffs(kvs, poll_s=None)
    e = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    rng = random.Random(3)
    bs = EngineConfig().block_size
    prompt = [rng.randrange(300) for _ in range(4 * bs)]
    e.add_request("r", prompt, SamplingParams(max_tokens=1), keep_kv=True)
    while e.has_unfinished():
        e.step()
    region = kvs.arena.alloc(1 << 21)
    with open(kvs.arena.path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
    view = memoryview(m)[region.offset : region.offset + region.size]
    packed = e.export_packed("r", view, "sum64")
    kvs.lease_handoff("r", packed.keys)
    yield kvs, region, packed
    kvs.close()


def test_region_held_until_the_lease_is_released(exported):
    """While the decode side's lease is held, settling neither reuses the region nor
    puts the records into the host tier. Once released, the records are put into the
    tier (all 4, counted in ``put_after``) and the region is free again."""
    kvs, region, packed = exported
    kvs.held.hold("r", region, packed, kvs.handoff_holder("r"))
    free = kvs.arena.free_bytes
    assert kvs.held.settle() == 0
    assert kvs.arena.free_bytes == free and kvs.store.contains_many(packed.keys) == [False] * 4
    assert kvs.release_handoff("r")
    assert kvs.held.settle() == 1
    assert kvs.store.contains_many(packed.keys) == [True] * 4
    assert kvs.held.put_after == 4
    assert kvs.arena.free_bytes == free + region.size and len(kvs.held) == 0


def test_region_given_back_when_the_lease_expires(exported):
    """A decode side that never releases (it died): the region is given back once the
    lease has expired, its records put into the tier as after any hand-off."""
    kvs, region, packed = exported
    kvs.leases.release(kvs.handoff_holder("r"))
    kvs.leases.acquire(kvs.handoff_holder("r"), packed.keys, 0.05)
    kvs.held.hold("r", region, packed, kvs.handoff_holder("r"))
    assert kvs.held.settle() == 0
    time.sleep(0.1)
    assert kvs.held.settle() == 1 and kvs.held.put_after == 4


def test_the_thread_settles_on_its_own(exported):
    """With its thread polling (the default), a released lease's region is given back
    within a fraction of a second without anyone calling ``settle``."""
    kvs, region, packed = exported
    kvs.held.close()
    kvs.held = ArenaHandoffs(kvs)
    kvs.held.hold("r", region, packed, kvs.handoff_holder("r"))
    kvs.release_handoff("r")
    deadline = time.monotonic() + 5
    while len(kvs.held) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(kvs.held) == 0 and kvs.held.put_after == 4
