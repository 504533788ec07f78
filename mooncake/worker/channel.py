"""Messages between a worker and its engine process over a Unix socket.

Pickle protocol 5 with large buffers (KV block payloads) sent out of band: a block's
bytes go from its numpy array straight to the socket and land in a buffer the receiver
allocates once, so a block crosses with the socket's copy only, not pickle's as well.
Small buffers stay in the pickle stream (one write instead of many).

Frame: ``<QIQ`` (pickle length, buffer count, bytes of buffers pickled in-band), the
buffer lengths (``<Q`` each), the pickle, then each buffer. The in-band byte count only
feeds the copy counters (``mooncake.kvcache.copies``) of the receiver.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
import threading
from typing import Any

from mooncake.kvcache import copies

_HEAD = struct.Struct("<QIQ")
INBAND_MAX = 64 * 1024
"""Buffers up to this size are pickled in-band."""


class ChannelClosed(EOFError):
    """The other end closed the socket (or died)."""


class Channel:
    """Args: sock: a connected stream socket (one end of a ``socketpair``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    def send(self, obj: Any) -> None:
        """Send one message (thread-safe; returns once the kernel has the bytes)."""
        bufs: list[memoryview] = []
        inband = 0

        def out_of_band(b: pickle.PickleBuffer) -> bool:
            nonlocal inband
            raw = b.raw()
            if raw.nbytes <= INBAND_MAX:
                inband += raw.nbytes
                return True
            bufs.append(raw)
            return False

        data = pickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
        if inband:
            copies.count("channel.pickle", inband)  # into the pickle stream...
            copies.count("channel.send", inband)  # ...which the socket copies again
        head = _HEAD.pack(len(data), len(bufs), inband) + struct.pack(
            f"<{len(bufs)}Q", *(b.nbytes for b in bufs)
        )
        with self._send_lock:
            self.sock.sendall(head + data)
            for b in bufs:
                self.sock.sendall(b)
                copies.count("channel.send", b.nbytes)

    def poll(self, timeout: float) -> bool:
        """Whether a message (or the end) is ready within ``timeout`` seconds."""
        r, _, _ = select.select([self.sock], [], [], timeout)
        return bool(r)

    def recv(self) -> Any:
        """The next message (blocking). Raises ``ChannelClosed`` at the end."""
        n, nbufs, inband = _HEAD.unpack(self._exact(_HEAD.size))
        sizes = struct.unpack(f"<{nbufs}Q", self._exact(8 * nbufs)) if nbufs else ()
        data = self._exact(n)
        bufs = [self._exact(s) for s in sizes]
        if sizes or inband:
            copies.count("channel.recv", sum(sizes) + inband)
        return pickle.loads(data, buffers=bufs)

    def _exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                raise ChannelClosed("engine channel closed")
            got += k
        return buf

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
