"""A decode engine's hand-off in one command (``EngineLoop.import_from_tier_and_add``):
the blocks come from the prefill worker's host tier and the request joins the batch in
the same call, so it waits for one step boundary, not two."""

from __future__ import annotations

import random

import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.sampling_params import SamplingParams
from mooncake.store import BlockStore, StoreConfig, TierConfig
from mooncake.worker.engine_loop import AddRequest, EngineLoop, Watch
from tests.worker.engine_loop_doubles import RecordingChannel

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def test_import_and_admit_in_one_command(tiny_llama, tmp_path):
    """A 4-block prompt (plus a partial block) prefilled by one engine and stored in a
    host tier. The decode loop imports all 4 blocks and admits the request in one call;
    it then computes only the partial block and its greedy output equals one engine's
    run of the whole request. With a key the tier lacks, nothing is admitted (the worker
    fetches the rest another way, then adds it)."""
    rng = random.Random(3)
    bs = EngineConfig().block_size
    prompt = [rng.randrange(300) for _ in range(4 * bs + 5)]
    config = EngineConfig(model=str(tiny_llama), num_blocks=64, enable_prefix_caching=False)
    want = LLMEngine(config).generate([prompt], GREEDY)[0].token_ids

    p = LLMEngine(config)
    p.add_request("r", prompt, SamplingParams(temperature=0.0, max_tokens=1), keep_kv=True)
    first = []
    while p.has_unfinished():
        for out in p.step():
            first = out.token_ids
    export = p.export_kv("r")
    store = BlockStore(
        StoreConfig(host=TierConfig(path=str(tmp_path / "host"), capacity_bytes=1 << 26), ssd=None)
    )
    store.put_export(export)
    keys = [b.key for b in export.blocks if b.key is not None]
    assert len(keys) == 4

    d = LLMEngine(config)
    loop = EngineLoop(d, RecordingChannel())  # type: ignore[arg-type]
    req = AddRequest("r", prompt, GREEDY, Watch(None), prior_output_ids=first, block_keys=keys)
    missing = AddRequest("m", prompt, GREEDY, Watch(None), prior_output_ids=first)
    found, _, nbytes = loop.import_from_tier_and_add(
        str(tmp_path / "host"), [*keys, b"\x07" * 16], missing
    )
    assert found == 4 and nbytes > 0
    assert not d.has_unfinished()  # a block was missing: not admitted

    found, _, _ = loop.import_from_tier_and_add(str(tmp_path / "host"), keys, req)
    assert found == 4
    assert d.has_unfinished()
    got: list[int] = []
    while d.has_unfinished():
        for out in d.step():
            got = out.token_ids
    assert got == want
    assert d.stats.num_prompt_tokens_computed <= bs  # the partial block only
    loop._direct.close()
    for r in loop._tier_readers.values():
        r.close()
    store.close()


def test_pool_copy_and_admit_in_one_command_before_its_deadline(tiny_llama, tmp_path):
    """A prefill engine with its pool in a shared-memory file holds a 4-block prompt.
    Past its deadline (the prefill side's lease about to end) the decode loop copies
    nothing and admits nothing; before it, it copies the 4 blocks pool -> pool, admits
    the request in the same call, and its greedy output equals one engine's run."""
    import time

    from mooncake.store.native import records_lib

    if records_lib() is None:
        pytest.skip("the pool copy needs the compiled library (the arena's way is used)")
    rng = random.Random(4)
    bs = EngineConfig().block_size
    prompt = [rng.randrange(300) for _ in range(4 * bs + 5)]
    config = EngineConfig(model=str(tiny_llama), num_blocks=64, enable_prefix_caching=False)
    want = LLMEngine(config).generate([prompt], GREEDY)[0].token_ids
    path = str(tmp_path / "kv.pool")
    p = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64, kv_pool_path=path))
    p.add_request("r", prompt, SamplingParams(temperature=0.0, max_tokens=1), keep_kv=True)
    first = []
    while p.has_unfinished():
        for out in p.step():
            first = out.token_ids
    held = p.held_blocks("r")
    assert held is not None
    keys, ids, _ = held

    d = LLMEngine(config)
    loop = EngineLoop(d, RecordingChannel())  # type: ignore[arg-type]
    req = AddRequest("r", prompt, GREEDY, Watch(None), prior_output_ids=first, block_keys=keys)
    toks = prompt[: 4 * bs]
    late = time.monotonic() - 1
    assert loop.import_from_pool_and_add(path, ids, list(keys), toks, late, req) == (0, 0, 0)
    assert not d.has_unfinished() and d.pool.num_free == d.pool.num_blocks
    soon = time.monotonic() + 30
    found, kept, _ = loop.import_from_pool_and_add(path, ids, list(keys), toks, soon, req)
    assert (found, kept) == (4, 4)
    got: list[int] = []
    while d.has_unfinished():
        for out in d.step():
            got = out.token_ids
    assert got == want
    assert d.stats.num_prompt_tokens_computed <= bs  # the partial block only
    loop._direct.close()
