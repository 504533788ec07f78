"""The client's token stream server tells which unfinished requests a connection carried
when the engine's side closes it, and nothing else (no cluster, no engine: an engine's
``DirectStreams`` in this process)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mooncake.auth import new_secret
from mooncake.worker.token_stream import DirectStreams, TokenStreamServer


class _Server:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.key = new_secret()
        self.got: list[dict[str, Any]] = []
        self.closed: list[list[str]] = []
        self.server = TokenStreamServer(self.got.extend, self.key, self.closed.append)
        self.addr = self.run(self.server.start("127.0.0.1"))

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def wait(self, cond: Any) -> None:
        deadline = time.monotonic() + 10
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cond()


@pytest.fixture
def srv() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.run(s.server.close())
    s.loop.call_soon_threadsafe(s.loop.stop)
    s.thread.join(5)


def delta(rid: str, finished: bool = False) -> dict[str, Any]:
    return {"rid": rid, "tokens": [1], "text": "a", "finished": finished}


def test_closed_mid_request_reports_the_unfinished(srv: _Server) -> None:
    """An engine streams a, b and c; b finishes, the client forgets c (moved or aborted),
    then the engine's process goes (its socket closes): the server reports a alone."""
    engine = DirectStreams()
    assert engine.send(srv.addr, srv.key, [delta("a"), delta("b"), delta("c")])
    assert engine.send(srv.addr, srv.key, [delta("a"), delta("b", finished=True)])
    srv.wait(lambda: len(srv.got) == 5)
    srv.server.forget("c")
    engine.close()
    srv.wait(lambda: srv.closed)
    assert srv.closed == [["a"]]


def test_closed_after_every_request_finished_reports_nothing(srv: _Server) -> None:
    """A connection whose requests all finished closes quietly, and so does every open
    connection when the client's own server closes."""
    done = DirectStreams()
    assert done.send(srv.addr, srv.key, [delta("a"), delta("a", finished=True)])
    running = DirectStreams()
    assert running.send(srv.addr, srv.key, [delta("b")])
    srv.wait(lambda: len(srv.got) == 3)
    done.close()
    time.sleep(0.2)
    srv.run(srv.server.close())
    time.sleep(0.2)
    assert srv.closed == []
    running.close()
