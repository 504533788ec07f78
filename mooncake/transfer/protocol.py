"""Wire format of the TCP block protocol, version 3 (little-endian).

Request (client -> server), one per batch; a client may send many before reading::

    4s magic b"MKQ1" | u32 request id | u32 n keys | u32 flags | n x 16-byte keys

flags: 0 plain; ``FLAG_RDMA_HELLO`` (no keys; the client's queue pair address follows);
``FLAG_RDMA_READ`` (records are staged for RDMA READ instead of sent, see
``mooncake.transfer.rdma``).

Response (server -> client), one per request, in request order::

    4s magic b"MKR3" | u32 request id | u32 n | u64 total record bytes
    n x (u8 status (0 ok, 1 missing) | 7 pad | u64 record length)
    all records, back to back

A record is the block exactly as its tier stores it (header, padding, payload at a
64-byte aligned offset: ``mooncake.store.records``). A missing entry has length 0; a
table whose lengths do not add up to the frame's total, or with any other status, is a
malformed response (the connection is dropped). Version 2 (``MKR2``) sent headers and
payloads as two sections; a peer speaking it is refused by the magic.

One response is one ``sendmsg`` on the server (scatter-gather straight from the store's
memory map, one iovec per block) and, on the client, one ``recv_into`` of the table and
one call that receives every record into one pooled buffer and checks each one as soon
as it has arrived (:func:`recv_records`: compiled, without the GIL; a numpy twin where no
compiler is present). Per-block syscalls and Python work would otherwise dominate small
blocks. The receiver checks every header and payload before using them.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from mooncake.store.block_object import BlockObject, CorruptBlockError
from mooncake.store.native import records_lib
from mooncake.store.records import check_records, objects_from_records
from mooncake.transfer.base import TransferError
from mooncake.types import BlockKey

REQ_MAGIC = b"MKQ1"
RESP_MAGIC = b"MKR3"
REQ = struct.Struct("<4sIII")
RESP = struct.Struct("<4sIIQ")
ENTRY = struct.Struct("<B7xQ")
# ENTRY, as a numpy record: a whole table is parsed in one call.
TABLE = np.dtype([("status", "u1"), ("pad", "V7"), ("rlen", "<u8")])
FLAG_RDMA_HELLO = 1
FLAG_RDMA_READ = 2
RDMA_REFUSED = b"MKNO"
STATUS_OK = 0
STATUS_MISSING = 1
KEY_BYTES = 16
MAX_KEYS = 1 << 16
IOV_MAX = 512  # below Linux's 1024 iovecs per sendmsg
# Bytes per recv. Records are checked while in cache: 1 MiB is L2-sized here and well
# inside L3, and between hosts (veth, a NIC) receives that size take markedly less system
# time per byte than 64 KiB ones (fewer calls and wakeups for the same copy;
# benchmarks/store_bench.py's "raw socket, 64 KiB recv" row shows the gap on a bare
# socket pair).
RECV_CHUNK = 1024 * 1024


def encode_request(rid: int, keys: Sequence[BlockKey], flags: int = 0) -> bytes:
    return REQ.pack(REQ_MAGIC, rid, len(keys), flags) + b"".join(keys)


def parse_table(meta: Any, count: int, total: int) -> np.ndarray:
    """The response table (``[count]`` of :data:`TABLE`) at the start of ``meta``, checked
    against the frame's total record bytes; raises :class:`TransferError`."""
    table = np.frombuffer(meta, dtype=TABLE, count=count)
    missing = table[table["status"] != STATUS_OK]
    if missing["rlen"].any() or (missing["status"] != STATUS_MISSING).any():
        raise TransferError("response table has a bad status or a missing block with bytes")
    if int(table["rlen"].sum()) != total:
        raise TransferError("response table does not add up")
    return table


def recv_records(sock: socket.socket, buf: np.ndarray, rlens: np.ndarray,
                 keys: bytes | None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Receive records back to back into ``buf`` and check each (framing, payload length,
    key, ``sum64``: :func:`mooncake.store.records.check_records`) as soon as it has
    arrived, while its bytes are in cache. The compiled path does both in one call
    without the GIL; the fallback receives, then checks.

    Args:
        buf: ``[sum(rlens)]`` uint8, written.
        rlens: ``[n]`` uint64 record lengths.
        keys: ``n`` x 16 bytes, the key each record must name.
    Returns:
        ``(hlens, status)``, as :func:`~mooncake.store.records.check_records` returns them.
    Raises:
        TransferError: the connection closed or timed out midway.
    """
    lib = records_lib()
    if lib is None:
        recv_exact(sock, buf)
        hlens, _sums, status = check_records(buf, rlens, keys)
        return hlens, status
    n = len(rlens)
    rlens = np.ascontiguousarray(rlens, dtype=np.uint64)
    hlens = np.zeros(n, dtype=np.int32)
    sums = np.zeros(n, dtype=np.uint64)
    status = np.zeros(n, dtype=np.uint8)
    err = np.zeros(1, dtype=np.int32)
    kbuf = None if keys is None else np.frombuffer(keys, dtype=np.uint8)
    timeout = sock.gettimeout()
    rc = lib.recv_records(
        sock.fileno(),
        buf.ctypes.data,
        rlens.ctypes.data,
        n,
        None if kbuf is None else kbuf.ctypes.data,
        hlens.ctypes.data,
        sums.ctypes.data,
        status.ctypes.data,
        RECV_CHUNK,
        -1 if timeout is None else int(timeout * 1000),
        err.ctypes.data,
    )
    if rc == -1:
        raise TransferError(f"connection closed during a response of {buf.nbytes} bytes")
    if rc == -2:
        raise TransferError(f"timed out during a response of {buf.nbytes} bytes")
    if rc < 0:
        raise TransferError(f"receive failed: errno {int(err[0])}")
    return hlens, status


def check_response(
    keys: Sequence[BlockKey],
    table: np.ndarray,
    buf: np.ndarray,
    hlens: np.ndarray,
    status: np.ndarray,
) -> tuple[list[BlockObject | None], list[tuple[int, CorruptBlockError]]]:
    """The objects of one response from its batch check (:func:`recv_records`).

    ``hlens``, ``status``: per present record, in order. Returns the checked objects,
    index-aligned with ``keys`` (each viewing ``buf``, which it keeps alive; ``None``
    where the server did not have the block or it failed a check), and ``(index,
    error)`` for each block that failed (a bad record, header or payload, or a header
    naming another key)."""
    ok = table["status"] == STATUS_OK
    if ok.all():
        idx = None
        checked = objects_from_records(buf, table["rlen"].tolist(), hlens, status, keys, owner=buf)
    else:  # some blocks missing (their lengths are 0): check the others, then re-align
        idx = np.flatnonzero(ok).tolist()
        checked = objects_from_records(
            buf, table["rlen"][ok].tolist(), hlens, status, [keys[i] for i in idx], owner=buf
        )
    # One C-level pass over the results instead of an isinstance per block: all objects
    # is the common case, and then there is nothing to look for.
    errors: list[tuple[int, CorruptBlockError]] = []
    if set(map(type, checked)) == {BlockObject}:
        if idx is None:
            return cast(list[BlockObject | None], checked), []
    else:
        errors = [(j, r) for j, r in enumerate(checked) if isinstance(r, CorruptBlockError)]
    out: list[BlockObject | None] = [None] * len(keys)
    at = range(len(keys)) if idx is None else idx
    for i, res in zip(at, checked):
        if isinstance(res, BlockObject):
            out[i] = res
    return out, [(at[j], e) for j, e in errors]


def present_keys(keys: Sequence[BlockKey], table: np.ndarray) -> bytes:
    """The keys of the blocks a response carries, back to back (for :func:`recv_records`)."""
    ok = table["status"] == STATUS_OK
    return b"".join(keys) if ok.all() else b"".join(k for k, o in zip(keys, ok.tolist()) if o)


def recv_exact(sock: socket.socket, buf: Any) -> None:
    """Fill ``buf`` from ``sock``; raises :class:`TransferError` on EOF."""
    view = memoryview(buf).cast("B")
    got, n = 0, len(view)
    while got < n:
        try:
            r = sock.recv_into(view[got:], n - got)
        except (
            TimeoutError,
            BlockingIOError,
        ) as e:  # a timeout socket, or SO_RCVTIMEO on a blocking one
            raise TransferError(f"timed out after {got} of {n} bytes") from e
        if r == 0:
            raise TransferError(f"connection closed after {got} of {n} bytes")
        got += r


def set_io_timeout(sock: socket.socket, seconds: float, receive: bool = True) -> None:
    """Make ``sock`` blocking, with ``seconds`` without progress ending a send (and a
    receive, if ``receive``) in ``EAGAIN``. A blocking socket waits inside ``recv`` and
    ``sendmsg``; a Python timeout socket is non-blocking underneath and pays a failed
    ``recv``, a ``poll`` and a second ``recv`` for every wait (``store_bench.py
    --variants`` compares both)."""
    sock.settimeout(None)
    sec = int(seconds)
    tv = struct.pack("@ll", sec, int((seconds - sec) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    if receive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)


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
    "present_keys",
    "recv_bytes",
    "recv_exact",
    "recv_records",
    "send_all",
    "set_io_timeout",
]
