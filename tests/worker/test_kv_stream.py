"""The hand-off streamed while prefill runs (``WorkerConfig.stream_kv``): the decode
side's stream against a fake engine, then on a real LocalCluster of 1 prefill + 1
decode worker with the tiny checkpoint."""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

import mooncake
from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.transfer.config import TransferConfig
from mooncake.types import BlockKey
from mooncake.worker.config import WorkerConfig
from mooncake.worker.kv_stream import StreamImports
from mooncake.worker.messages import PlacementInfo, RequestSpec

GREEDY = mooncake.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
BLOCKS = 48
CHUNK = 16
"""Prefill chunk (tokens): the 48-block prompt is computed in 48 engine steps."""
TRIES = 3
"""Fresh prompts tried until one overlaps (a loaded machine may delay a task past a
whole prefill; every try must still be correct)."""


def _stream_counts(llm: mooncake.LLM) -> dict[str, Counter[str]]:
    return {
        "+".join(llm.workers[w]["roles"]): Counter(s["stream_blocks"])
        for w, s in llm.worker_stats().items()
    }


def _engine_config(**kw: Any) -> EngineConfig:
    return EngineConfig(num_blocks=256, long_prefill_chunk=CHUNK, **kw)


class _Engine:
    """Imports the leading run of asked keys that the 'prefill side' published."""

    def __init__(self) -> None:
        self.published: set[bytes] = set()
        self.asked: list[int] = []
        self.lock = threading.Lock()

    def call(
        self, name: str, tier: str, keys: list[bytes], hand_off: bool = False
    ) -> concurrent.futures.Future[Any]:
        # A streamed hand-off: kept for its request even without prefix caching.
        assert name == "import_from_tier" and tier == "tier" and hand_off
        with self.lock:
            self.asked.append(len(keys))
            n = 0
            while n < len(keys) and keys[n] in self.published:
                n += 1
        f: concurrent.futures.Future[Any] = concurrent.futures.Future()
        f.set_result((n, n, 10 * n))
        return f


def _fake_plugin(engine: _Engine) -> Any:
    kvs = SimpleNamespace(same_host_tier=lambda peer: "tier")
    return SimpleNamespace(
        kv_store=kvs,
        engine=engine,
        worker=SimpleNamespace(address="decode"),
        peer_of=lambda addr: object(),
        block_size=4,
        root_key=lambda salt: BlockKey(b"r" * 16),
    )


def _wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_stream_imports_the_leading_run_as_it_appears_and_stops_when_taken():
    """A 300-block prompt whose blocks are published in three steps: the stream imports
    the leading run after each (asking for at most 128 keys a look), a block published
    out of order is not taken before the ones ahead of it, and ``take`` stops the
    stream and returns what landed, with the time of each import. A second start of
    the same request does nothing; a request placed with prefill here is not streamed."""
    keys = [BlockKey(i.to_bytes(16, "big")) for i in range(300)]
    spec = RequestSpec("r1", list(range(1200)), mooncake.SamplingParams(), block_keys=keys)
    engine = _Engine()
    streams = StreamImports(_fake_plugin(engine), poll_s=0.002)
    try:
        streams.start(spec, PlacementInfo("prefill", "decode"))
        streams.start(spec, PlacementInfo("prefill", "decode"))
        streams.start(
            RequestSpec("r2", list(range(8)), mooncake.SamplingParams()),
            PlacementInfo("decode", "decode"),
        )
        with engine.lock:
            engine.published |= set(keys[:10]) | {keys[20]}
        _wait_for(lambda: streams._streams["r1"].result.blocks == 10)
        with engine.lock:
            engine.published |= set(keys[10:200])
        _wait_for(lambda: streams._streams["r1"].result.blocks == 200)
        assert max(engine.asked) <= 128
        got = streams.take("r1")
        assert got is not None and got.blocks == 200 and got.nbytes == 2000
        assert got.paths == ["shm"] * 200 and sum(n for _, n in got.imports) == 200
        assert got.before(time.time()) == 200 and got.before(None) == 0
        asked = len(engine.asked)
        time.sleep(0.05)
        assert len(engine.asked) == asked, "a taken stream stops looking"
        assert streams.take("r1") is None and streams.take("r2") is None
    finally:
        streams.close()


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("same_host", "arena_records"),
    [(True, None), (False, None), (True, 5)],
    ids=["shm", "tcp", "shm-small-arena"],
)
def test_streamed_handoff_overlaps_prefill(tiny_llama, same_host, arena_records):
    """Fresh 48-block prompts, prefilled in 16-token chunks, with streaming on. Same
    host, the decode engine reads the blocks from the prefill worker's host tier as
    they appear; with ``same_host=False`` it asks the prefill worker's block server over
    TCP. Each prompt's greedy output equals the in-process engine's and all 48 blocks
    arrive (streamed or left to the transfer task), never a miss. Within 3 prompts,
    the prefill worker published blocks before its prefill ended and the decode worker
    imported blocks before the prefill's first token. The hand-off leases were
    released. ``shm-small-arena``: the export arena holds 5 records, far fewer than the
    prompt's blocks (an 8,192-token prompt against the default arena): the blocks still
    stream, in rounds, and the end exports the rest the same way (no socket export)."""
    rng = random.Random(11)
    ref = LLMEngine(_engine_config(model=str(tiny_llama)))
    arena = {}
    if arena_records is not None:
        from mooncake.store.records import record_size

        per = record_size(ref.spec, ref.fingerprint, ref.config.block_size)
        arena = {"export_arena_bytes": arena_records * per}
    overlapped: list[tuple[Counter[str], Counter[str]]] = []
    with mooncake.LLM(
        str(tiny_llama),
        engine_config=_engine_config(),
        worker_config=WorkerConfig(
            stream_kv=True, transfer=TransferConfig(same_host=same_host), **arena
        ),
        dashboard_address=None,
    ) as llm:
        bs = next(iter(llm.workers.values()))["block_size"]
        # A first request warms the paths (the decode worker learns its peer).
        warm = [rng.randrange(300) for _ in range(4 * bs)]
        llm.generate([warm], GREEDY, use_tqdm=False)
        for _ in range(TRIES):
            before = _stream_counts(llm)
            prompt = [rng.randrange(300) for _ in range(BLOCKS * bs)]
            out = llm.generate([prompt], GREEDY, use_tqdm=False)[0]
            after = _stream_counts(llm)
            assert out.token_ids == ref.generate([prompt], GREEDY)[0].token_ids
            prefill = after["prefill"] - before["prefill"]
            decode = after["decode"] - before["decode"]
            print(prefill, decode)
            got = decode["during_prefill"] + decode["after_prefill"] + decode["transfer"]
            assert got == BLOCKS, decode
            if prefill["published_during_prefill"] > 0 and decode["during_prefill"] > 0:
                overlapped.append((prefill, decode))
                break
        stats = llm.worker_stats()
        leases = {"+".join(llm.workers[w]["roles"]): s["handoff_leases"] for w, s in stats.items()}
        sent = {
            "+".join(llm.workers[w]["roles"]): s["copies"].get("channel.send", 0)
            for w, s in stats.items()
        }
        paths = {"+".join(llm.workers[w]["roles"]): s["transfer_paths"] for w, s in stats.items()}
    assert overlapped, f"no prompt of {TRIES} streamed during its prefill"
    assert "miss" not in paths["decode"]
    assert ("shm" if same_host else "tcp") in paths["decode"]
    assert leases == {"prefill": 0, "decode": 0}
    assert sent["prefill"] == 0  # every export went through the arena, none the socket
