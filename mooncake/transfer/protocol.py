"""Wire format of the TCP block protocol (little-endian).

Request (client -> server), one per batch; a client may send many before reading::

    4s magic b"MKQ1" | u32 request id | u32 n keys | u32 flags | n x 16-byte keys

flags: 0 plain; ``FLAG_RDMA_HELLO`` (no keys; the client's queue pair address follows);
``FLAG_RDMA_READ`` (payloads are staged for RDMA READ instead of sent, see
``mooncake.transfer.rdma``).

Response (server -> client), one per request, in request order::

    4s magic b"MKR2" | u32 request id | u32 n | u32 total header bytes | u64 total payload bytes
    n x (u8 status (0 ok, 1 missing) | 3 pad | u32 header length | u64 payload length)
    all headers, back to back | all payloads, back to back

One response is one ``sendmsg`` on the server (scatter-gather straight from the store's
memory map) and two ``recv_into`` on the client (table + headers, then every payload
into one pooled buffer): per-block syscalls and Python work would otherwise dominate
small blocks. Header and payload are the block object exactly as stored (see
``mooncake.store.block_object``); the receiver checks both before using them.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from typing import Any

from mooncake.transfer.base import TransferError
from mooncake.types import BlockKey

REQ_MAGIC = b"MKQ1"
RESP_MAGIC = b"MKR2"
REQ = struct.Struct("<4sIII")
RESP = struct.Struct("<4sIIIQ")
ENTRY = struct.Struct("<B3xIQ")
FLAG_RDMA_HELLO = 1
FLAG_RDMA_READ = 2
RDMA_REFUSED = b"MKNO"
STATUS_OK = 0
STATUS_MISSING = 1
KEY_BYTES = 16
MAX_KEYS = 1 << 16
MAX_HEADER = 1 << 20
IOV_MAX = 512  # below Linux's 1024 iovecs per sendmsg


def encode_request(rid: int, keys: Sequence[BlockKey], flags: int = 0) -> bytes:
    return REQ.pack(REQ_MAGIC, rid, len(keys), flags) + b"".join(keys)


def recv_exact(sock: socket.socket, buf: Any) -> None:
    """Fill ``buf`` from ``sock``; raises :class:`TransferError` on EOF."""
    view = memoryview(buf).cast("B")
    got, n = 0, len(view)
    while got < n:
        r = sock.recv_into(view[got:], n - got)
        if r == 0:
            raise TransferError(f"connection closed after {got} of {n} bytes")
        got += r


def recv_bytes(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    recv_exact(sock, buf)
    return buf


def send_all(sock: socket.socket, parts: Sequence[Any]) -> None:
    """``sendmsg`` all of ``parts`` (scatter-gather, no concatenation copy)."""
    views = [memoryview(p).cast("B") for p in parts]
    while views:
        sent = sock.sendmsg(views[:IOV_MAX])
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


__all__ = [
    "ENTRY",
    "FLAG_RDMA_HELLO",
    "FLAG_RDMA_READ",
    "KEY_BYTES",
    "MAX_HEADER",
    "MAX_KEYS",
    "RDMA_REFUSED",
    "REQ",
    "REQ_MAGIC",
    "RESP",
    "RESP_MAGIC",
    "STATUS_MISSING",
    "STATUS_OK",
    "encode_request",
    "recv_bytes",
    "recv_exact",
    "send_all",
]
