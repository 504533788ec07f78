"""Block server: streams a worker's blocks to peers over TCP.

One thread accepts, one thread per connection serves. Blocks are read zero-copy from
the store and handed to ``sendmsg`` straight from the LMDB map: the server never
copies a payload in user space. It forwards the stored bytes unchecked (the receiver
checks header and payload end to end), so a corrupt block costs the receiver a retry,
never wrong data.

A connection serves nothing before the peer proves it holds the cluster's secret
(``TransferConfig.secret``, :mod:`mooncake.auth`): a process that can reach the port but
is not part of the cluster gets no block, whatever key it names.
"""

from __future__ import annotations

import logging
import operator
import socket
import threading
from collections.abc import Sequence
from itertools import repeat
from typing import Any, Protocol, cast

import numpy as np

from mooncake import auth
from mooncake.kvcache import copies
from mooncake.store.store import RawBatch
from mooncake.transfer import protocol as proto
from mooncake.transfer.base import Peer, TransferError, local_host_id
from mooncake.transfer.config import TransferConfig
from mooncake.transfer.rdma import CLIENT_INFO_BYTES, HELLO_REPLY_BYTES, RdmaServerSide
from mooncake.transfer.select import select_backend
from mooncake.types import BlockKey

log = logging.getLogger(__name__)


class BlockSource(Protocol):
    """What the server reads from (a ``BlockStore``)."""

    def get_raw_many(self, keys: Sequence[BlockKey]) -> RawBatch: ...


class BlockServer:
    """Serve ``source``'s blocks on ``config.listen_host:listen_port``.

    Args:
        source: the worker's store.
        config: listen address, socket buffers.
        host_tier_path: advertised in :meth:`peer` so same-host peers read zero-copy.

    RDMA is offered (``Peer.rdma``) when :func:`select_backend` picks it for ``config``.
    """

    def __init__(
        self, source: BlockSource, config: TransferConfig, host_tier_path: str | None = None
    ) -> None:
        self.rdma = select_backend(config) == "rdma"
        self.source = source
        self.config = config
        self.host_tier_path = host_tier_path
        self._sock = socket.create_server((config.listen_host or "127.0.0.1", config.listen_port))
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.blocks_sent = 0
        self.refused = 0
        """Connections cut off because the peer did not prove the secret."""
        self.bytes_sent = 0
        self._thread = threading.Thread(
            target=self._accept_loop, name="mooncake-block-server", daemon=True
        )
        self._thread.start()

    def peer(self) -> Peer:
        """How peers reach this server."""
        return Peer(
            host_id=local_host_id(),
            tcp=self.address,
            host_tier_path=self.host_tier_path,
            rdma=self.rdma,
        )

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            for c in list(self._conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(5)

    def __enter__(self) -> BlockServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A peer that stops reading for io_timeout_s loses its connection; an idle one
            # (between fetches) keeps it: no receive timeout.
            proto.set_io_timeout(conn, self.config.io_timeout_s, receive=False)
            if self.config.socket_buffer_bytes:
                conn.setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.socket_buffer_bytes
                )
            with self._lock:
                self._conns.add(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name="mooncake-block-conn", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        head = bytearray(proto.REQ.size)
        rdma: RdmaServerSide | None = None
        try:
            try:
                auth.server_handshake(conn, self.config.secret, auth.PURPOSE_BLOCKS)
            except auth.AuthError as e:
                self.refused += 1
                log.warning("block server: refused %s: %s", _peername(conn), e)
                return
            while True:
                try:
                    proto.recv_exact(conn, head)
                except TransferError:
                    return  # peer closed between requests
                magic, rid, n, flags = proto.REQ.unpack(head)
                if magic != proto.REQ_MAGIC or n > proto.MAX_KEYS:
                    log.warning("block server: bad request frame from %s", conn.getpeername())
                    return
                if flags & proto.FLAG_RDMA_HELLO:
                    rdma = self._rdma_hello(conn, rdma)
                    continue
                raw = proto.recv_bytes(conn, n * proto.KEY_BYTES)
                # one bytes object per key, cut in C (a slice per key costs 4x as much)
                keys = cast(list[BlockKey], np.frombuffer(raw, f"V{proto.KEY_BYTES}").tolist())
                batch = self.source.get_raw_many(keys)
                self._send_batch(
                    conn, rid, keys, batch.records, rdma if flags & proto.FLAG_RDMA_READ else None
                )
                del batch  # ends the read transactions
        except (OSError, TransferError) as e:
            if not self._closed:
                log.info("block server: connection ended: %s", e)
        except Exception:  # a bug must end this connection, not the server
            log.exception("block server: error serving a connection")
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
            if rdma is not None:
                rdma.close()

    def _rdma_hello(self, conn: socket.socket, old: RdmaServerSide | None) -> RdmaServerSide | None:
        """Set up this connection's RDMA side, or refuse (the client then uses TCP)."""
        info = bytes(proto.recv_bytes(conn, CLIENT_INFO_BYTES))
        if old is not None:
            old.close()
        try:
            side = RdmaServerSide(self.config, info)
        except Exception as e:  # ImportError, pyverbs errors: no RDMA here
            log.info("block server: refusing RDMA: %s", e)
            conn.sendall(proto.RDMA_REFUSED.ljust(HELLO_REPLY_BYTES, b"\0"))
            return None
        conn.sendall(side.hello_reply())
        return side

    def _send_batch(self, conn: socket.socket, rid: int, keys: list[BlockKey], records: list[Any],
                    rdma: RdmaServerSide | None = None) -> None:  # fmt: skip
        """One response: table, then records (or, for RDMA, records staged in the
        registered region instead of sent; blocks that do not fit are missing).

        ``records``: 1-D byte buffers (LMDB views), ``None`` for a missing block. The
        table is filled column by column: no Python work per block beyond ``len``."""
        records = self._wire_items(keys, records)
        if rdma is not None:
            fit = rdma.stage([r for r in records if r is not None])
            kept = 0
            for i, r in enumerate(records):
                if r is not None:
                    kept += 1
                    if kept > fit:
                        records[i] = None
        table = np.zeros(len(keys), dtype=proto.TABLE)
        # by identity: ``None in records`` compares each memoryview with None, which
        # costs a failed buffer request (about 1 us) per block
        if any(map(operator.is_, records, repeat(None))):
            missing = [r is None for r in records]
            table["status"][missing] = proto.STATUS_MISSING
            records = [r for r in records if r is not None]
            table["rlen"][table["status"] == proto.STATUS_OK] = np.fromiter(
                map(len, records), np.uint64, len(records)
            )
        elif records:
            # fromiter: the lengths go straight into an array (a list of ints converted
            # by numpy costs 5x as much per block)
            table["rlen"] = np.fromiter(map(len, records), np.uint64, len(records))
        total = int(table["rlen"].sum())
        head = proto.RESP.pack(proto.RESP_MAGIC, rid, len(keys), total)
        # sendmsg copies the records into the socket; sendfile from the tier's file would
        # not, but splicing tmpfs's 4 KiB pages one by one costs more CPU than the copy
        # (docs/store.md).
        proto.send_all(conn, [head + table.tobytes(), *(records if rdma is None else [])])
        self.blocks_sent += len(records)
        self.bytes_sent += total
        if rdma is None:
            copies.count("transfer.send", total)

    def _wire_items(self, keys: list[BlockKey], records: list[Any]) -> list[Any]:
        """Records as they go on the wire: a hook, called once per response, for
        fault-injection tests (corrupt a block, cut the stream)."""
        return records


def _peername(conn: socket.socket) -> object:
    try:
        return conn.getpeername()
    except OSError:
        return "a peer"


__all__ = ["BlockServer", "BlockSource"]
