"""TCP transfer backend: a dedicated blocking socket per peer, not Dask comms.

Plain blocking ``sendall``/``recv_into`` moves bulk bytes faster than Dask's comms (which
add a serialization layer and an event loop to every message), so the block protocol is a
thin framing over plain sockets (docs/performance.md has the current figures).

A fetch is batched and pipelined. The first request frame asks for ``batch_blocks``
keys; once its response's table shows how large the records are, later frames ask for
about ``batch_bytes`` each, and up to ``FRAMES_AHEAD`` of them are kept in flight (each
sent as the table of an earlier one arrives), so the server streams responses back to
back without ever waiting for a request, and a fetch of a very long prefix never has
megabytes of requests outstanding (a client blocked sending requests while the server
is blocked sending responses would deadlock). Each response's records are received
straight into a pooled buffer, each checked as soon as it has arrived while it is in
cache (``protocol.recv_records``: one compiled call per response, without the GIL); the
objects of a response are then built together (``protocol.check_response``). The check
runs on the receiving thread: the kernel keeps filling the socket buffer meanwhile, and a
second thread would only add GIL handoffs (and a pass over bytes no longer in cache).
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections import deque
from collections.abc import Sequence

import numpy as np

from mooncake import auth
from mooncake.kvcache import copies
from mooncake.store.block_object import BlockObject
from mooncake.transfer import protocol as proto
from mooncake.transfer.base import BufferPool, PathResult, Peer, TransferError
from mooncake.transfer.config import TransferConfig
from mooncake.types import BlockKey

FRAMES_AHEAD = 4
"""Request frames a fetch keeps in flight: enough that the next one is always waiting at
the server when it finishes a response."""


class _Frames:
    """The request frames of one fetch: which keys each asks for, sent a few at a time."""

    def __init__(
        self, keys: Sequence[BlockKey], config: TransferConfig, rids: itertools.count[int]
    ) -> None:
        self.keys = keys
        self.config = config
        self.rids = rids
        self.step = config.batch_blocks
        self.sized = config.batch_bytes == 0  # nothing to learn: every frame is batch_blocks
        self.pos = 0
        self.sent: deque[tuple[int, int, int]] = deque()  # (request id, first key, count)

    def top_up(self, sock: socket.socket) -> None:
        """Send frames until ``FRAMES_AHEAD`` are in flight (one until the size is known)."""
        ahead = FRAMES_AHEAD if self.sized else 1
        out = []
        while self.pos < len(self.keys) and len(self.sent) < ahead:
            count = min(self.step, len(self.keys) - self.pos)
            rid = next(self.rids) & 0xFFFFFFFF
            out.append(proto.encode_request(rid, self.keys[self.pos : self.pos + count]))
            self.sent.append((rid, self.pos, count))
            self.pos += count
        if out:
            sock.sendall(b"".join(out))

    def learn(self, table: np.ndarray) -> None:
        """Size later frames from a response's record lengths (once some block was present)."""
        if self.sized:
            return
        rlen = table["rlen"][table["status"] == proto.STATUS_OK]
        if len(rlen):
            per = max(1, int(rlen.mean()))
            self.step = min(
                proto.MAX_KEYS, max(self.config.batch_blocks, self.config.batch_bytes // per)
            )
            self.sized = True


class TcpBackend:
    """Fetch blocks from a :class:`~mooncake.transfer.server.BlockServer`.

    Args:
        config: timeouts, batch size, socket buffers.
        pool: receive buffers to reuse.
    """

    name = "tcp"

    def __init__(self, config: TransferConfig, pool: BufferPool) -> None:
        self.config = config
        self.pool = pool
        self._idle: dict[tuple[str, int], list[socket.socket]] = {}
        self._lock = threading.Lock()
        self._rids = itertools.count(1)

    def usable(self, peer: Peer) -> bool:
        return peer.tcp is not None

    def close(self) -> None:
        with self._lock:
            for socks in self._idle.values():
                for s in socks:
                    s.close()
            self._idle.clear()

    def _connect(self, addr: tuple[str, int]) -> socket.socket:
        with self._lock:
            socks = self._idle.get(addr)
            if socks:
                return socks.pop()
        try:
            s = socket.create_connection(addr, timeout=self.config.connect_timeout_s)
        except OSError as e:
            raise TransferError(f"tcp: cannot connect to {addr}: {e}") from e
        try:
            auth.client_handshake(
                s, self.config.secret, auth.PURPOSE_BLOCKS, self.config.connect_timeout_s
            )
        except auth.AuthError as e:
            s.close()
            raise TransferError(f"tcp: {addr} refused the cluster secret: {e}") from e
        proto.set_io_timeout(s, self.config.io_timeout_s)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.config.socket_buffer_bytes:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.socket_buffer_bytes)
        return s

    def _park(self, addr: tuple[str, int], s: socket.socket) -> None:
        with self._lock:
            self._idle.setdefault(addr, []).append(s)

    def fetch(self, keys: Sequence[BlockKey], peer: Peer) -> PathResult:
        if peer.tcp is None:
            raise TransferError("tcp: peer has no TCP address")
        addr = peer.tcp
        n = len(keys)
        objects: list[BlockObject | None] = [None] * n
        buffers: list[np.ndarray] = []
        errors: list[str] = []
        sock = self._connect(addr)
        ok = False
        frames = _Frames(keys, self.config, self._rids)
        try:
            head = bytearray(proto.RESP.size)
            frames.top_up(sock)
            while frames.sent:
                rid, start, count = frames.sent.popleft()
                batch = keys[start : start + count]
                proto.recv_exact(sock, head)
                magic, got_rid, got_count, total = proto.RESP.unpack(head)
                if magic != proto.RESP_MAGIC or got_rid != rid or got_count != count:
                    raise TransferError("tcp: malformed response frame")
                table = proto.parse_table(
                    proto.recv_bytes(sock, count * proto.ENTRY.size), count, total
                )
                frames.learn(table)
                frames.top_up(sock)  # before this response's records: the server never waits
                buf = self.pool.take(total)
                buffers.append(buf)
                present = table["status"] == proto.STATUS_OK
                hlens, status = proto.recv_records(
                    sock, buf, table["rlen"][present], proto.present_keys(batch, table)
                )
                copies.count("transfer.recv", total)
                checked, bad = proto.check_response(batch, table, buf, hlens, status)
                objects[start : start + len(batch)] = checked
                errors.extend(f"tcp: block {start + j}: {e}" for j, e in bad)
            ok = True
        except (OSError, TransferError) as e:
            errors.append(f"tcp: {e}")
        finally:
            if ok:
                self._park(addr, sock)
            else:
                sock.close()  # mid-stream state is unknown: never reuse
        result = PathResult(objects, buffers, "; ".join(errors) or None)
        if not ok:
            raise TransferError(result.error or "tcp: failed", partial=result)
        return result


__all__ = ["TcpBackend"]
