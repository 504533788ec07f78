"""Tenant isolation across the cluster: ``cache_salt`` is part of every block key, so a
tenant never reuses, fetches or is placed on another tenant's blocks."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

import mooncake
from mooncake.config import EngineConfig
from mooncake.outputs import RequestOutput
from mooncake.transfer import Peer

pytestmark = pytest.mark.cluster

GREEDY = mooncake.SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


def _run(llm: mooncake.LLM, prompt: list[int], salt: str | None) -> RequestOutput:
    async def go() -> RequestOutput:
        last = None
        async for out in llm.stream(prompt, GREEDY, cache_salt=salt):
            last = out
        assert last is not None and last.finished
        return last

    return asyncio.run(go())


@pytest.fixture(scope="module")
def llm(tiny_llama):
    """Two prefill workers and one decode worker: blocks live on one of several workers."""
    with mooncake.LLM(
        str(tiny_llama),
        prefill_workers=2,
        decode_workers=1,
        threads_per_worker=2,
        engine_config=EngineConfig(num_blocks=512),
        dashboard_address=None,
    ) as llm:
        yield llm


def test_same_prompt_other_tenant_gets_no_cached_tokens(llm):
    """Tenant A sends a 96-token prompt twice (the second reuses A's blocks); tenant B and a
    request without salt then send the same prompt: neither is served a cached token,
    whichever prefill worker the Conductor picks (its index, keyed by the salted keys,
    sees no prefix for B on any worker, so nothing is fetched from A's worker either);
    B's own second request does reuse B's blocks."""
    rng = random.Random(11)
    prompt = [rng.randrange(300) for _ in range(96)] + [1, 2, 3]
    before = llm.worker_stats()
    a1 = _run(llm, prompt, "tenant-a")
    a2 = _run(llm, prompt, "tenant-a")
    assert a1.num_cached_tokens == 0 and a2.num_cached_tokens == 96
    b1 = _run(llm, prompt, "tenant-b")
    none = _run(llm, prompt, None)
    assert b1.num_cached_tokens == 0 and none.num_cached_tokens == 0
    assert b1.outputs[0].token_ids == a1.outputs[0].token_ids  # same model, same answer
    after = llm.worker_stats()
    fetched = sum(
        after[w]["hit_blocks"].get("remote", 0) - before[w]["hit_blocks"].get("remote", 0)
        for w in after
    )
    assert fetched <= 96 // 16  # only A's second request may have fetched (A's own blocks)
    b2 = _run(llm, prompt, "tenant-b")
    assert b2.num_cached_tokens == 96


def _fetch_from(dask_worker, peer, prompt: list[int], salt: str | None) -> int:
    """(On a worker.) Blocks of ``prompt`` under ``salt`` this worker gets from ``peer``
    through the transfer layer."""
    from mooncake.kvcache import block_keys
    from mooncake.worker.plugin import PLUGIN_NAME

    plugin = dask_worker.plugins[PLUGIN_NAME]
    keys = block_keys(prompt, plugin.block_size, plugin.root_key(salt))
    return plugin.kv_store.fetch(keys, peer, lambda blocks: len(blocks)).num_blocks


def test_another_worker_cannot_fetch_a_tenants_blocks_under_another_salt(llm):
    """Tenant A's prompt is prefilled on one worker (its blocks published to that worker's
    store); from another worker, the same prompt's keys under salt B (or no salt) fetch
    nothing from it, while A's keys fetch every full block: the store and the transfer
    layer only ever answer the salted key."""
    rng = random.Random(12)
    prompt = [rng.randrange(300) for _ in range(64)]
    a = _run(llm, prompt, "tenant-a")
    deadline = time.monotonic() + 30
    while not (hist := llm.history([a.request_id])) and time.monotonic() < deadline:
        time.sleep(0.05)  # the Conductor records a request when its last task reports
    holder = hist[0]["ran_on"]["prefill"]
    other = next(w for w in llm.workers if w != holder)
    p = llm.workers[holder]["peer"]
    same_host = Peer(p["host_id"], tuple(p["tcp"]), p["host_tier_path"], False)
    over_tcp = Peer("another-host", tuple(p["tcp"]))  # the block server, as a remote host sees it
    for peer in (same_host, over_tcp):
        for salt, blocks in (("tenant-b", 0), (None, 0), ("tenant-a", 64 // 16)):
            got = llm.client.run(_fetch_from, peer=peer, prompt=prompt, salt=salt, workers=[other])[
                other
            ]
            assert got == blocks, (peer, salt)
