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

A missing entry has both lengths 0; a table whose lengths do not add up to the frame's
totals, or with any other status, is a malformed response (the connection is dropped).

One response is one ``sendmsg`` on the server (scatter-gather straight from the store's
memory map) and two ``recv_into`` on the client (table + headers, then every payload
into one pooled buffer): per-block syscalls and Python work would otherwise dominate
small blocks. For the same reason the receiver reads the table as one numpy array and
checks a response's blocks together (:func:`check_response`). Header and payload are
the block object exactly as stored (see ``mooncake.store.block_object``); the receiver
checks both before using them.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from mooncake.store.block_object import (
    PAGE_BYTES,
    BlockObject,
    CorruptBlockError,
    objects_from_packed,
    sum64_from_pages,
    sum64_pages,
)
from mooncake.transfer.base import TransferError
from mooncake.types import BlockKey

REQ_MAGIC = b"MKQ1"
RESP_MAGIC = b"MKR2"
REQ = struct.Struct("<4sIII")
RESP = struct.Struct("<4sIIIQ")
ENTRY = struct.Struct("<B3xIQ")
# ENTRY, as a numpy record: a whole table is parsed in one call.
TABLE = np.dtype([("status", "u1"), ("pad", "V3"), ("hlen", "<u4"), ("plen", "<u8")])
FLAG_RDMA_HELLO = 1
FLAG_RDMA_READ = 2
RDMA_REFUSED = b"MKNO"
STATUS_OK = 0
STATUS_MISSING = 1
KEY_BYTES = 16
MAX_KEYS = 1 << 16
MAX_HEADER = 1 << 20
IOV_MAX = 512  # below Linux's 1024 iovecs per sendmsg
SUM_CHUNK = 64 * PAGE_BYTES  # payload bytes received, then summed while still in L2


def encode_request(rid: int, keys: Sequence[BlockKey], flags: int = 0) -> bytes:
    return REQ.pack(REQ_MAGIC, rid, len(keys), flags) + b"".join(keys)


def parse_table(meta: Any, count: int, hlen: int, plen: int) -> np.ndarray:
    """The response table (``[count]`` of :data:`TABLE`) at the start of ``meta``, checked
    against the frame's header and payload totals; raises :class:`TransferError`."""
    table = np.frombuffer(meta, dtype=TABLE, count=count)
    missing = table[table["status"] != STATUS_OK]
    carries_bytes = missing["hlen"].any() or missing["plen"].any()
    if carries_bytes or (missing["status"] != STATUS_MISSING).any():
        raise TransferError("response table has a bad status or a missing block with bytes")
    if int(table["hlen"].sum()) != hlen or int(table["plen"].sum()) != plen:
        raise TransferError("response table does not add up")
    return table


def recv_payloads(sock: socket.socket, buf: np.ndarray, table: np.ndarray) -> np.ndarray | None:
    """Receive a response's payloads into ``buf``; when they share a page-multiple size,
    also their ``sum64`` checksums, summed :data:`SUM_CHUNK` bytes at a time right after
    each piece arrives (one pass over cache-hot bytes instead of another over memory).

    Returns the sums of the present blocks in order, or ``None`` (payloads of mixed or
    odd sizes: :func:`check_response` sums them)."""
    sizes = table["plen"][table["status"] == STATUS_OK]
    size = int(sizes[0]) if len(sizes) else 0
    if size == 0 or size % PAGE_BYTES or (sizes != size).any():
        recv_exact(sock, buf)
        return None
    pages = np.empty(buf.nbytes // PAGE_BYTES, dtype=np.uint64)
    for off in range(0, buf.nbytes, SUM_CHUNK):
        piece = buf[off : off + SUM_CHUNK]
        recv_exact(sock, piece)
        sum64_pages(piece, pages[off // PAGE_BYTES : (off + piece.nbytes) // PAGE_BYTES])
    return sum64_from_pages(pages, size)


def check_response(keys: Sequence[BlockKey], table: np.ndarray, headers: bytes, payload: np.ndarray,
                   sums: np.ndarray | None = None) -> tuple[list[BlockObject | None], list[tuple[int, CorruptBlockError]]]:  # fmt: skip
    """Check every block of one response.

    ``sums``: the present blocks' payload ``sum64`` from :func:`recv_payloads`, if it had
    them. Returns the checked objects, index-aligned with ``keys`` (each viewing
    ``payload``, which it keeps alive; ``None`` where the server did not have the block
    or it failed a check), and ``(index, error)`` for each block that failed (a bad
    header or payload, or a header naming another key).
    """
    hlens: list[int] = table["hlen"].tolist()
    sizes: list[int] = table["plen"].tolist()
    ok = table["status"] == STATUS_OK
    if ok.all():
        idx = None
        h0 = hlens[0] if hlens else 0
        if h0 and hlens.count(h0) == len(hlens):
            total = len(headers)
            parts = list(map(headers.__getitem__, map(slice, range(0, total, h0), range(h0, total + 1, h0))))
        else:
            ends = np.cumsum(hlens).tolist()
            parts = [headers[e - h : e] for h, e in zip(hlens, ends)]
        checked = objects_from_packed(parts, sizes, payload, keys, owner=payload, sums=sums)
    else:  # some blocks missing (their lengths are 0): check the others, then re-align
        idx = np.flatnonzero(ok).tolist()
        ends = np.cumsum(hlens).tolist()
        checked = objects_from_packed([headers[ends[i] - hlens[i] : ends[i]] for i in idx], [sizes[i] for i in idx],
                                      payload, [keys[i] for i in idx], owner=payload, sums=sums)  # fmt: skip
    errors = [(j, r) for j, r in enumerate(checked) if isinstance(r, CorruptBlockError)]
    if idx is None and not errors:
        return cast(list[BlockObject | None], checked), []
    out: list[BlockObject | None] = [None] * len(keys)
    at = range(len(keys)) if idx is None else idx
    for i, res in zip(at, checked):
        if isinstance(res, BlockObject):
            out[i] = res
    return out, [(at[j], e) for j, e in errors]


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
    """``sendmsg`` all of ``parts`` (byte buffers; scatter-gather, no concatenation copy).

    A blocking socket takes a response in one call; the per-part bookkeeping only runs
    when it did not (a timeout socket, a signal, more parts than one call takes)."""
    if len(parts) <= IOV_MAX:
        sent = sock.sendmsg(parts)
        if sent == sum(map(len, parts)):
            return
    else:
        sent = 0
    views = [memoryview(p).cast("B") for p in parts]
    while views:
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]
            sent = 0
        if views:
            sent = sock.sendmsg(views[:IOV_MAX])


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
    "TABLE",
    "check_response",
    "encode_request",
    "parse_table",
    "recv_bytes",
    "recv_exact",
    "recv_payloads",
    "send_all",
]
