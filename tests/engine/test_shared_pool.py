"""The paged KV pool in a shared-memory file (``mooncake.engine.shared_pool``): a decode
engine on the same host copies a held request's blocks pool -> pool, the prefill engine
does not reuse a held block before its release, a pool of another layout is refused, and
a killed owner's pool file goes with its tier directory."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from mooncake.engine.shared_pool import map_pool
from mooncake.store import tier_dirs
from mooncake.store.native import records_lib

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def _prompt(blocks: int, tail: int = 3, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(300) for _ in range(blocks * EngineConfig().block_size + tail)]


def _held(e: LLMEngine, rid: str, prompt: list[int]) -> None:
    e.add_request(rid, prompt, SamplingParams(max_tokens=1), keep_kv=True)
    while e.has_unfinished():
        e.step()


@pytest.mark.skipif(records_lib() is None, reason="no compiled library")
def test_decode_engine_copies_held_blocks_pool_to_pool(tiny_llama, tmp_path):
    """A prefill engine with its pool in a file holds a 5-block prompt; a decode engine
    with a pool of another size maps the file, accepts its header and copies the 5
    blocks (found, imported, bytes): each is byte-equal to the prefill engine's, and the
    decode engine's greedy continuation equals a fresh engine's, reusing all 5. Copied
    again, they are found but not copied twice."""
    path = str(tmp_path / "kv.pool")
    p = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64, kv_pool_path=path))
    assert p.runner.pool_path == path
    prompt = _prompt(5)
    _held(p, "r", prompt)
    got = p.held_blocks("r")
    assert got is not None
    keys, ids, n = got
    assert len(keys) == 5 and n == len(prompt)
    d = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=40))
    m = map_pool(path)
    assert d.pool_matches(m.header)
    bs = d.config.block_size
    per = d.spec.bytes_per_block
    toks = prompt[: 5 * bs]
    slots = m.header.shape[2]
    assert d.import_pool_blocks(m.address, slots, ids, keys, toks, True) == (5, 5, 5 * per)
    assert d.import_pool_blocks(m.address, slots, ids, keys, toks, True) == (5, 0, 5 * per)
    for i, k in enumerate(keys):
        blk = d.pool.lookup(k, toks[i * bs : (i + 1) * bs])
        assert blk is not None
        mine = d.runner.kv_cache[:, :, blk.block_id * bs : (blk.block_id + 1) * bs]
        theirs = p.runner.kv_cache[:, :, ids[i] * bs : (ids[i] + 1) * bs]
        assert torch.equal(mine, theirs)
    out = d.generate([prompt], GREEDY)[0]
    ref = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64)).generate([prompt], GREEDY)[
        0
    ]
    assert out.token_ids == ref.token_ids
    assert out.num_cached_tokens == 5 * bs


def test_held_blocks_are_not_reused_until_release(tiny_llama, tmp_path):
    """A held request's blocks are neither reused nor overwritten while other requests
    need every other block of a small pool (they preempt and queue rather than take a
    held block); an abort (the client went away) does not free them either: a decode
    engine may be copying them. After ``release`` the next requests can have them."""
    path = str(tmp_path / "kv.pool")
    p = LLMEngine(
        EngineConfig(
            model=str(tiny_llama), num_blocks=16, kv_pool_path=path, enable_prefix_caching=False
        )
    )
    bs = p.config.block_size
    prompt = _prompt(4, seed=1)
    _held(p, "held", prompt)
    got = p.held_blocks("held")
    assert got is not None
    ids = set(got[1])
    assert p.abort_request("held") and "held" in p._held
    before = p.runner.kv_cache.clone()
    seen: set[int] = set()
    for i in range(3):
        p.add_request(f"o{i}", _prompt(3, 0, seed=10 + i), GREEDY)
    while p.has_unfinished():
        p.step()
        for s in p.scheduler.running:
            seen |= {b.block_id for b in s.block_table}
    assert seen and not seen & ids
    for b in ids:
        sl = slice(b * bs, (b + 1) * bs)
        assert torch.equal(p.runner.kv_cache[:, :, sl], before[:, :, sl])
    p.release("held")
    assert p.held_blocks("held") is None
    for i in range(3):
        p.add_request(f"n{i}", _prompt(4, 0, seed=20 + i), GREEDY)
    while p.has_unfinished():
        p.step()
        for s in p.scheduler.running:
            seen |= {b.block_id for b in s.block_table}
    assert seen & ids


def test_pool_of_another_layout_is_refused(tiny_llama, tmp_path):
    """A pool file written with another block size (or model) does not match: its
    header is refused before any block is copied (the caller takes the arena's way)."""
    path = str(tmp_path / "kv.pool")
    LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=8, kv_pool_path=path))
    m = map_pool(path)
    other = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=8, block_size=8))
    assert other.config.block_size != m.header.block_size
    assert not other.pool_matches(m.header)


def test_killed_owner_leaves_no_pool_file(tiny_llama, tmp_path: Path):
    """An engine process whose pool file is in its tier directory is killed with
    SIGKILL: the file is still there; the next claim's sweep removes it with the
    directory."""
    code = textwrap.dedent(
        f"""
        import time
        from mooncake.config import EngineConfig
        from mooncake.engine import LLMEngine
        from mooncake.store import tier_dirs
        d = tier_dirs.claim({str(tmp_path)!r}, "c1", "prefill-0")
        path = str(d / "kv.pool")
        LLMEngine(EngineConfig(model={str(tiny_llama)!r}, num_blocks=8, kv_pool_path=path))
        print(path, flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line, "child did not make its pool"
        pool = Path(line)
        assert pool.exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert pool.exists()
        tier_dirs.claim(tmp_path, "c1", "decode-0")
        assert not pool.exists() and not pool.parent.exists()
    finally:
        proc.kill()
        proc.wait(10)
