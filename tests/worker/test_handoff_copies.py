"""How many times each block of a request's KV is copied on its way from the prefill
engine to the decode engine (1 prefill + 1 decode worker on one host), counted by the
processes themselves (``mooncake.kvcache.copies``), not inferred."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest

import mooncake
from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.store.native import records_lib
from mooncake.transfer.config import TransferConfig
from mooncake.worker.config import WorkerConfig

pytestmark = pytest.mark.cluster

GREEDY = mooncake.SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
BLOCKS = 12


def _copies(stats: dict[str, Any]) -> Counter[str]:
    return Counter(stats["copies"]) + Counter(stats["worker_copies"])


def _put_after(llm: mooncake.LLM) -> dict[str, int]:
    return {
        "+".join(llm.workers[w]["roles"]): s["handoff_put_after"]
        for w, s in llm.worker_stats().items()
    }


def _handoff_copies(
    llm: mooncake.LLM, prompt: list[int], put_after: int
) -> tuple[dict[str, dict[str, float]], Any, dict[str, int]]:
    """Copies per block of ``prompt``'s KV, by side and place, the request's output, and
    the blocks each side put into its host tier after their hand-off, once the prefill
    side has put ``put_after`` of them (10 s at most)."""
    before = {w: _copies(s) for w, s in llm.worker_stats().items()}
    out = llm.generate([prompt], GREEDY, use_tqdm=False)[0]
    deadline = time.monotonic() + 10
    while _put_after(llm)["prefill"] < put_after and time.monotonic() < deadline:
        time.sleep(0.05)  # the tier put follows the release of the hand-off's lease
    after = {w: _copies(s) for w, s in llm.worker_stats().items()}
    info = next(iter(llm.workers.values()))
    per_block = info["kv_bytes_per_block"]
    sides: dict[str, dict[str, float]] = {}
    for w, i in llm.workers.items():
        side = "+".join(i["roles"])
        delta = after[w] - before[w]
        sides[side] = {p: round(n / (BLOCKS * per_block), 2) for p, n in delta.items() if n}
    return sides, out, _put_after(llm)


def _split(places: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(copies, separate checksum passes) of one side's places."""
    checks = {p: n for p, n in places.items() if p.startswith("check.")}
    return {p: n for p, n in places.items() if p not in checks}, checks


@pytest.mark.parametrize(
    ("same_host", "want"),
    [(True, {"prefill": 2, "decode": 1}), (False, {"prefill": 3, "decode": 2})],
)
def test_copies_per_block_on_the_handoff(tiny_llama, same_host, want):
    """A fresh 12-block prompt. Same host: the prefill engine's KV pool is in shared
    memory; it holds the blocks and the decode engine copies each from there into its
    own pool once: one copy per block in all on the hand-off (the export arena's way
    made two). Afterwards, once the decode side released the lease, the prefill side
    writes them into its export arena and the host tier puts them (for later requests):
    all 12 blocks are put after the hand-off, none before. Across hosts
    (``same_host=False`` sends it over TCP) the store's way is unchanged: export, tier
    put, and the block server's socket write on the prefill side (3); the decode side
    receives into its receive arena and its engine copies from there (2). Greedy output
    is the in-process engine's; the prefill side leased the blocks until the decode
    side had them. (Streaming is off: nothing streamed.) Same host, each copy also
    computes or checks the block's checksum in the same pass: no separate checksum pass
    over a payload on either side (``check.*`` places)."""
    rng = random.Random(7)
    with mooncake.LLM(
        str(tiny_llama),
        engine_config=EngineConfig(num_blocks=128),
        worker_config=WorkerConfig(transfer=TransferConfig(same_host=same_host)),
        dashboard_address=None,
    ) as llm:
        bs = next(iter(llm.workers.values()))["block_size"]
        prompt = [rng.randrange(300) for _ in range(BLOCKS * bs)]
        sides, out, put_after = _handoff_copies(llm, prompt, BLOCKS if same_host else 0)
        stats = llm.worker_stats()
        pool_counts = {
            "+".join(llm.workers[w]["roles"]): (s["pool_handoffs"], s["pool_imports"])
            for w, s in stats.items()
        }
        leases = {
            "+".join(llm.workers[w]["roles"]): (s["handoff_leases_taken"], s["handoff_leases"])
            for w, s in stats.items()
        }
    ref = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=128)).generate([prompt], GREEDY)
    assert out.token_ids == ref[0].token_ids
    print(sides)
    (prefill, prefill_checks), (decode, decode_checks) = (
        _split(sides["prefill"]),
        _split(sides["decode"]),
    )
    if same_host and records_lib() is not None:
        # Each copy sums what it moves in the same pass: no separate checksum pass over
        # the payload on either side (the export's sum, the import's check).
        assert prefill_checks == {} and decode_checks == {}, sides
        # The hand-off itself: one copy in all, pool -> pool (taken: the counters).
        assert pool_counts == {"prefill": (1, 0), "decode": (0, 1)}
        on_handoff = {
            f"{side}:{p}": n
            for side, places in (("prefill", prefill), ("decode", decode))
            for p, n in places.items()
            if not p.endswith(".after") and p != "store.put"
        }
        assert on_handoff == pytest.approx({"decode:engine.import": 1.0}, abs=0.05)
        # After it, off its path: into the export arena and the host tier.
        assert prefill == pytest.approx({"engine.export.after": 1.0, "store.put": 1.0}, abs=0.05)
    # Same host: the tier put came after the decode side had every block, not before.
    assert put_after == {"prefill": BLOCKS if same_host else 0, "decode": 0}
    assert sum(prefill.values()) == pytest.approx(want["prefill"], abs=0.15), prefill
    assert sum(decode.values()) == pytest.approx(want["decode"], abs=0.15), decode
    assert "channel.send" not in prefill and "channel.send" not in decode
    # The prefill side leased the hand-off and the decode side released it after fetching.
    assert leases == {"prefill": (1, 0), "decode": (0, 0)}
    # Streaming is off by default: nothing moved before the transfer task.
    assert all(not s["stream_blocks"] for s in stats.values())


@pytest.mark.skipif(records_lib() is None, reason="no compiled library")
def test_export_arena_way_without_the_shared_pool(tiny_llama):
    """Same host with ``shared_kv_pool=False``: the hand-off goes the export arena's way,
    one copy per block per side, each summing or checking in the same pass (prefill:
    pool -> arena; decode: arena -> pool); the tier put follows the hand-off. Greedy
    output is the in-process engine's; no pool hand-off was counted."""
    rng = random.Random(8)
    with mooncake.LLM(
        str(tiny_llama),
        engine_config=EngineConfig(num_blocks=128),
        worker_config=WorkerConfig(shared_kv_pool=False),
        dashboard_address=None,
    ) as llm:
        bs = next(iter(llm.workers.values()))["block_size"]
        prompt = [rng.randrange(300) for _ in range(BLOCKS * bs)]
        sides, out, put_after = _handoff_copies(llm, prompt, BLOCKS)
        pools = {w: (s["pool_handoffs"], s["pool_imports"]) for w, s in llm.worker_stats().items()}
    ref = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=128)).generate([prompt], GREEDY)
    assert out.token_ids == ref[0].token_ids
    assert set(pools.values()) == {(0, 0)}
    assert put_after == {"prefill": BLOCKS, "decode": 0}
    assert sides["prefill"] == pytest.approx({"engine.export": 1.0, "store.put": 1.0}, abs=0.05)
    assert sides["decode"] == pytest.approx({"engine.import": 1.0}, abs=0.05)
