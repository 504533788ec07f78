"""Child-process bodies for the multi-process store tests (run under ``spawn``)."""

from __future__ import annotations

import hashlib
import os
from multiprocessing.connection import Connection

from mooncake.kvcache.block import KVBlockSpec
from mooncake.store.config import StoreConfig
from mooncake.store.reader import HostTierReader
from mooncake.store.store import BlockStore
from mooncake.types import BlockKey
from tests.store.kvfactories import make_chain

#: 256 KiB blocks: a put is long enough for a kill to land inside it.
CRASH_SPEC = KVBlockSpec(
    num_layers=8, num_kv_heads=4, head_dim=128, block_size=16, dtype="bfloat16"
)


def _mapping_of(path: str) -> tuple[int, int] | None:
    """Address range where this process mapped ``path`` (from /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith(path):
                lo, hi = line.split()[0].split("-")
                return int(lo, 16), int(hi, 16)
    return None


def read_blocks(tier_path: str, keys: list[BlockKey], conn: Connection) -> None:
    """Read ``keys`` from a host tier owned by another process; send back digests and
    whether every payload lies inside this process's mapping of the LMDB file."""
    with HostTierReader(tier_path) as reader:
        objs = reader.get_many(keys)
        span = _mapping_of(os.path.realpath(os.path.join(tier_path, "data.mdb")))
        digests = [
            None if o is None else hashlib.sha256(o.numpy().tobytes()).hexdigest() for o in objs
        ]
        in_map = span is not None and all(
            o is not None
            and span[0] <= o.payload.address
            and o.payload.address + o.payload.size <= span[1]
            for o in objs
        )
        conn.send((digests, in_map, reader.corrupt))
        del objs


def write_forever(cfg: StoreConfig, seed: int, conn: Connection) -> None:
    """Put 4-block batches of a long chain until killed; report each committed batch."""
    blocks = make_chain(400, CRASH_SPEC, seed=seed)
    store = BlockStore(cfg)
    i = 0
    while True:
        batch = blocks[i % 400 : i % 400 + 4]
        store.put_many(batch)
        conn.send([b.key for b in batch])
        if i % 12 == 8:
            store.get(blocks[(i - 8) % 400].key)  # type: ignore[arg-type]  # SSD hit -> promotion
        i += 4


def read_while_written(
    tier_path: str, keys: list[BlockKey], seconds: float, conn: Connection
) -> None:
    """Read ``keys`` over and over while another process rewrites them; report what was seen."""
    import time

    hits = misses = 0
    with HostTierReader(tier_path) as reader:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for o in reader.get_many(keys):
                if o is None:
                    misses += 1
                else:
                    hits += 1
                    digest = hashlib.sha256(o.numpy().tobytes()).hexdigest()
                    assert digest  # a torn block would have failed the checksum: counted below
        conn.send((hits, misses, reader.corrupt))


def lease_in_child(path: str, holder: str, keys: list[BlockKey] | None, conn: Connection) -> None:
    """Acquire ``holder``'s lease on ``keys`` (60 s) in this process, or release it when
    ``keys`` is None, in a shared lease table; send back what the table holds then."""
    from mooncake.store.shared_lease import SharedLeaseTable

    table = SharedLeaseTable(path)
    if keys is None:
        released = table.release(holder)
    else:
        table.acquire(holder, keys, 60.0)
        released = False
    conn.send((released, sorted(table.holders())))
    table.close()
