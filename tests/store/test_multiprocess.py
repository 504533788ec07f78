from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import signal
import time

from mooncake.store.store import BlockStore
from mooncake.store.tier import TierFullError
from mooncake.types import BlockKey
from tests.store import procs
from tests.store.kvfactories import block_bytes, make_chain, store_config

CTX = mp.get_context("spawn")


def test_two_processes_read_the_same_host_tier_object_zero_copy(host_dir: str) -> None:
    """Two other processes read the blocks this process wrote, byte-identical, straight from
    their map of the LMDB file."""
    blocks = make_chain(6)
    keys: list[BlockKey] = [b.key for b in blocks]  # type: ignore[misc]
    expected = [hashlib.sha256(b.data.tobytes()).hexdigest() for b in blocks]
    with BlockStore(store_config(host_dir)) as store:
        store.put_many(blocks)
        pipes, children = [], []
        for _ in range(2):
            parent, child = CTX.Pipe()
            p = CTX.Process(target=procs.read_blocks, args=(host_dir, keys, child))
            p.start()
            pipes.append(parent)
            children.append(p)
        results = [c.recv() for c in pipes]
        for p in children:
            p.join(30)
            assert p.exitcode == 0
    for digests, in_map, corrupt in results:
        assert digests == expected
        assert in_map, "payload was copied out of the shared mapping"
        assert corrupt == 0


def test_kill_9_mid_put_leaves_a_consistent_store(host_dir: str, ssd_dir: str) -> None:
    """A writer (puts, demotions, promotions) is SIGKILLed at random moments three times; after each
    reopen every acknowledged block is present, every stored block reads back
    intact, accounting adds up."""
    spec = procs.CRASH_SPEC
    cfg = store_config(host_dir, ssd_dir, host_blocks=24, ssd_blocks=48, spec=spec)
    rng = random.Random(1234)
    for round_ in range(3):
        parent, child = CTX.Pipe()
        p = CTX.Process(target=procs.write_forever, args=(cfg, round_, child))
        p.start()
        acked: list[BlockKey] = []
        deadline = time.monotonic() + 60
        while len(acked) < 40 + 20 * round_ and time.monotonic() < deadline:
            if parent.poll(0.5):
                acked.extend(parent.recv())
        time.sleep(rng.uniform(0, 0.02))
        os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        p.join(10)
        while parent.poll(0.05):
            acked.extend(parent.recv())
        assert p.exitcode == -signal.SIGKILL and len(acked) >= 40

        expected = {b.key: b.data.tobytes() for b in make_chain(400, spec, seed=round_)}
        with BlockStore(cfg) as store:
            keys = store.keys()
            # The last acknowledged batches were written after any eviction could drop them.
            assert all(store.contains(k) for k in acked[-4:])
            assert set(keys) <= set(expected) | set(_all_earlier_keys(round_, spec))
            per = block_bytes(spec)
            assert store.used_bytes("host") + store.used_bytes("ssd") == per * len(keys)
            assert store.tiers["host"].stat_entries() + store.tiers["ssd"].stat_entries() == len(
                keys
            )
            for k in keys:  # one at a time: reads promote, which may drop other blocks
                o = store.get(k)
                assert o is not None or not store.contains(k)
                if o is not None and k in expected:
                    assert o.numpy().tobytes() == expected[k]
                del o
            assert store.stats.corrupt == 0


def _all_earlier_keys(round_: int, spec: object) -> list[BlockKey]:
    out: list[BlockKey] = []
    for r in range(round_):
        out.extend(b.key for b in make_chain(400, spec, seed=r))  # type: ignore[arg-type, misc]
    return out


def test_reader_never_sees_a_torn_block_while_the_writer_rewrites(host_dir: str) -> None:
    """One process deletes and re-puts large blocks in a loop while another reads them: every read
    is either a miss or an intact block (checksum verified), never a partial one. The reader's
    open snapshots pin pages, so some writes may be refused (map full): refused, not torn."""
    spec = procs.CRASH_SPEC
    blocks = make_chain(8, spec, seed=5)
    keys: list[BlockKey] = [b.key for b in blocks]  # type: ignore[misc]
    with BlockStore(store_config(host_dir, host_blocks=16, spec=spec)) as store:
        store.put_many(blocks)
        parent, child = CTX.Pipe()
        p = CTX.Process(target=procs.read_while_written, args=(host_dir, keys, 1.0, child))
        p.start()
        refused = 0
        while not parent.poll(0):
            for b in blocks:
                try:
                    store.delete(b.key)  # type: ignore[arg-type]
                except TierFullError:
                    refused += 1
                refused += not store.put(b)
        hits, misses, corrupt = parent.recv()
        p.join(10)
    assert p.exitcode == 0 and corrupt == 0 and hits > 0 and hits + misses > len(keys)
