"""RDMA backend through ``pyverbs`` (extra ``rdma``): one-sided RDMA READ of blocks.

Control stays on the block server's TCP connection; data moves by RDMA:

1. hello: the client sends its RC queue pair's address (QPN, PSN, LID, GID) in a request
   with ``FLAG_RDMA_HELLO``; the server creates a queue pair and a registered staging
   region for this connection, connects, and answers with its own address plus the
   staging region's (address, rkey, size).
2. fetch: a request with ``FLAG_RDMA_READ`` makes the server copy the requested block
   records into its staging region back to back and answer with the usual response
   table but no record bytes; the client posts one RDMA READ per block into its own
   registered region, polls the completions, and checks every block exactly like the TCP
   path does. Blocks that do not fit the staging region come back as missing, and the
   fetcher's retry moves them over TCP.

The client sends the next request only after its READs completed, so the server may
reuse the staging region for it. Registering LMDB's map directly would save the staging
copy but would pin the whole map and race with page reuse, so it is not done.

Not exercised on the development machine (its kernel has no RDMA); selection and
fallback are (tests/transfer/test_select.py), and tests/transfer/test_rdma.py runs
against a real device where one exists.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from mooncake import auth
from mooncake.kvcache import copies
from mooncake.store.block_object import BlockObject
from mooncake.store.records import check_records
from mooncake.transfer import protocol as proto
from mooncake.transfer.base import BufferPool, PathResult, Peer, TransferError
from mooncake.transfer.config import TransferConfig
from mooncake.transfer.select import rdma_devices
from mooncake.types import BlockKey

# qpn, psn, lid, gid  |  + staging addr, rkey, size (server reply)
_QP_INFO = struct.Struct("<IIH16s")
_MR_INFO = struct.Struct("<QIQ")
HELLO_REPLY_BYTES = _QP_INFO.size + _MR_INFO.size
CLIENT_INFO_BYTES = _QP_INFO.size
_PORT = 1
_PSN_MASK = 0xFFFFFF


def _verbs() -> Any:
    """Import pyverbs lazily: it is an optional extra."""
    import pyverbs.enums as e
    from pyverbs.addr import AHAttr, GlobalRoute
    from pyverbs.cq import CQ
    from pyverbs.device import Context
    from pyverbs.mr import MR
    from pyverbs.pd import PD
    from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
    from pyverbs.wr import SGE, SendWR

    return SimpleNamespace(
        e=e,
        AHAttr=AHAttr,
        GlobalRoute=GlobalRoute,
        CQ=CQ,
        Context=Context,
        MR=MR,
        PD=PD,
        QP=QP,
        QPAttr=QPAttr,
        QPCap=QPCap,
        QPInitAttr=QPInitAttr,
        SGE=SGE,
        SendWR=SendWR,
    )


class _Endpoint:
    """Device context, protection domain, completion queue, one registered region and
    one RC queue pair: the half of a connection on one side."""

    def __init__(self, config: TransferConfig, region_bytes: int, remote_read: bool) -> None:
        v = self.v = _verbs()
        devices = rdma_devices(config.rdma_sysfs)
        name = config.rdma_device or (devices[0] if devices else None)
        if name is None:
            raise TransferError(f"rdma: no device under {config.rdma_sysfs}")
        self.ctx = v.Context(name=name)
        self.pd = v.PD(self.ctx)
        self.cq = v.CQ(self.ctx, 1024)
        access = v.e.IBV_ACCESS_LOCAL_WRITE | (v.e.IBV_ACCESS_REMOTE_READ if remote_read else 0)
        self.mr = v.MR(self.pd, region_bytes, access)
        self.size = region_bytes
        cap = v.QPCap(max_send_wr=1024, max_recv_wr=1, max_send_sge=1, max_recv_sge=1)
        self.qp = v.QP(
            self.pd, v.QPInitAttr(qp_type=v.e.IBV_QPT_RC, scq=self.cq, rcq=self.cq, cap=cap)
        )
        self.psn = int.from_bytes(np.random.default_rng().bytes(3), "little") & _PSN_MASK
        self.gid_index = config.rdma_gid_index
        gid = self.ctx.query_gid(port_num=_PORT, index=self.gid_index)
        self.gid = bytes.fromhex(str(gid.gid).replace(":", ""))
        self.lid = int(self.ctx.query_port(_PORT).lid)

    def info(self) -> bytes:
        return _QP_INFO.pack(self.qp.qp_num, self.psn, self.lid, self.gid)

    def connect(self, remote: bytes) -> None:
        """Move the queue pair INIT -> RTR -> RTS towards ``remote`` (its :meth:`info`)."""
        v = self.v
        qpn, psn, lid, gid = _QP_INFO.unpack(remote)
        attr = v.QPAttr(port_num=_PORT)
        attr.qp_access_flags = v.e.IBV_ACCESS_REMOTE_READ | v.e.IBV_ACCESS_LOCAL_WRITE
        self.qp.to_init(attr)
        gid_str = ":".join(gid.hex()[i : i + 4] for i in range(0, 32, 4))
        gr = v.GlobalRoute(dgid=_gid(gid_str), sgid_index=self.gid_index)
        attr.ah_attr = v.AHAttr(port_num=_PORT, is_global=1, gr=gr, dlid=lid)
        attr.dest_qp_num = qpn
        attr.rq_psn = psn
        attr.path_mtu = v.e.IBV_MTU_1024
        attr.max_dest_rd_atomic = 16
        attr.min_rnr_timer = 12
        self.qp.to_rtr(attr)
        attr.sq_psn = self.psn
        attr.timeout = 14
        attr.retry_cnt = 7
        attr.rnr_retry = 7
        attr.max_rd_atomic = 16
        self.qp.to_rts(attr)

    def close(self) -> None:
        for obj in (self.qp, self.mr, self.cq, self.pd, self.ctx):
            obj.close()


def _gid(text: str) -> Any:
    from pyverbs.addr import GID

    return GID(text)


class RdmaServerSide:
    """The server's half of one RDMA connection (created on a hello request)."""

    def __init__(self, config: TransferConfig, client_info: bytes) -> None:
        self.ep = _Endpoint(config, config.rdma_staging_bytes, remote_read=True)
        self.ep.connect(client_info)

    def hello_reply(self) -> bytes:
        return self.ep.info() + _MR_INFO.pack(self.ep.mr.buf, self.ep.mr.rkey, self.ep.size)

    def stage(self, records: Sequence[Any]) -> int:
        """Copy records back to back into the staging region; returns how many fit."""
        off = 0
        for i, p in enumerate(records):
            n = memoryview(p).nbytes
            if off + n > self.ep.size:
                return i
            self.ep.mr.write(bytes(memoryview(p).cast("B")), n, off)
            off += n
        return len(records)

    def close(self) -> None:
        self.ep.close()


class _ClientConn:
    def __init__(
        self, sock: socket.socket, ep: _Endpoint, remote_addr: int, rkey: int, remote_size: int
    ) -> None:
        self.sock, self.ep, self.remote_addr, self.rkey, self.remote_size = (
            sock,
            ep,
            remote_addr,
            rkey,
            remote_size,
        )


class RdmaBackend:
    """Fetch blocks by RDMA READ from a peer's block server (see module docstring)."""

    name = "rdma"

    def __init__(self, config: TransferConfig, pool: BufferPool) -> None:
        _verbs()  # fail now, at selection time, if pyverbs cannot be imported
        self.config = config
        self.pool = pool
        self._conns: dict[tuple[str, int], _ClientConn] = {}
        self._lock = threading.Lock()
        self._rid = 0

    def usable(self, peer: Peer) -> bool:
        return peer.rdma and peer.tcp is not None

    def _connect(self, addr: tuple[str, int]) -> _ClientConn:
        with self._lock:
            conn = self._conns.pop(addr, None)
        if conn is not None:
            return conn
        try:
            sock = socket.create_connection(addr, timeout=self.config.connect_timeout_s)
        except OSError as e:
            raise TransferError(f"rdma: cannot reach control port {addr}: {e}") from e
        try:
            auth.client_handshake(
                sock, self.config.secret, auth.PURPOSE_BLOCKS, self.config.connect_timeout_s
            )
        except auth.AuthError as e:
            sock.close()
            raise TransferError(f"rdma: {addr} refused the cluster secret: {e}") from e
        sock.settimeout(self.config.io_timeout_s)
        ep = _Endpoint(self.config, self.config.rdma_staging_bytes, remote_read=False)
        sock.sendall(proto.REQ.pack(proto.REQ_MAGIC, 0, 0, proto.FLAG_RDMA_HELLO) + ep.info())
        # The server reads exactly this many bytes after a hello frame.
        assert len(ep.info()) == CLIENT_INFO_BYTES
        reply = proto.recv_bytes(sock, HELLO_REPLY_BYTES)
        if reply[:4] == proto.RDMA_REFUSED:
            sock.close()
            ep.close()
            raise TransferError("rdma: peer refused the RDMA hello")
        ep.connect(bytes(reply[: _QP_INFO.size]))
        raddr, rkey, rsize = _MR_INFO.unpack_from(reply, _QP_INFO.size)
        return _ClientConn(sock, ep, raddr, rkey, rsize)

    def fetch(self, keys: Sequence[BlockKey], peer: Peer) -> PathResult:
        if peer.tcp is None:
            raise TransferError("rdma: peer has no control address")
        conn = self._connect(peer.tcp)
        objects: list[BlockObject | None] = [None] * len(keys)
        buffers: list[np.ndarray] = []
        errors: list[str] = []
        step = self.config.batch_blocks
        try:
            for start in range(0, len(keys), step):
                batch = keys[start : start + step]
                self._rid = (self._rid + 1) & 0xFFFFFFFF
                conn.sock.sendall(proto.encode_request(self._rid, batch, proto.FLAG_RDMA_READ))
                head = proto.recv_bytes(conn.sock, proto.RESP.size)
                magic, rid, count, total = proto.RESP.unpack(head)
                if (
                    magic != proto.RESP_MAGIC
                    or rid != self._rid
                    or count != len(batch)
                    or total > conn.ep.size
                ):
                    raise TransferError("rdma: malformed response frame")
                table = proto.parse_table(
                    proto.recv_bytes(conn.sock, count * proto.ENTRY.size), count, total
                )
                present = table["status"] == proto.STATUS_OK
                self._read(conn, table["rlen"][present].tolist())
                buf = self.pool.take(total)
                buffers.append(buf)
                buf[:] = np.frombuffer(conn.ep.mr.read(total, 0), dtype=np.uint8)
                # The RDMA READ into the registered region, then two copies out of it
                # (pyverbs' read returns bytes; then into the receive buffer).
                copies.count("transfer.recv", 3 * total)
                hlens, _sums, status = check_records(
                    buf, table["rlen"][present], proto.present_keys(batch, table)
                )
                checked, bad = proto.check_response(batch, table, buf, hlens, status)
                objects[start : start + len(batch)] = checked
                errors.extend(f"rdma: block {start + j}: {e}" for j, e in bad)
        except (OSError, TransferError) as e:
            conn.sock.close()
            conn.ep.close()
            raise TransferError(f"rdma: {e}", partial=PathResult(objects, buffers, str(e))) from e
        with self._lock:
            self._conns[peer.tcp] = conn
        return PathResult(objects, buffers, "; ".join(errors) or None)

    def _read(self, conn: _ClientConn, sizes: list[int]) -> None:
        """RDMA READ each staged record into the same offset of the local region."""
        v = conn.ep.v
        off = 0
        for i, n in enumerate(sizes):
            sge = v.SGE(conn.ep.mr.buf + off, n, conn.ep.mr.lkey)
            wr = v.SendWR(
                wr_id=i,
                opcode=v.e.IBV_WR_RDMA_READ,
                num_sge=1,
                sg=[sge],
                send_flags=v.e.IBV_SEND_SIGNALED,
            )
            wr.set_wr_rdma(conn.rkey, conn.remote_addr + off)
            conn.ep.qp.post_send(wr)
            off += n
        done = 0
        deadline = time.monotonic() + self.config.io_timeout_s
        while done < len(sizes):
            npolled, wcs = conn.ep.cq.poll(num_entries=len(sizes) - done)
            for wc in wcs[:npolled]:
                if wc.status != v.e.IBV_WC_SUCCESS:
                    raise TransferError(f"rdma: work completion status {wc.status}")
            done += npolled
            if time.monotonic() > deadline:
                raise TransferError("rdma: READs did not complete in time")

    def close(self) -> None:
        with self._lock:
            for c in self._conns.values():
                c.sock.close()
                c.ep.close()
            self._conns.clear()


__all__ = ["CLIENT_INFO_BYTES", "HELLO_REPLY_BYTES", "RdmaBackend", "RdmaServerSide"]
