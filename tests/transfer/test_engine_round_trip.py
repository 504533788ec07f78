"""Engine-exported KV through every store tier and every transfer path comes back
byte-identical, and a second engine continuing from it produces the same greedy tokens
as one engine doing the whole request."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from mooncake.kvcache.block import KVBlock, KVExport
from mooncake.store.block_object import BlockObject, export_from_objects
from mooncake.store.config import StoreConfig, TierConfig
from mooncake.store.store import BlockStore
from mooncake.transfer.base import Peer, local_host_id
from mooncake.transfer.config import TransferConfig
from mooncake.transfer.fetcher import BlockFetcher
from mooncake.transfer.local import SharedHostBackend
from mooncake.transfer.server import BlockServer
from mooncake.transfer.tcp import TcpBackend

MAX_NEW = 8
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
FIRST = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
# 53 tokens = 3 full blocks (stored and moved) + a partial one the receiver recomputes.
PROMPTS = [[random.Random(1).randrange(300) for _ in range(53)]]


def _engine(path: Path, caching: bool = True) -> LLMEngine:
    return LLMEngine(
        EngineConfig(model=str(path), num_blocks=64, block_size=16, enable_prefix_caching=caching)
    )


@pytest.fixture(scope="module")
def engine_b(tiny_llama: Path) -> LLMEngine:
    """The receiving engine; no prefix caching, so every continuation uses only the import."""
    return _engine(tiny_llama, caching=False)


@pytest.fixture(scope="module")
def prefilled(tiny_llama: Path) -> tuple[list[list[int]], list[KVExport]]:
    """Reference continuations from one engine, and each prompt's KV after a 1-token prefill."""
    a = _engine(tiny_llama)
    reference = [o.token_ids for o in a.generate(PROMPTS, GREEDY)]
    exports = []
    for i, p in enumerate(PROMPTS):
        a.add_request(f"p{i}", p, FIRST, keep_kv=True)
        while a.has_unfinished():
            a.step()
        exports.append(a.export_kv(f"p{i}"))
    return reference, exports


def _continue(
    b: LLMEngine, prompt: list[int], export: KVExport, objs: list[BlockObject | None]
) -> list[int]:
    """Engine B imports the fetched blocks (full blocks only) and
    continues after the prefill's token."""
    kv = export_from_objects([o for o in objs if o is not None])
    n = kv.num_tokens
    before = b.stats.num_prompt_tokens_cached
    b.add_request(None, prompt, GREEDY, kv=kv, prior_output_ids=export.next_token_ids)
    last: Any = None
    while b.has_unfinished():
        for o in b.step():
            last = o
    assert b.stats.num_prompt_tokens_cached - before == n
    return list(last.token_ids)


def _check_identical(export: KVExport, blocks: list[KVBlock]) -> None:
    full = [b for b in export.blocks if b.key is not None]
    assert len(blocks) == len(full) == 3
    for want, got in zip(full, blocks):
        assert (got.key, got.parent, got.token_ids, got.spec) == (
            want.key,
            want.parent,
            want.token_ids,
            want.spec,
        )
        assert got.data.dtype == want.data.dtype and np.array_equal(
            got.data.view(np.uint8), want.data.view(np.uint8)
        )


@pytest.mark.parametrize("tiers", ["host", "ssd", "host+ssd"])
def test_round_trip_through_each_tier(
    tiers: str, prefilled: Any, engine_b: LLMEngine, shm_dir: Path, tmp_path: Path
) -> None:
    """put_export -> get_many per tier (host+ssd: a 1-block host tier demotes, reads promote) is
    byte-identical and the continuation equals the single-engine one."""
    reference, exports = prefilled
    per = exports[0].spec.bytes_per_block + 4096
    host = TierConfig(
        path=str(shm_dir / "host"), capacity_bytes=per * (1 if tiers == "host+ssd" else 16)
    )
    ssd = TierConfig(path=str(tmp_path / "ssd"), capacity_bytes=per * 16)
    cfg = StoreConfig(host=None if tiers == "ssd" else host, ssd=None if tiers == "host" else ssd)
    with BlockStore(cfg) as store:
        for prompt, export, want in zip(PROMPTS, exports, reference):
            assert store.put_export(export) == 3
            keys = [b.key for b in export.blocks if b.key is not None]
            if tiers == "host+ssd":
                assert store.match_prefix(keys).tiers[:2] == ("ssd", "ssd")
            objs = store.get_many(keys)
            _check_identical(export, [o.to_kvblock() for o in objs if o is not None])
            assert _continue(engine_b, prompt, export, objs) == want
        if tiers == "host+ssd":
            assert store.stats.promotions > 0 and store.stats.demotions > 0


@pytest.mark.parametrize("path", ["shm", "tcp"])
def test_round_trip_through_each_backend(
    path: str, prefilled: Any, engine_b: LLMEngine, shm_dir: Path
) -> None:
    """A prefill worker's store serves the blocks; fetched via the shared host tier or TCP they are
    byte-identical and the continuation equals the single-engine one."""
    reference, exports = prefilled
    host_path = str(shm_dir / "prefill")
    cfg = TransferConfig()
    with (
        BlockStore(
            StoreConfig(host=TierConfig(path=host_path, capacity_bytes=1 << 24), ssd=None)
        ) as store,
        BlockServer(store, cfg, host_tier_path=host_path) as server,
    ):
        fetcher = BlockFetcher(cfg, backends=[])
        if path == "shm":
            fetcher.backends = [SharedHostBackend()]
            peer = Peer(local_host_id(), host_tier_path=host_path)
        else:
            fetcher.backends = [TcpBackend(cfg, fetcher.pool)]
            peer = Peer("another-host", tcp=server.address)
        with fetcher:
            for prompt, export, want in zip(PROMPTS, exports, reference):
                store.put_export(export)
                keys = [b.key for b in export.blocks if b.key is not None]
                with fetcher.fetch(keys, peer) as res:
                    assert res.paths == [path] * 3
                    _check_identical(export, [o.to_kvblock() for o in res.objects if o is not None])
                    assert _continue(engine_b, prompt, export, res.objects) == want


def test_torch_view_of_a_stored_block_is_zero_copy(prefilled: Any, shm_dir: Path) -> None:
    """The engine can wrap a stored block's payload as a torch tensor without copying it."""
    import warnings

    import torch

    _, exports = prefilled
    block = exports[0].blocks[0]
    with BlockStore(
        StoreConfig(host=TierConfig(path=str(shm_dir / "t"), capacity_bytes=1 << 22), ssd=None)
    ) as store:
        store.put(block)
        obj = store.get(block.key)
        assert obj is not None
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", UserWarning
            )  # read-only memory: torch warns, does not copy
            t = torch.frombuffer(memoryview(obj.payload), dtype=torch.float32).view(
                *obj.header.shape
            )
        assert t.data_ptr() == obj.payload.address
        assert torch.equal(t, torch.from_numpy(block.data))
        del t
