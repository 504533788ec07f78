"""Token deltas straight from an engine process to the client that streams them.

The Dask path for a delta is engine process -> worker -> scheduler -> client: three
processes and two batched streams between the token and the user. The client instead
listens on a TCP port (``TokenStreamServer``, on the Dask client's event loop) and names
it in each streamed request; the engine process sends the request's deltas there
(``DirectStreams``), one length-prefixed frame per step: a msgpack list of
:class:`TokenDelta` (msgspec), decoded against that type, so a frame is data, never code.

The port is reachable by any local process (and, across hosts, by the network), so a
connection carries nothing before the engine proves it holds the client's stream key
(:mod:`mooncake.auth`, mutual HMAC challenge-response). The key is made by the client,
travels to the workers inside each request's spec over Dask's (TLS) comms, and never
crosses this socket.

A connection that the engine's side closes while requests it carried have not finished
is reported (``on_closed``): the engine process dies with its worker, so this is the
client's first sign of a lost worker, well before the scheduler's. It is only a sign
(an engine also drops a connection to a client that does not keep up and goes on
through the fallback): the client checks that the worker is gone before it acts.

The Dask event topic stays the fallback: a delta that cannot be sent directly goes
through the worker as before, and so does every later delta of that request, so the
client never sees them out of order. The request's final output still comes back
through its graph.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import msgspec

from mooncake import auth

logger = logging.getLogger(__name__)

_LEN = struct.Struct("<I")
Address = tuple[str, int]

RETRY_AFTER_S = 5.0
"""A client that could not be reached is not tried again for this long."""
SEND_TIMEOUT_S = 1.0
"""A client that does not take a delta within this time is given up (the engine must
never stall on a slow reader)."""
MAX_FRAME_BYTES = 64 * 1024**2
"""A frame announcing more is a broken or hostile peer: the connection is dropped."""


class TokenDelta(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """What one engine step adds to one request (the dict ``EngineLoop._delta`` builds)."""

    rid: str
    tokens: list[int]
    text: str
    finished: bool
    cached: int = 0
    prompt_len: int = 0
    logprobs: list[list[tuple[int, float]]] | None = None
    """Per new token: (token id, logprob) pairs."""
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    final_text: str | None = None

    def to_msg(self) -> dict[str, Any]:
        """The dict form the client's consumers read (absent fields left out)."""
        return {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not None}


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[TokenDelta])


class DirectStreams:
    """(Engine process.) One connection per client address, opened on first use."""

    def __init__(self) -> None:
        self._socks: dict[tuple[Address, bytes], socket.socket] = {}
        self._down: dict[tuple[Address, bytes], float] = {}

    def send(self, addr: Address, key: bytes, msgs: list[dict[str, Any]]) -> bool:
        """Send ``msgs`` to ``addr``, authenticated with the client's ``key``; False when
        it could not (use the fallback)."""
        at = (addr, key)
        sock = self._socks.get(at)
        try:
            if sock is None:
                if time.monotonic() - self._down.get(at, -RETRY_AFTER_S) < RETRY_AFTER_S:
                    return False
                sock = socket.create_connection(addr, timeout=SEND_TIMEOUT_S)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                auth.client_handshake(sock, key, auth.PURPOSE_TOKENS, SEND_TIMEOUT_S)
                sock.settimeout(SEND_TIMEOUT_S)
                self._socks[at] = sock
            data = _encoder.encode(msgs)
            sock.sendall(_LEN.pack(len(data)) + data)
            return True
        except (OSError, TypeError) as e:  # AuthError is an OSError
            logger.info(
                "token stream to %s:%s unavailable (%s): deltas go through the scheduler", *addr, e
            )
            self._down[at] = time.monotonic()
            if sock is not None:
                sock.close()
                self._socks.pop(at, None)
            return False

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()


class TokenStreamServer:
    """(Client.) Accept engine processes' connections and hand every received list of
    deltas to ``on_msgs`` (called on the event loop the server runs on).

    Args:
        on_msgs: the consumer.
        key: the secret engines must prove (:func:`mooncake.auth.new_secret`).
        on_closed: told which unfinished requests a connection the engine closed
            carried (on the same loop).
    """

    def __init__(
        self,
        on_msgs: Callable[[list[dict[str, Any]]], None],
        key: bytes,
        on_closed: Callable[[list[str]], None] | None = None,
    ) -> None:
        auth.check_secret(key, "key")
        self.on_msgs = on_msgs
        self.on_closed = on_closed
        """Called with the request ids whose deltas a connection carried, none of them
        finished, when the engine's side closes it (not when this server closes)."""
        self.key = key
        self._open: dict[int, set[str]] = {}
        """Per connection: requests that sent a delta on it and not their last one."""
        self._ids = itertools.count()
        self._closing = False
        self.refused = 0
        """Connections cut off: no proof of the key, or a malformed frame."""
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
        conn = next(self._ids)
        running = self._open[conn] = set()
        try:
            await auth.server_handshake_async(reader, writer, self.key, auth.PURPOSE_TOKENS)
            while True:
                (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
                if n > MAX_FRAME_BYTES:
                    raise ValueError(f"frame of {n} bytes")
                deltas = _decoder.decode(await reader.readexactly(n))
                for d in deltas:
                    if d.finished:
                        running.discard(d.rid)
                    else:
                        running.add(d.rid)
                try:
                    self.on_msgs([d.to_msg() for d in deltas])
                except Exception:  # a consumer's bug must not cut the engine's stream
                    logger.exception("token stream consumer failed")
        except auth.AuthError as e:
            self.refused += 1
            logger.warning("token stream: refused a connection: %s", e)
        except (msgspec.DecodeError, ValueError) as e:
            self.refused += 1
            logger.warning("token stream: dropped a connection that sent a bad frame: %s", e)
        except (asyncio.IncompleteReadError, ConnectionError):
            # The engine's side closed it: mid-request, its process may have died.
            if running and self.on_closed is not None and not self._closing:
                try:
                    self.on_closed(sorted(running))
                except Exception:
                    logger.exception("token stream close consumer failed")
        finally:
            self._open.pop(conn, None)
            writer.close()
            self._writers.discard(writer)
            if task is not None:
                self._handlers.discard(task)

    def forget(self, rid: str) -> None:
        """The client is done with ``rid`` (finished, aborted or moved): a later close
        of its connection is no news about it. (Any thread: set operations only.)"""
        for running in list(self._open.values()):
            running.discard(rid)

    async def close(self) -> None:
        """Stop listening and end the open connections (their handlers return)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.close()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
