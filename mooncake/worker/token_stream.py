"""Token deltas straight from an engine process to the client that streams them.

The Dask path for a delta is engine process -> worker -> scheduler -> client: three
processes and two batched streams between the token and the user. The client instead
listens on a TCP port (``TokenStreamServer``, on the Dask client's event loop) and names
it in each streamed request; the engine process sends the request's deltas there
(``DirectStreams``), one length-prefixed pickle of a list of deltas per step.

The Dask event topic stays the fallback: a delta that cannot be sent directly goes
through the worker as before, and so does every later delta of that request, so the
client never sees them out of order. The request's final output still comes back
through its graph.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_LEN = struct.Struct("<I")
Address = tuple[str, int]

RETRY_AFTER_S = 5.0
"""A client that could not be reached is not tried again for this long."""
SEND_TIMEOUT_S = 1.0
"""A client that does not take a delta within this time is given up (the engine must
never stall on a slow reader)."""


class DirectStreams:
    """(Engine process.) One connection per client address, opened on first use."""

    def __init__(self) -> None:
        self._socks: dict[Address, socket.socket] = {}
        self._down: dict[Address, float] = {}

    def send(self, addr: Address, msgs: list[dict[str, Any]]) -> bool:
        """Send ``msgs`` to ``addr``; False when it could not (use the fallback)."""
        sock = self._socks.get(addr)
        try:
            if sock is None:
                if time.monotonic() - self._down.get(addr, -RETRY_AFTER_S) < RETRY_AFTER_S:
                    return False
                sock = socket.create_connection(addr, timeout=SEND_TIMEOUT_S)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._socks[addr] = sock
            data = pickle.dumps(msgs, protocol=5)
            sock.sendall(_LEN.pack(len(data)) + data)
            return True
        except OSError as e:
            logger.info("token stream to %s:%s unavailable (%s): deltas go through the scheduler", *addr, e)
            self._down[addr] = time.monotonic()
            if sock is not None:
                sock.close()
                self._socks.pop(addr, None)
            return False

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()


class TokenStreamServer:
    """(Client.) Accept engine processes' connections and hand every received list of
    deltas to ``on_msgs`` (called on the event loop the server runs on)."""

    def __init__(self, on_msgs: Callable[[list[dict[str, Any]]], None]) -> None:
        self.on_msgs = on_msgs
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.address: Address | None = None

    async def start(self, host: str) -> Address:
        self._server = await asyncio.start_server(self._serve, host, 0)
        self.address = self._server.sockets[0].getsockname()[:2]
        return self.address

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._writers.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
                msgs = pickle.loads(await reader.readexactly(n))
                try:
                    self.on_msgs(msgs)
                except Exception:  # a consumer's bug must not cut the engine's stream
                    logger.exception("token stream consumer failed")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            if task is not None:
                self._handlers.discard(task)

    async def close(self) -> None:
        """Stop listening and end the open connections (their handlers return)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.close()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
