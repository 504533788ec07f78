"""A decode engine imports blocks read in place from a host tier, checking each payload
while copying it into its pool (``LLMEngine.import_checked_blocks``): one pass over the
payload, and a block whose sum is wrong is never used."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from mooncake.store import BlockStore, StoreConfig, TierConfig
from mooncake.store.native import records_lib
from mooncake.store.reader import TierReader


def _prefilled(tiny_llama, prompt: list[int]) -> LLMEngine:
    e = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    e.add_request("r", prompt, SamplingParams(max_tokens=1), keep_kv=True)
    while e.has_unfinished():
        e.step()
    return e


def _stored(tmp_path, e: LLMEngine, algo: str) -> tuple[BlockStore, list]:
    export = e.export_kv("r")
    store = BlockStore(
        StoreConfig(
            host=TierConfig(path=str(tmp_path / "host"), capacity_bytes=1 << 26),
            ssd=None,
            checksum=algo,
        )
    )
    store.put_export(export)
    return store, [b for b in export.blocks if b.key is not None]


def _read(tmp_path, keys):
    objs = TierReader(str(tmp_path / "host"), verify=False).get_many(keys)
    blocks = [o.to_kvblock(copy=False) for o in objs]
    sums = [(o.header.payload_checksum, o.header.checksum_algo) for o in objs]
    return objs, blocks, sums


@pytest.mark.parametrize("algo", ["sum64", "crc32"])
def test_checked_import_equals_the_exported_kv(tiny_llama, tmp_path, algo):
    """A 5-block prompt's blocks, stored with ``algo`` and read unchecked from the tier:
    all 5 are found intact and imported (sum64: summed while copied; crc32: checked
    first), and the decode engine's pool then holds exactly the prefill engine's KV.
    Imported again, they are found (checked) but not copied twice."""
    rng = random.Random(1)
    bs = EngineConfig().block_size
    prompt = [rng.randrange(300) for _ in range(5 * bs + 3)]
    store, full = _stored(tmp_path, _prefilled(tiny_llama, prompt), algo)
    keys = [b.key for b in full]
    objs, blocks, sums = _read(tmp_path, keys)
    d = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    if algo == "sum64" and records_lib() is not None:
        assert d.runner._fused(bs) is not None  # the one-pass path, not the fallback
    assert d.import_checked_blocks(blocks, sums) == (5, 5)
    assert d.import_checked_blocks(blocks, sums) == (5, 0)
    got = d.export_cached_blocks(keys, prompt)
    assert len(got) == 5
    for a, b in zip(full, got):
        assert np.array_equal(np.asarray(a.data).view(np.uint8), np.asarray(b.data).view(np.uint8))
    for o in objs:
        o.release()
    store.close()


def test_a_corrupt_payload_ends_the_run_and_is_not_used(tiny_llama, tmp_path):
    """Block 2 of 5 has one byte changed in the tier (header intact). The checked import
    takes blocks 0-1, stops at 2: block 2 is not in the decode engine's prefix cache
    (its pool block went back unregistered), nor are 3-4, and no pool block is lost."""
    rng = random.Random(2)
    bs = EngineConfig().block_size
    prompt = [rng.randrange(300) for _ in range(5 * bs)]
    store, full = _stored(tmp_path, _prefilled(tiny_llama, prompt), "sum64")
    keys = [b.key for b in full]
    bad = bytearray(np.asarray(full[2].data).view(np.uint8).tobytes())
    bad[100] ^= 0xFF
    store.tiers["host"].overwrite_payload(keys[2], bytes(bad))
    objs, blocks, sums = _read(tmp_path, keys)
    d = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    free = d.pool.num_free
    assert d.import_checked_blocks(blocks, sums) == (2, 2)
    assert d.pool.num_free == free  # imported blocks are cached and free (evictable)
    assert len(d.export_cached_blocks(keys, prompt)) == 2
    for i in (2, 3, 4):
        assert d.pool.lookup(keys[i], tuple(prompt[i * bs : (i + 1) * bs])) is None
    for o in objs:
        o.release()
    store.close()
