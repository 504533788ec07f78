"""The Conductor placing and admitting real requests on a LocalCluster: prefix affinity,
diversion to a less loaded worker (which fetches the prefix), early rejection."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

import mooncake
from mooncake.conductor.config import ConductorConfig
from mooncake.config import EngineConfig

pytestmark = pytest.mark.cluster

ONE = mooncake.SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)


def _tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(300) for _ in range(n)]


def _wait_indexed(llm, worker: str, blocks: int, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if llm.stats()["blocks_on"].get(worker, 0) >= blocks:
            return
        time.sleep(0.05)
    raise AssertionError(f"{worker} never reported {blocks} blocks")


@pytest.fixture(scope="module")
def llm2(tiny_llama):
    with mooncake.LLM(
        str(tiny_llama),
        prefill_workers=2,
        decode_workers=1,
        engine_config=EngineConfig(num_blocks=1024),
        dashboard_address=None,
    ) as llm:
        yield llm


def test_request_goes_to_worker_holding_its_prefix(llm2):
    """After a request leaves a 480-token prefix on one prefill worker, the next request
    with that prefix is placed there and reuses it."""
    prefix = _tokens(480, 1)
    first = llm2.generate([prefix + _tokens(30, 2)], ONE, use_tqdm=False)[0]
    holder = llm2.history([first.request_id])[0]["ran_on"]["prefill"]
    _wait_indexed(llm2, holder, 30)
    second = llm2.generate([prefix + _tokens(40, 3)], ONE, use_tqdm=False)[0]
    assert llm2.history([second.request_id])[0]["ran_on"]["prefill"] == holder
    assert second.num_cached_tokens == 480


def test_busy_holder_loses_to_idle_worker_that_fetches_prefix(llm2):
    """A burst sharing a hot prefix: the holder's queue grows until the idle worker is
    faster even after fetching the prefix; it then serves requests with the prefix
    fetched from the holder (hot prefixes get replicated)."""
    prefix = _tokens(480, 10)
    warm = llm2.generate([prefix + _tokens(20, 11)], ONE, use_tqdm=False)[0]
    holder = llm2.history([warm.request_id])[0]["ran_on"]["prefill"]
    _wait_indexed(llm2, holder, 30)
    burst = [prefix + _tokens(400, 100 + i) for i in range(6)]
    outs = llm2.generate(burst, ONE, use_tqdm=False)
    hist = {h["request_id"]: h for h in llm2.history([o.request_id for o in outs])}
    placed = [hist[o.request_id]["ran_on"]["prefill"] for o in outs]
    assert placed[0] == holder
    others = [o for o, w in zip(outs, placed) if w != holder]
    assert others, f"every request went to the holder: {placed}"
    assert any(o.num_cached_tokens == 480 for o in others)  # fetched from the holder


def test_overload_rejects_early_while_admitted_finish(tiny_llama):
    """With early rejection and a tight TTFT SLO, a burst of long prompts gets some
    Rejected (with a retry hint) and every admitted request completes."""
    cc = ConductorConfig(admission="early", ttft_slo_s=0.05)
    with mooncake.LLM(
        str(tiny_llama),
        engine_config=EngineConfig(num_blocks=2048),
        conductor_config=cc,
        dashboard_address=None,
    ) as llm:

        async def one(i: int):
            outs = [o async for o in llm.stream(_tokens(900, 1000 + i), ONE)]
            return outs[-1]

        async def burst():
            return await asyncio.gather(*(one(i) for i in range(40)), return_exceptions=True)

        results = asyncio.run(burst())
        rejected = [r for r in results if isinstance(r, mooncake.Rejected)]
        done = [r for r in results if not isinstance(r, BaseException)]
        assert rejected and done, results
        assert all(r.retry_after >= 0 and "TTFT" in r.reason for r in rejected)
        assert all(o.finished and len(o.token_ids) == 2 for o in done)
        assert len(rejected) + len(done) == 40
        assert sum(llm.stats()["rejections"].values()) == len(rejected)


def test_batch_placed_at_once_retries_its_rejected(tiny_llama):
    """``generate`` places a batch in one call to the Conductor: with early rejection
    and a tight TTFT SLO, a burst of long prompts gets some of them rejected there; each
    is retried after its hint until admitted, and every output comes back, in order."""
    cc = ConductorConfig(admission="early", ttft_slo_s=0.05)
    with mooncake.LLM(
        str(tiny_llama),
        engine_config=EngineConfig(num_blocks=2048),
        conductor_config=cc,
        dashboard_address=None,
    ) as llm:
        prompts = [_tokens(900, 2000 + i) for i in range(5)]
        outs = llm.generate(prompts, ONE, use_tqdm=False, order="input", max_retry_s=120)
        assert [o.prompt_token_ids for o in outs] == prompts
        assert all(o.finished and len(o.token_ids) == 2 for o in outs)
        assert sum(llm.stats()["rejections"].values()) > 0
