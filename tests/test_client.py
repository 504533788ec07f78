"""``mooncake.LLM`` on a real LocalCluster (processes): disaggregated prefill -> transfer
-> decode, prefix reuse, streaming, cancellation, colocated mode."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

import mooncake
from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine

pytestmark = pytest.mark.cluster

GREEDY = mooncake.SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


def _prompts(n: int = 20, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(300) for _ in range(rng.randrange(1, 120))] for _ in range(n)]


@pytest.fixture(scope="module")
def llm(tiny_llama):
    with mooncake.LLM(
        str(tiny_llama),
        prefill_workers=1,
        decode_workers=1,
        engine_config=EngineConfig(num_blocks=512),
        dashboard_address=None,
    ) as llm:
        yield llm


@pytest.fixture(scope="module")
def reference(tiny_llama):
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=512))
    return [o.token_ids for o in engine.generate(_prompts(), GREEDY)]


def test_outputs_equal_in_process_engine(llm, reference):
    """20 prompts through the cluster give the in-process engine's tokens, in order."""
    outs = llm.generate(_prompts(), GREEDY, use_tqdm=False)
    assert [o.token_ids for o in outs] == reference
    assert all(o.finished and o.finish_reason == "length" for o in outs)


def test_prefill_and_decode_run_on_their_workers(llm):
    """Task placement: the prefill task (lookup + prefill) on the prefill worker,
    transfer/decode on the decode worker; the lookup is no task of its own. The full
    prompt blocks reach decode through the prefill worker's host tier (same host: shared
    memory), so decode computes only the partial last block."""
    roles = {w: i["roles"] for w, i in llm.workers.items()}
    before = llm.worker_stats()
    out = llm.generate([list(range(1, 100))], GREEDY, use_tqdm=False)[0]
    (hist,) = llm.history([out.request_id])
    ran = hist["ran_on"]
    assert roles[ran["prefill"]] == ["prefill"] and "lookup" not in ran
    assert roles[ran["decode"]] == ["decode"] and ran["transfer"] == ran["decode"]
    after = llm.worker_stats()
    computed = {
        w: after[w]["num_prompt_tokens_computed"] - before[w]["num_prompt_tokens_computed"]
        for w in after
    }
    assert computed[ran["prefill"]] == 99
    assert computed[ran["decode"]] == 99 % 16
    assert after[ran["prefill"]]["host_blocks"] >= 99 // 16
    gained = after[ran["decode"]]["transfer_paths"].get("shm", 0) - before[ran["decode"]][
        "transfer_paths"
    ].get("shm", 0)
    assert gained == 1


def test_shared_prefix_computes_only_suffix(llm):
    """A second request sharing a 96-token prefix is served 96 cached tokens."""
    rng = random.Random(5)
    prefix = [rng.randrange(300) for _ in range(96)]
    first = llm.generate([prefix + [1, 2, 3, 4, 5]], GREEDY, use_tqdm=False)[0]
    second = llm.generate([prefix + [9, 8, 7]], GREEDY, use_tqdm=False)[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 96


def test_stream_yields_tokens_as_decoded(llm, reference):
    """stream() yields growing outputs, the last one finished and equal to generate's."""

    async def run():
        seen = []
        async for out in llm.stream(_prompts()[0], GREEDY):
            seen.append(list(out.token_ids))
        return seen

    seen = asyncio.run(run())
    assert len(seen) >= 2 and all(len(a) <= len(b) for a, b in itertools.pairwise(seen))
    assert seen[-1] == reference[0]


def test_bad_input_raises_value_error(llm):
    with pytest.raises(ValueError, match="context limit"):
        llm.make_request([1] * 2000)
    with pytest.raises(ValueError, match="token ids"):
        llm.make_request([1, 5000])


def test_dropping_a_stream_cancels_and_frees_blocks(llm):
    """Leaving the stream after 3 tokens aborts the request: no engine keeps it running
    and every block is free (or merely cached) again."""

    async def run():
        gen = llm.stream(
            list(range(1, 60)),
            mooncake.SamplingParams(temperature=0.0, max_tokens=5000, ignore_eos=True),
        )
        n = 0
        async for _ in gen:
            n += 1
            if n == 3:
                break
        await gen.aclose()

    asyncio.run(run())
    import time

    deadline = time.time() + 10
    while time.time() < deadline:
        stats = llm.worker_stats()
        if all(
            s["running"] == 0 and s["waiting"] == 0 and s["free_blocks"] == s["num_blocks"]
            for s in stats.values()
        ):
            break
        time.sleep(0.1)
    assert all(s["running"] == 0 and s["free_blocks"] == s["num_blocks"] for s in stats.values()), (
        stats
    )


def _wait_for(pred, timeout: float = 10.0) -> bool:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_placement_starts_the_prefill_before_the_graph_arrives(llm):
    """The Conductor hands an admitted request to its prefill worker at placement: the
    prompt is computed before the client submits the graph, and the graph's prefill task
    then collects that work (prompt computed once, same tokens as the usual path)."""
    prompt = [7, 299, 11] * 30  # not seen by this cluster before: nothing cached
    spec = llm.make_request(prompt, GREEDY)

    (prefill,) = [w for w, info in llm.workers.items() if "prefill" in info["roles"]]

    def computed() -> int:
        return int(llm.worker_stats()[prefill]["num_prompt_tokens_computed"])

    before = computed()
    placement = llm.place(spec)
    assert placement.prefill == prefill
    assert _wait_for(lambda: computed() >= before + len(prompt))
    out = llm.submit(spec, placement).result()
    assert computed() == before + len(prompt)
    assert out.token_ids == llm.generate([prompt], GREEDY, use_tqdm=False)[0].token_ids


def test_aborting_a_placed_request_frees_its_blocks(llm):
    """A request aborted after placement, its prefill done and its KV held for decode,
    but before its graph was submitted, does not keep those blocks."""
    spec = llm.make_request(
        list(range(1, 90)), mooncake.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    )

    def computed() -> int:
        return sum(int(s["num_prompt_tokens_computed"]) for s in llm.worker_stats().values())

    before = computed()
    llm.place(spec)
    assert _wait_for(lambda: computed() > before)
    llm.abort_sync(spec.request_id)

    def idle() -> bool:
        return all(
            s["running"] == 0 and s["waiting"] == 0 and s["free_blocks"] == s["num_blocks"]
            for s in llm.worker_stats().values()
        )

    assert _wait_for(idle), llm.worker_stats()


def test_colocated_mode_same_outputs(tiny_llama, reference):
    """The colocated baseline (prefill and decode in one engine) gives the same tokens."""
    with mooncake.LLM(
        str(tiny_llama),
        prefill_workers=1,
        mode="colocated",
        engine_config=EngineConfig(num_blocks=512),
        dashboard_address=None,
    ) as llm:
        outs = llm.generate(_prompts(), GREEDY, use_tqdm=False)
        assert [o.token_ids for o in outs] == reference
        (hist,) = llm.history([outs[0].request_id])
        assert set(hist["ran_on"]) == {"generate"}  # the lookup runs inside it


def test_logprobs_align_with_tokens_across_prefill_and_decode(llm, tiny_llama):
    """The first token's logprob comes from the prefill worker, the rest from decode:
    every generated token has its logprob, equal to the in-process engine's."""
    params = mooncake.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=2)
    ref = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=64)).generate(
        [_prompts()[2]], params
    )[0]
    out = llm.generate([_prompts()[2]], params, use_tqdm=False)[0]

    async def streamed():
        return [o async for o in llm.stream(_prompts()[2], params)][-1]

    last = asyncio.run(streamed())
    for got in (out, last):
        lps = got.outputs[0].logprobs
        assert lps is not None and len(lps) == len(got.token_ids) == 6
        for tok, d, r in zip(got.token_ids, lps, ref.outputs[0].logprobs):
            assert tok in d and abs(d[tok] - r[tok]) < 1e-5


def test_each_worker_runs_its_engine_in_its_own_process(llm):
    """The Dask worker processes never load torch: each engine lives in a child process
    of its worker (its own GIL), which the worker reports."""

    def probe(dask_worker):
        import os
        import sys

        return {
            "torch": "torch" in sys.modules,
            "pid": os.getpid(),
            "engine_pid": dask_worker.plugins["mooncake"].engine.proc.pid,
        }

    got = llm.client.run(probe)
    assert len(got) == 2
    for addr, p in got.items():
        assert not p["torch"]
        assert p["engine_pid"] != p["pid"]
        assert llm.workers[addr]["pid"] == p["engine_pid"]


def _decode_state(dask_worker) -> dict[str, list[str]]:
    """Which decode tasks this worker runs as long-running, and which hold a thread."""
    return {
        "long_running": sorted(str(ts.key) for ts in dask_worker.state.long_running),
        "executing": sorted(str(ts.key) for ts in dask_worker.state.executing),
        "in_threads": sorted(str(k) for k in dask_worker.active_threads.values()),
    }


def test_decoding_requests_hold_no_worker_thread(llm):
    """Six requests decoding at once on the decode worker: decode tasks are seen handed
    back to Dask (long-running) while they decode, none is ever seen in a thread of the
    worker, and all finish. (Not every task need be seen long-running: the transfer task
    admits the request into the engine, so a decode task dispatched late can find its
    request already finished and hand its slot back only for an instant.)"""
    (decode,) = [w for w, info in llm.workers.items() if "decode" in info["roles"]]
    params = mooncake.SamplingParams(temperature=0.0, max_tokens=800, ignore_eos=True)
    specs = [llm.make_request(p, params) for p in _prompts(6, seed=3)]
    futs = [llm.submit(s, llm.place(s)) for s in specs]
    keys = {f"decode-{s.request_id}" for s in specs}
    long_running: set[str] = set()
    in_threads: set[str] = set()

    def poll() -> bool:
        st = llm.client.run(_decode_state, workers=[decode])[decode]
        long_running.update(st["long_running"])
        in_threads.update(st["in_threads"])
        return all(f.done() for f in futs)

    assert _wait_for(poll, timeout=120)
    outs = [f.result(timeout=60) for f in futs]
    assert all(len(o.outputs[0].token_ids) == 800 for o in outs)
    assert keys & long_running, (keys, long_running)
    assert not keys & in_threads, in_threads
