"""A decode engine imports a prefill engine's records straight out of shared memory
(the export arena, ``LLMEngine.import_records``): one copy per block, each checked on the
way, and a record that is wrong in any way is never used."""

from __future__ import annotations

import mmap
import random

import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from mooncake.store.records import object_from_record


def _prefilled(tiny_llama, prompt: list[int]) -> LLMEngine:
    e = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    e.add_request("r", prompt, SamplingParams(max_tokens=1), keep_kv=True)
    while e.has_unfinished():
        e.step()
    return e


def _exported(tiny_llama, blocks: int, tail: int = 3):
    rng = random.Random(blocks)
    bs = EngineConfig().block_size
    prompt = [rng.randrange(300) for _ in range(blocks * bs + tail)]
    e = _prefilled(tiny_llama, prompt)
    buf = mmap.mmap(-1, 1 << 22)
    packed = e.export_packed("r", memoryview(buf), "sum64", 0, True)
    assert packed is not None and len(packed.keys) == blocks
    return prompt, buf, packed


def test_imported_records_decode_as_the_prefill_engine(tiny_llama):
    """A 5-block prompt exported as records (one batched copy-and-sum out of the pool):
    every record is a valid store record (header, payload sum) of its key. The decode
    engine imports all 5 (found intact, imported, their payload bytes); its greedy
    continuation equals a fresh engine's and reuses the 5 blocks. Imported again, they
    are found but not copied twice."""
    prompt, buf, packed = _exported(tiny_llama, 5)
    for key, off, size in zip(packed.keys, packed.offsets, packed.sizes):
        obj = object_from_record(memoryview(buf)[off : off + size], key=key)  # checks all
        assert obj.header.key == key
    d = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    per = d.spec.bytes_per_block
    assert d.import_records(buf, packed.offsets, packed.keys, True) == (5, 5, 5 * per)
    assert d.import_records(buf, packed.offsets, packed.keys, True) == (5, 0, 5 * per)
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    out = d.generate([prompt], greedy)[0]
    ref = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64)).generate([prompt], greedy)[
        0
    ]
    assert out.token_ids == ref.token_ids
    assert out.num_cached_tokens == 5 * EngineConfig().block_size


@pytest.mark.parametrize("where", ["payload", "header", "key"])
def test_a_bad_record_ends_the_run(tiny_llama, where):
    """Record 2 of 5 is damaged: a payload byte flipped (its sum differs, found while
    copying), a header byte flipped (its CRC differs), or asked for under another key.
    Blocks 0 and 1 are imported; record 2 and those after it are not used, and the pool
    blocks taken for them are free again."""
    _, buf, packed = _exported(tiny_llama, 5)
    keys = list(packed.keys)
    off = packed.offsets[2]
    if where == "payload":
        buf[off + packed.sizes[2] - 7] ^= 0xFF
    elif where == "header":
        buf[off + 20] ^= 0x01
    else:
        keys[2] = keys[3]
    d = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    free = d.pool.num_free
    assert d.import_records(buf, packed.offsets, keys, True) == (2, 2, 2 * d.spec.bytes_per_block)
    assert d.pool.num_cached == 2
    assert d.pool.num_free == free  # cached blocks count as free (evictable)
