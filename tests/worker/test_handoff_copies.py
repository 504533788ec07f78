"""How many times each block of a request's KV is copied on its way from the prefill
engine to the decode engine (1 prefill + 1 decode worker on one host), counted by the
processes themselves (``mooncake.kvcache.copies``), not inferred."""

from __future__ import annotations

import random
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


def _handoff_copies(
    llm: mooncake.LLM, prompt: list[int]
) -> tuple[dict[str, dict[str, float]], Any]:
    """Copies per block of ``prompt``'s KV, by side and place, and the request's output."""
    before = {w: _copies(s) for w, s in llm.worker_stats().items()}
    out = llm.generate([prompt], GREEDY, use_tqdm=False)[0]
    after = {w: _copies(s) for w, s in llm.worker_stats().items()}
    info = next(iter(llm.workers.values()))
    per_block = info["kv_bytes_per_block"]
    sides: dict[str, dict[str, float]] = {}
    for w, i in llm.workers.items():
        side = "+".join(i["roles"])
        delta = after[w] - before[w]
        sides[side] = {p: round(n / (BLOCKS * per_block), 2) for p, n in delta.items() if n}
    return sides, out


def _split(places: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(copies, separate checksum passes) of one side's places."""
    checks = {p: n for p, n in places.items() if p.startswith("check.")}
    return {p: n for p, n in places.items() if p not in checks}, checks


@pytest.mark.parametrize(
    ("same_host", "want"),
    [(True, {"prefill": 2, "decode": 1}), (False, {"prefill": 3, "decode": 2})],
)
def test_copies_per_block_on_the_handoff(tiny_llama, same_host, want):
    """A fresh 12-block prompt. The prefill side copies each block out of its pool into
    the export arena once and LMDB copies it into the host tier (no reserve-then-write
    put: 2 in all). Same host, the decode engine copies each block once, from the
    prefill's host tier straight into its pool. Across hosts (``same_host=False`` sends
    it over TCP), the block server's socket write is a third copy on the prefill side,
    and the decode side receives into its receive arena and its engine copies from
    there (2). Greedy output is the in-process engine's; the prefill side leased the
    blocks until the decode side had them. (Streaming is off: nothing streamed.) Same
    host, each copy also computes or checks the block's checksum in the same pass: no
    separate checksum pass over a payload on either side (``check.*`` places)."""
    rng = random.Random(7)
    with mooncake.LLM(
        str(tiny_llama),
        engine_config=EngineConfig(num_blocks=128),
        worker_config=WorkerConfig(transfer=TransferConfig(same_host=same_host)),
        dashboard_address=None,
    ) as llm:
        bs = next(iter(llm.workers.values()))["block_size"]
        prompt = [rng.randrange(300) for _ in range(BLOCKS * bs)]
        sides, out = _handoff_copies(llm, prompt)
        stats = llm.worker_stats()
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
        assert prefill == pytest.approx({"engine.export": 1.0, "store.put": 1.0}, abs=0.05)
        assert decode == pytest.approx({"engine.import": 1.0}, abs=0.05)
    assert sum(prefill.values()) == pytest.approx(want["prefill"], abs=0.15), prefill
    assert sum(decode.values()) == pytest.approx(want["decode"], abs=0.15), decode
    assert "channel.send" not in prefill and "channel.send" not in decode
    # The prefill side leased the hand-off and the decode side released it after fetching.
    assert leases == {"prefill": (1, 0), "decode": (0, 0)}
    # Streaming is off by default: nothing moved before the transfer task.
    assert all(not s["stream_blocks"] for s in stats.values())
