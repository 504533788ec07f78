"""The client's liveness checks without a cluster: whether a worker still listens, and
what a token stream closing mid-request leads to (the mixin over a stand-in LLM)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from mooncake import client_liveness
from mooncake.client_liveness import LivenessMixin, still_listens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_still_listens() -> None:
    """A listening port answers True, a closed one False (what a killed worker leaves),
    and an address that is not TCP has no verdict."""

    async def main() -> tuple[bool | None, bool | None, bool | None]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        alive = await still_listens(f"tls://127.0.0.1:{port}")
        server.close()
        await server.wait_closed()
        dead = await still_listens(f"tcp://127.0.0.1:{free_port()}")
        other = await still_listens("inproc://127.0.0.1/1/2")
        return alive, dead, other

    assert asyncio.run(main()) == (True, False, None)


class _LLM(LivenessMixin):
    def __init__(self, placed: dict[str, set[str]]) -> None:
        self.workers = {w: {} for ws in placed.values() for w in ws}
        self._lock = threading.Lock()
        self._gone: set[str] = set()
        self._dead: set[str] = set()
        self._probes: set[asyncio.Task[None]] = set()
        self._placed = placed
        self._left_at: dict[str, float] = {}
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._sinks = {rid: (loop, self.queue) for rid in placed}
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._watching = True
        self._exit_poll: asyncio.Task[None] | None = None
        self.client = _Client()  # type: ignore[assignment]


class _Client:
    """Stands in for the Dask client: every watch call breaks at once."""

    def __init__(self) -> None:
        self.calls = 0

    def rpc(self, addr: str) -> _Client:
        return self

    async def mooncake_watch(self, seconds: float) -> bool:
        self.calls += 1
        await asyncio.sleep(0.01)
        raise OSError("connection closed")


async def drain(q: asyncio.Queue[Any]) -> list[Any]:
    await asyncio.sleep(0.05)  # the posts land on this loop
    got = []
    while not q.empty():
        got.append(q.get_nowait())
    return got


def test_stream_close_moves_only_requests_of_a_dead_worker() -> None:
    """r1 runs on P and the dead worker D (its port refuses), r2 on P and the live worker
    L. The streams of both close: D is marked dead and gone (placements exclude it), r1's
    stream is told D was lost, noticed by the stream; L is left alone (a stream closed
    for another reason must not move a request), and P (listening too) is not reported."""

    async def main() -> tuple[_LLM, list[Any]]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        live = f"tcp://127.0.0.1:{port}"
        dead = f"tcp://127.0.0.1:{free_port()}"
        llm = _LLM({"r1": {live, dead}, "r2": {live}})
        llm._on_stream_closed(["r1", "r2", "unknown"])
        await asyncio.wait(list(llm._probes), timeout=5)
        await asyncio.sleep(0.05)  # the posts land on this loop
        got = []
        while not llm.queue.empty():
            got.append(llm.queue.get_nowait())
        server.close()
        await server.wait_closed()
        return llm, [(k, w == dead, n) for k, w, n in got] + [llm._dead == {dead}]

    llm, got = asyncio.run(main())
    assert got == [("lost", True, "stream"), True]
    assert len(llm._gone) == 1 and len(llm.workers) == 1 and len(llm._left_at) == 1


def test_watch_breaking_on_a_dead_worker_tells_its_requests() -> None:
    """r1 runs on W, whose port refuses connections; its watch call breaks: W is gone
    and dead (placements exclude it), r1's stream is told it was lost, noticed by the
    watch, and the watch ends."""

    async def main() -> tuple[_LLM, list[Any], str]:
        dead = f"tcp://127.0.0.1:{free_port()}"
        llm = _LLM({"r1": {dead}})
        llm._watch({dead})
        await asyncio.wait(list(llm._watches.values()), timeout=5)
        return llm, await drain(llm.queue), dead

    llm, got, dead = asyncio.run(main())
    assert got == [("lost", dead, "watch")]
    assert llm._dead == {dead} and dead in llm._gone and not llm._watches


def test_watch_breaking_on_a_live_worker_is_renewed(monkeypatch: pytest.MonkeyPatch) -> None:
    """W still listens but its watch calls keep breaking (a connection closed for some
    other reason): nothing is reported, W is not marked gone, the watch is made again,
    and closing the client ends it."""
    monkeypatch.setattr(client_liveness, "LIVENESS_INTERVAL_S", 0.01)

    async def main() -> tuple[_LLM, list[Any], int]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        live = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        llm = _LLM({"r1": {live}})
        llm._watch({live})
        llm._watch({live})  # once per worker
        assert len(llm._watches) == 1
        await asyncio.sleep(0.3)
        await llm._stop_watches()
        server.close()
        await server.wait_closed()
        return llm, await drain(llm.queue), llm.client.calls  # type: ignore[attr-defined]

    llm, got, calls = asyncio.run(main())
    assert got == [] and not llm._gone and not llm._dead and not llm._watches
    assert calls >= 2


def test_process_ended() -> None:
    """This process is running; a child killed with SIGKILL has ended both as a zombie
    (not yet reaped) and once reaped (its pid gone from /proc)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mooncake.client_liveness import process_ended

    assert process_ended(os.getpid()) is False
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_ended(child.pid) is False
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process_ended(child.pid) is False and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_ended(child.pid) is True  # a zombie until waited for
    finally:
        child.kill()
        child.wait(10)
    assert process_ended(child.pid) is True


class _SilentClient:
    """Stands in for the Dask client of a host whose link went down: a watch call is
    never answered and never breaks."""

    def __init__(self) -> None:
        self.calls = 0

    def rpc(self, addr: str) -> _SilentClient:
        return self

    async def mooncake_watch(self, seconds: float) -> bool:
        self.calls += 1
        await asyncio.sleep(3600)
        return True


def _fast_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_liveness, "WATCH_S", 0.05)
    monkeypatch.setattr(client_liveness, "WATCH_GRACE_S", 0.05)
    monkeypatch.setattr(client_liveness, "UNREACHABLE_S", 0.2)
    monkeypatch.setattr(client_liveness, "PROBE_TIMEOUT_S", 0.02)
    monkeypatch.setattr(client_liveness, "REVIVE_S", 0.05)


def test_silent_worker_is_gone_within_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """r1 runs on W, on another host whose link went down: W's watch is never answered
    and its address neither accepts nor refuses a connection. Within WATCH_S +
    WATCH_GRACE_S + UNREACHABLE_S (plus a probe) W is gone and dead, and r1's stream is
    told it was lost, noticed by the watch (not after the scheduler's worker-ttl)."""
    _fast_deadlines(monkeypatch)
    listens: list[bool | None] = [None]

    async def unreachable(address: str, timeout: float = 0.0) -> bool | None:
        await asyncio.sleep(0.01)
        return listens[0]

    monkeypatch.setattr(client_liveness, "still_listens", unreachable)

    async def main() -> tuple[_LLM, list[Any], float, bool]:
        w = "tcp://10.255.0.1:4000"
        llm = _LLM({"r1": {w}})
        llm.client = _SilentClient()  # type: ignore[assignment]

        async def live() -> set[str]:
            return {w}

        llm._live_workers = live  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        llm._watch({w})
        await asyncio.wait(list(llm._watches.values()), timeout=5)
        took = loop.time() - t0
        got = await drain(llm.queue)
        gone = w in llm._gone and llm._dead == {w}
        # Its link comes back while the scheduler still has it: it is known again.
        listens[0] = True
        await asyncio.wait(list(llm._probes), timeout=5)
        await llm._stop_watches()
        return llm, got, took, gone

    llm, got, took, gone = asyncio.run(main())
    assert [(k, n) for k, _, n in got] == [("lost", "watch")] and gone
    assert 0.3 <= took < 1.5
    assert not llm._gone and not llm._dead and llm.workers  # revived


def test_watch_late_then_answering_is_not_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """W's watch is late (its loop was busy) but W's port accepts a connection: it is
    alive, nothing is reported, and it is watched again."""
    _fast_deadlines(monkeypatch)

    async def main() -> tuple[_LLM, list[Any], int]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        live = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        llm = _LLM({"r1": {live}})
        llm.client = _SilentClient()  # type: ignore[assignment]
        monkeypatch.setattr(client_liveness, "LIVENESS_INTERVAL_S", 0.01)
        llm._watch({live})
        await asyncio.sleep(0.6)
        await llm._stop_watches()
        server.close()
        await server.wait_closed()
        return llm, await drain(llm.queue), llm.client.calls  # type: ignore[attr-defined]

    llm, got, calls = asyncio.run(main())
    assert got == [] and not llm._gone and not llm._dead
    assert calls >= 2


def test_exit_of_a_same_host_worker_is_noticed_before_its_connections_break() -> None:
    """r1 runs on W, a process of this host whose watch never breaks (as in the tens of
    ms a killed process's memory is torn down before its sockets close): killed with
    SIGKILL, it is found exiting by the /proc poll within a few EXIT_POLL_S, and r1's
    stream is told, noticed by its exit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    async def main() -> tuple[list[Any], float]:
        w = "tcp://127.0.0.1:1"
        llm = _LLM({"r1": {w}})
        llm.client = _SilentClient()  # type: ignore[assignment]
        llm.workers[w] = {"worker_pid": child.pid, "process_ns": client_liveness._own_ns()}
        llm._watch({w})
        assert llm._exit_poll is not None
        await asyncio.sleep(0.05)
        assert llm.queue.empty()  # alive: nothing reported
        t0 = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        got = await asyncio.wait_for(llm.queue.get(), 5)
        took = time.monotonic() - t0
        await llm._stop_watches()
        return [got], took

    try:
        got, took = asyncio.run(main())
    finally:
        child.kill()
        child.wait(10)
    assert [(k, n) for k, _, n in got] == [("lost", "exit")]
    assert took < 0.5
