"""The worker's engine process (``EngineClient``): a real child process with the tiny
checkpoint — same outputs as the in-process engine, streamed deltas, abort, bad config,
and the process never outlives its worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.sampling_params import SamplingParams
from mooncake.worker.engine_client import EngineClient, EngineProcessError
from mooncake.worker.engine_loop import AddRequest, RequestAborted, Watch

SPAWNS = pytest.mark.slow
"""Tests that start engine processes of their own (2-4 s each: torch is imported and the
model loaded in every child) run in the full suite, not in ci/test-fast; the module's
shared engine covers the process path there."""

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
PROMPTS = [list(range(3, 40)), list(range(50, 53)), [7] * 70]


@pytest.fixture(scope="module")
def engine(tiny_llama):
    deltas: list[tuple[str, list[dict[str, Any]]]] = []
    client = EngineClient(
        EngineConfig(model=str(tiny_llama), num_blocks=256),
        lambda topic, msgs: deltas.append((topic, msgs)),
    )
    client.start()
    client.deltas = deltas  # type: ignore[attr-defined]
    yield client
    client.stop()
    assert client.proc.poll() is not None


def _wait_gone(pid: int, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_engine_runs_in_a_child_process_with_the_same_outputs(engine, tiny_llama):
    assert engine.info["pid"] == engine.proc.pid != os.getpid()
    assert engine.info["block_size"] == 16 and engine.info["kv_capacity_tokens"] == 256 * 16
    futs = [
        engine.add(AddRequest(f"r{i}", p, GREEDY, Watch(f"topic-{i}")))
        for i, p in enumerate(PROMPTS)
    ]
    outs = [f.result(60) for f in futs]
    ref = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256)).generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outs] == [r.token_ids for r in ref]
    # Every token was streamed under its topic, the last delta says finished.
    for i, out in enumerate(outs):
        msgs = [m for topic, ms in engine.deltas if topic == f"topic-{i}" for m in ms]
        assert [t for m in msgs for t in m["tokens"]] == out.token_ids
        assert msgs[-1]["finished"] and not any(m["finished"] for m in msgs[:-1])
        assert len(engine.token_times.pop(f"r{i}")) == len(out.token_ids)
    stats = engine.call("stats").result(10)
    assert stats["num_generated_tokens"] >= 3 * 12 and stats["running"] == 0


@SPAWNS
def test_prefix_lookup_export_and_import_across_processes(engine, tiny_llama):
    prompt = list(range(100, 164))  # 4 full blocks
    engine.add(
        AddRequest(
            "held", prompt, SamplingParams(temperature=0.0, max_tokens=1), Watch(None), keep_kv=True
        )
    ).result(60)
    assert engine.call("match_prefix", prompt, None).result(10) == 64
    assert engine.call("match_prefix", prompt, "another tenant").result(10) == 0
    export = engine.call("export_kv", "held").result(10)
    assert export.num_tokens == 64 and len(export.blocks) == 4
    # A second engine process takes the blocks in and finds the prefix cached.
    other = EngineClient(EngineConfig(model=str(tiny_llama), num_blocks=64), lambda *a: None)
    try:
        other.start()
        assert other.call("import_blocks", export.blocks).result(30) == 4
        assert other.call("match_prefix", prompt, None).result(10) == 64
    finally:
        other.stop()


def test_bad_input_raises_in_the_caller_and_the_engine_goes_on(engine):
    with pytest.raises(ValueError, match="prompt"):
        engine.add(AddRequest("bad", [10**9], GREEDY, Watch(None)))
    assert engine.add(AddRequest("fine", [5, 6, 7], GREEDY, Watch(None))).result(60).finished


def test_abort_fails_the_waiting_request_and_refuses_a_late_add(engine):
    long = SamplingParams(temperature=0.0, max_tokens=10_000, ignore_eos=True)
    fut = engine.add(AddRequest("long", [1, 2, 3], long, Watch(None)))
    assert engine.call("abort", "long").result(10)
    with pytest.raises(RequestAborted):
        fut.result(30)
    with pytest.raises(RequestAborted):
        engine.add(AddRequest("long", [1, 2, 3], GREEDY, Watch(None)))


@SPAWNS
def test_unknown_model_fails_start_with_value_error(tmp_path):
    client = EngineClient(EngineConfig(model=str(tmp_path / "missing")), lambda *a: None)
    with pytest.raises(ValueError):
        client.start()
    assert client.proc.poll() is not None


@SPAWNS
def test_a_killed_engine_fails_pending_work(tiny_llama):
    client = EngineClient(EngineConfig(model=str(tiny_llama), num_blocks=64), lambda *a: None)
    client.start()
    fut = client.add(
        AddRequest(
            "r",
            [1, 2, 3],
            SamplingParams(temperature=0.0, max_tokens=100_000, ignore_eos=True),
            Watch(None),
        )
    )
    os.kill(client.proc.pid, signal.SIGKILL)
    with pytest.raises(EngineProcessError, match="exited"):
        fut.result(30)
    with pytest.raises(EngineProcessError):
        client.call("stats").result(5)
    client.stop()


@SPAWNS
def test_engine_process_dies_with_its_worker(tiny_llama, tmp_path):
    """kill -9 of the process that started the engine takes the engine with it."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from mooncake.config import EngineConfig
        from mooncake.worker.engine_client import EngineClient
        c = EngineClient(EngineConfig(model={str(tiny_llama)!r}, num_blocks=64), lambda *a: None)
        c.start()
        print(c.proc.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        engine_pid = int(parent.stdout.readline())
        os.kill(engine_pid, 0)  # running
        parent.kill()
        parent.wait()
        assert _wait_gone(engine_pid)
    finally:
        parent.kill()


def test_deltas_go_straight_to_the_client_stream_or_fall_back_to_the_worker(engine):
    """With a reachable stream address and the right key the engine process sends deltas
    there (not through the worker); with a wrong key, or an unreachable address, they come
    through the worker's emit, in order, and the stream receives nothing."""
    import asyncio
    import socket
    import threading

    from mooncake.auth import new_secret
    from mooncake.worker.token_stream import TokenStreamServer

    got: list[dict[str, Any]] = []
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    key = new_secret()
    server = TokenStreamServer(got.extend, key)
    addr = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1"), loop).result(10)
    try:
        before = len(engine.deltas)
        out = engine.add(
            AddRequest("direct", [4, 5, 6], GREEDY, Watch("topic-direct", addr, key))
        ).result(60)
        deadline = time.monotonic() + 10
        while not (got and got[-1]["finished"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [t for m in got for t in m["tokens"]] == out.token_ids
        assert not [1 for topic, _ in engine.deltas[before:] if topic == "topic-direct"]
        n = len(got)
        out = engine.add(
            AddRequest("wrong-key", [4, 5, 6], GREEDY, Watch("topic-wrong", addr, new_secret()))
        ).result(60)
        msgs = [m for topic, ms in engine.deltas if topic == "topic-wrong" for m in ms]
        assert [t for m in msgs for t in m["tokens"]] == out.token_ids
        assert len(got) == n and server.refused == 1
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[:2]
    s.close()  # nobody listens there
    out = engine.add(
        AddRequest("fallback", [4, 5, 6], GREEDY, Watch("topic-fallback", dead, key))
    ).result(60)
    msgs = [m for topic, ms in engine.deltas if topic == "topic-fallback" for m in ms]
    assert [t for m in msgs for t in m["tokens"]] == out.token_ids
