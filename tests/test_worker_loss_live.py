"""A worker killed with ``kill -9`` never hangs a request (real LocalCluster of processes,
2 prefill + 1 decode workers, a real uvicorn server in front of it).

- prefill worker lost with requests queued at it: they are placed again and complete;
- the only decode worker lost: in-flight requests fail within 5 s with a clear error
  (``WorkerLost``; HTTP: an SSE error event, then the stream ends), new requests get 503
  until the Nanny's restarted worker has joined, then succeed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import mooncake
from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.server import ServerConfig, create_app
from mooncake.worker.tasks import worker_info
from tests.server.conftest import ServerThread

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GREEDY = mooncake.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def _tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(300) for _ in range(n)]


@pytest.fixture(scope="module")
def cluster(tiny_llama: Path) -> Iterator[tuple[mooncake.LLM, ServerThread]]:
    llm = mooncake.LLM(str(tiny_llama), prefill_workers=2, decode_workers=1, dashboard_address=None)
    try:
        with ServerThread(create_app(ServerConfig(), backend=llm)) as server:
            yield llm, server
    finally:
        llm.close()


def _roles(llm: mooncake.LLM) -> dict[str, list[str]]:
    return {w: i["roles"] for w, i in llm.stats()["workers"].items()}


def _wait_members(llm: mooncake.LLM, prefill: int, decode: int, timeout: float = 120.0) -> None:
    """Until the Conductor knows ``prefill`` prefill and ``decode`` decode workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        roles = list(_roles(llm).values())
        if (
            sum("prefill" in r for r in roles) == prefill
            and sum("decode" in r for r in roles) == decode
        ):
            return
        time.sleep(0.2)
    pytest.fail(f"cluster never got back to {prefill}P+{decode}D: {_roles(llm)}")


def _infos(llm: mooncake.LLM) -> dict[str, dict[str, Any]]:
    infos: dict[str, dict[str, Any]] = llm.client.run(worker_info, on_error="ignore")
    return infos


def test_prefill_worker_lost_with_queued_requests(
    cluster: tuple[mooncake.LLM, ServerThread], tiny_llama: Path
) -> None:
    """Prefill worker P1's engine is frozen (SIGSTOP), so requests placed on it wait in its
    queue; then P1 is killed with ``kill -9``. Every request completes, greedy tokens equal
    to the in-process engine's."""
    llm, _ = cluster
    _wait_members(llm, 2, 1)
    prompts = [_tokens(60 + 7 * i, 100 + i) for i in range(6)]
    ref = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256)).generate(prompts, GREEDY)
    infos = _infos(llm)
    victim = sorted(w for w, i in infos.items() if i["roles"] == ["prefill"])[0]
    os.kill(infos[victim]["pid"], signal.SIGSTOP)  # its engine process: nothing it gets runs
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    async def one(i: int) -> None:
        async for out in llm.stream(prompts[i], GREEDY):
            if out.finished:
                results[i] = list(out.token_ids)

    def run() -> None:
        async def main() -> None:
            res = await asyncio.gather(*(one(i) for i in range(6)), return_exceptions=True)
            errors.extend(r for r in res if isinstance(r, BaseException))

        asyncio.run(main())

    t = threading.Thread(target=run)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(results) + len(errors) < 6:
            if (
                llm.stats()["prefill_queue_s"].get(victim, 0.0) > 0
                and time.monotonic() > deadline - 18
            ):
                break
            time.sleep(0.1)
        stuck = 6 - len(results) - len(errors)
        assert stuck > 0, "no request was placed on the frozen prefill worker"
        os.kill(infos[victim]["worker_pid"], signal.SIGKILL)
    finally:
        t.join(timeout=60)
    assert not t.is_alive(), "requests hung after their prefill worker was killed"
    assert errors == []
    assert [results[i] for i in range(6)] == [r.token_ids for r in ref]


def _stream_until_end(
    base_url: str, body: dict[str, Any], started: threading.Event, out: dict[str, Any]
) -> None:
    """Read an SSE stream to its end; records the events' payloads and when it ended."""
    events: list[Any] = []
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(30.0)) as http,
            http.stream("POST", f"{base_url}/v1/completions", json=body) as r,
        ):
            out["status"] = r.status_code
            for line in r.iter_lines():
                if line.startswith("data: "):
                    payload = line[6:]
                    events.append(payload if payload == "[DONE]" else json.loads(payload))
                    if sum(1 for e in events if isinstance(e, dict) and "choices" in e) >= 3:
                        started.set()
    except Exception as e:
        out["exception"] = e
    out["events"] = events
    out["ended"] = time.monotonic()
    started.set()


def test_only_decode_worker_lost(cluster: tuple[mooncake.LLM, ServerThread]) -> None:
    """Three HTTP streams and one ``LLM.stream`` decode on the only decode worker, which is
    killed with ``kill -9``. Within 5 s every HTTP stream has sent an error event
    (``worker_lost``) and ended, and ``LLM.stream`` raised ``WorkerLost``. A new request
    gets 503 until the Nanny's restarted decode worker joins; then it succeeds."""
    llm, server = cluster
    _wait_members(llm, 2, 1)
    decode = next(w for w, r in _roles(llm).items() if list(r) == ["decode"])
    decode_pid = _infos(llm)[decode]["worker_pid"]
    outs: list[dict[str, Any]] = [{} for _ in range(3)]
    started = [threading.Event() for _ in range(3)]
    threads = [
        threading.Thread(
            target=_stream_until_end,
            args=(
                server.base_url,
                {
                    "model": llm.model_name,
                    "prompt": _tokens(20, 200 + i),
                    "max_tokens": 1000,
                    "stream": True,
                    "ignore_eos": True,
                },
                started[i],
                outs[i],
            ),
        )
        for i in range(3)
    ]
    llm_result: dict[str, Any] = {}
    llm_started = threading.Event()

    def llm_stream() -> None:
        async def main() -> None:
            n = 0
            try:
                async for _ in llm.stream(
                    _tokens(20, 300),
                    mooncake.SamplingParams(temperature=0, max_tokens=1000, ignore_eos=True),
                ):
                    n += 1
                    if n == 3:
                        llm_started.set()
            except BaseException as e:
                llm_result["exception"] = e
            llm_result["ended"] = time.monotonic()
            llm_result["tokens"] = n
            llm_started.set()

        asyncio.run(main())

    lt = threading.Thread(target=llm_stream)
    # The in-process stream starts last: it needs no HTTP round trip, and started first
    # it could decode all its tokens while the HTTP streams were still being placed.
    for t in threads:
        t.start()
    try:
        for ev in started:
            assert ev.wait(60), "HTTP streams did not start"
        lt.start()
        assert llm_started.wait(60), "LLM.stream did not start"
        assert all("ended" not in o for o in outs) and "ended" not in llm_result, (
            f"a stream ended before the kill: {llm_result!r} {[sorted(o) for o in outs]}"
        )
        t_kill = time.monotonic()
        os.kill(decode_pid, signal.SIGKILL)
        for t in [*threads, lt]:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in [*threads, lt]), (
            "a stream hung after its decode worker was killed"
        )
        # New requests while no decode worker is in the cluster: 503 in OpenAI's shape.
        r = httpx.post(
            f"{server.base_url}/v1/completions",
            json={"model": llm.model_name, "prompt": [1, 2, 3], "max_tokens": 2},
            timeout=30,
        )
        joined_early = r.status_code == 200 and any("decode" in x for x in _roles(llm).values())
        if not joined_early:
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "unavailable"
    finally:
        for t in [*threads, lt]:
            if t.ident is not None:
                t.join(timeout=30)
    for o in outs:
        assert o.get("status") == 200 and "exception" not in o, o
        assert o["ended"] - t_kill < 5.0
        errs = [e for e in o["events"] if isinstance(e, dict) and "error" in e]
        assert errs and errs[0]["error"]["code"] == "worker_lost", o["events"][-3:]
    assert isinstance(llm_result.get("exception"), mooncake.WorkerLost), llm_result
    assert llm_result["ended"] - t_kill < 5.0
    _wait_members(llm, 2, 1)
    r = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": llm.model_name, "prompt": [1, 2, 3], "max_tokens": 4, "ignore_eos": True},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 4


def test_decode_worker_lost_streams_resume(tiny_llama: Path) -> None:
    """1 prefill + 2 decode workers; four greedy streams run, and the decode worker that
    serves at least one of them is killed with ``kill -9`` mid-stream. Every stream
    completes on the surviving decode worker, resumed there through the early path (the
    Conductor starts the transfer and decode at placement, the resume graph collects
    it); what each stream delivered (no token repeated or missing) equals the
    in-process engine's uninterrupted greedy output."""
    prompts = [_tokens(30 + 5 * i, 400 + i) for i in range(4)]
    params = mooncake.SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    ref = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256)).generate(prompts, params)
    with mooncake.LLM(
        str(tiny_llama), prefill_workers=1, decode_workers=2, dashboard_address=None
    ) as llm:
        delivered: dict[int, list[list[int]]] = {i: [] for i in range(4)}
        errors: list[BaseException] = []
        going = threading.Event()

        async def one(i: int) -> None:
            async for out in llm.stream(prompts[i], params, request_id=f"resume-{i}"):
                delivered[i].append(list(out.token_ids))
                if all(len(d) >= 5 for d in delivered.values()):
                    going.set()

        def run() -> None:
            async def main() -> None:
                res = await asyncio.gather(*(one(i) for i in range(4)), return_exceptions=True)
                errors.extend(r for r in res if isinstance(r, BaseException))

            asyncio.run(main())

        t = threading.Thread(target=run)
        t.start()
        try:
            assert going.wait(60), "streams did not start"
            on = [w for i in range(4) for w in llm._placed.get(f"resume-{i}", ())]
            decoders = {w for w, info in llm.workers.items() if list(info["roles"]) == ["decode"]}
            victim = max(decoders, key=on.count)
            assert on.count(victim) > 0
            os.kill(_infos(llm)[victim]["worker_pid"], signal.SIGKILL)
        finally:
            t.join(timeout=120)
        assert not t.is_alive(), "streams hung after their decode worker was killed"
        assert errors == []
        for i in range(4):
            outs = delivered[i]
            assert all(b[: len(a)] == a for a, b in itertools.pairwise(outs)), (
                "a stream went back on a token"
            )
            assert outs[-1] == ref[i].token_ids
        # Each move is on record, step by step and in order (what benchmarks/chaos.py
        # breaks down): the loss noticed, placed again,
        # submitted, the KV brought to the new decode worker, the first resumed token.
        moved = [m for m in llm.move_log if m.lost_worker == victim]
        assert moved and {m.request_id for m in moved} <= {f"resume-{i}" for i in range(4)}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(m.transfer_path for m in moved):
            time.sleep(0.05)  # the transfer results are read after the fact
        for m in moved:
            assert m.resumed and m.tokens_before > 0 and m.decode_worker != victim
            assert m.notice == "liveness" or m.left_at is not None
            assert m.placed_at is not None and m.submitted_at is not None
            assert m.first_token_at is not None and m.last_token_at is not None
            assert m.last_token_at <= m.noticed_at <= m.placed_at <= m.submitted_at
            # The early resume: the new decode worker started the transfer and decode
            # when the Conductor placed the request, and the graph's transfer task
            # collected that (its first token may come before the graph's submission).
            assert m.early is True
            assert m.placed_at <= m.first_token_at
            assert m.transfer_path and m.fetched_blocks is not None
            assert m.recomputed_tokens is not None and m.recomputed_tokens >= m.tokens_before
