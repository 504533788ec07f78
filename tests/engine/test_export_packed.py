"""An engine writes a held request's blocks as store records into shared memory
(``LLMEngine.export_packed``): the same records the store makes from ``export_kv``."""

from __future__ import annotations

import random

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from mooncake.store.records import encode_record
from mooncake.store.shm_arena import ShmArena


def _held(tiny_llama, rid: str, prompt: list[int]) -> LLMEngine:
    e = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64))
    e.add_request(rid, prompt, SamplingParams(max_tokens=1), keep_kv=True)
    while e.has_unfinished():
        e.step()
    return e


def test_packed_records_equal_the_stores_encoding(tiny_llama, tmp_path):
    """A 3.5-block prompt: the 3 full blocks' records written in place are byte-identical
    to encoding export_kv's blocks; the held request is freed; a too-small region is
    refused without freeing anything."""
    rng = random.Random(3)
    bs = EngineConfig().block_size
    prompt = [rng.randrange(300) for _ in range(3 * bs + bs // 2)]
    ref = _held(tiny_llama, "r", prompt).export_kv("r")
    e = _held(tiny_llama, "r", prompt)
    arena = ShmArena(str(tmp_path / "arena"), 1 << 22)
    region = arena.alloc(1 << 20)
    assert region is not None
    assert e.export_packed("r", arena.view(region)[:100], "sum64") is None
    packed = e.export_packed("r", arena.view(region), "sum64")
    assert packed is not None and packed.num_tokens == len(prompt) == ref.num_tokens
    full = [b for b in ref.blocks if b.key is not None]
    assert packed.keys == [b.key for b in full]
    view = arena.view(region)
    for i, (b, off, size) in enumerate(zip(full, packed.offsets, packed.sizes)):
        assert bytes(view[off : off + size]) == bytes(encode_record(b, i, "sum64", bytearray()))
    assert "r" not in e._held
    del view
    arena.close()


def test_chunked_prefill_exports_each_chunks_blocks_as_it_goes(tiny_llama, tmp_path):
    """A 6-block prompt prefilled in 2-block chunks (the streamed hand-off): after each
    step, ``export_packed(first=<blocks so far>, release=False)`` returns just the blocks
    that chunk filled, records byte-identical to the store's encoding at their position
    in the sequence; the request keeps running (nothing freed) and the final export from
    the last position returns nothing more."""
    rng = random.Random(5)
    bs = EngineConfig().block_size
    prompt = [rng.randrange(300) for _ in range(6 * bs)]
    ref = _held(tiny_llama, "r", prompt).export_kv("r")
    e = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64, long_prefill_chunk=2 * bs))
    e.add_request("r", prompt, SamplingParams(max_tokens=1), keep_kv=True)
    arena = ShmArena(str(tmp_path / "arena"), 1 << 22)
    region = arena.alloc(1 << 20)
    assert region is not None
    got: list[int] = []
    while e.has_unfinished():
        e.step()
        packed = e.export_packed("r", arena.view(region), "sum64", first=sum(got), release=False)
        assert packed is not None and packed.first == sum(got)
        view = arena.view(region)
        for j, (off, size) in enumerate(zip(packed.offsets, packed.sizes)):
            i = packed.first + j
            want = encode_record(ref.blocks[i], i, "sum64", bytearray())
            assert bytes(view[off : off + size]) == bytes(want)
        del view
        got += [len(packed.keys)]
    assert got == [2, 2, 2, 0][: len(got)] and sum(got) == 6
    assert "r" in e._held
    last = e.export_packed("r", arena.view(region), "sum64", first=6)
    assert last is not None and last.keys == [] and "r" not in e._held
    arena.close()


def test_a_region_too_small_for_all_blocks_takes_the_leading_ones(tiny_llama, tmp_path):
    """A held 4-block prompt and a region that holds 3 records (a long prompt against
    the export arena): the first call writes blocks 0-2 and frees nothing; the call
    from block 3 writes the last one and releases the request. Records are the store's
    encoding at their positions."""
    from mooncake.store.records import record_size

    rng = random.Random(9)
    bs = EngineConfig().block_size
    prompt = [rng.randrange(300) for _ in range(4 * bs)]
    ref = _held(tiny_llama, "r", prompt).export_kv("r")
    e = _held(tiny_llama, "r", prompt)
    size = record_size(e.spec, e.fingerprint, bs)
    arena = ShmArena(str(tmp_path / "arena"), 1 << 22)
    region = arena.alloc(3 * size + size // 2)
    assert region is not None
    view = arena.view(region)[: 3 * size + size // 2]
    head = e.export_packed("r", view, "sum64")
    assert head is not None and head.first == 0 and len(head.keys) == 3
    assert "r" in e._held
    tail = e.export_packed("r", view, "sum64", first=3)
    assert tail is not None and tail.first == 3 and len(tail.keys) == 1
    assert "r" not in e._held
    off, size = tail.offsets[0], tail.sizes[0]
    want = encode_record(ref.blocks[3], 3, "sum64", bytearray())
    assert bytes(view[off : off + size]) == bytes(want)
    del view
    arena.close()
