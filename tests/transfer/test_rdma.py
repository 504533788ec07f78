from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from mooncake.auth import PURPOSE_BLOCKS, client_handshake
from mooncake.store.store import BlockStore
from mooncake.transfer import protocol as proto
from mooncake.transfer import select
from mooncake.transfer.base import BufferPool, PathResult, Peer, TransferError
from mooncake.transfer.config import TransferConfig
from mooncake.transfer.fetcher import BlockFetcher, default_backends
from mooncake.transfer.rdma import CLIENT_INFO_BYTES, HELLO_REPLY_BYTES
from mooncake.transfer.server import BlockServer
from mooncake.transfer.tcp import TcpBackend
from mooncake.types import BlockKey
from tests.store.kvfactories import make_chain, store_config

HAVE_RDMA = bool(select.rdma_devices()) and select.pyverbs_available()
NO_RDMA_REASON = (
    "no RDMA here: /sys/class/infiniband lists no device (kernel without CONFIG_INFINIBAND)"
    if not select.rdma_devices()
    else "RDMA device present but pyverbs is not installed (extra 'rdma')"
)


@pytest.mark.skipif(not HAVE_RDMA, reason=NO_RDMA_REASON)
def test_rdma_round_trip_is_byte_identical(host_dir: str) -> None:
    """On a host with an RDMA device: blocks move by RDMA READ,
    byte-identical, with no TCP retry."""
    blocks = make_chain(20)
    cfg = TransferConfig(backend="rdma", listen_host="127.0.0.1", batch_blocks=8)
    with BlockStore(store_config(host_dir)) as store, BlockServer(store, cfg) as server:
        store.put_many(blocks)
        peer = Peer("another-host", tcp=server.address, rdma=True)
        with BlockFetcher(cfg) as f, f.fetch([b.key for b in blocks], peer) as res:  # type: ignore[misc]
            assert res.paths == ["rdma"] * 20 and res.retried == 0
            assert [o.numpy().tobytes() for o in res.objects if o] == [
                b.data.tobytes() for b in blocks
            ]


def test_server_without_rdma_refuses_hello_and_keeps_serving_tcp(host_dir: str) -> None:
    """An RDMA hello to a server that cannot do RDMA gets a refusal; the same
    connection then serves a TCP request."""
    blocks = make_chain(2)
    cfg = TransferConfig()
    with BlockStore(store_config(host_dir)) as store, BlockServer(store, cfg) as server:
        store.put_many(blocks)
        with socket.create_connection(server.address, timeout=5) as s:
            client_handshake(s, cfg.secret, PURPOSE_BLOCKS)
            s.sendall(
                proto.REQ.pack(proto.REQ_MAGIC, 0, 0, proto.FLAG_RDMA_HELLO)
                + bytes(CLIENT_INFO_BYTES)
            )
            reply = proto.recv_bytes(s, HELLO_REPLY_BYTES)
            assert bytes(reply[:4]) == proto.RDMA_REFUSED
            s.sendall(proto.encode_request(7, [blocks[1].key]))  # type: ignore[list-item]
            magic, rid, count, total = proto.RESP.unpack(proto.recv_bytes(s, proto.RESP.size))
            assert (magic, rid, count) == (proto.RESP_MAGIC, 7, 1) and total > blocks[1].data.nbytes


@pytest.mark.skipif(HAVE_RDMA, reason="a real RDMA backend would start here")
def test_rdma_selected_but_unusable_falls_back_to_tcp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """auto picks RDMA (a device is listed, pyverbs claimed) but the
    backend cannot start: TCP, logged."""
    (tmp_path / "mlx5_0").mkdir()
    monkeypatch.setattr(select, "pyverbs_available", lambda: True)
    cfg = TransferConfig(rdma_sysfs=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="mooncake.transfer.fetcher"):
        names = [b.name for b in default_backends(cfg, BufferPool(0))]
    assert names == ["shm", "tcp"] and "RDMA backend unavailable" in caplog.text


class FailingPath:
    """A primary path that always fails as a whole (as a broken RDMA link would)."""

    name = "rdma"

    def usable(self, peer: Peer) -> bool:
        return True

    def fetch(self, keys: Sequence[BlockKey], peer: Peer) -> PathResult:
        raise TransferError("link down", partial=PathResult([None] * len(keys)))

    def close(self) -> None:
        pass


def test_failed_primary_path_is_retried_once_on_tcp(host_dir: str) -> None:
    """Every block fails on the first path; the one retry on TCP delivers all of them."""
    blocks = make_chain(5)
    cfg = TransferConfig(batch_blocks=2)
    with BlockStore(store_config(host_dir)) as store, BlockServer(store, cfg) as server:
        store.put_many(blocks)
        f = BlockFetcher(cfg, backends=[])
        backends: list[Any] = [FailingPath(), TcpBackend(cfg, f.pool)]
        f.backends = backends
        with f, f.fetch([b.key for b in blocks], Peer("another-host", tcp=server.address)) as res:  # type: ignore[misc]
            assert (
                res.paths == ["tcp"] * 5 and res.retried == 5 and "rdma: link down" in res.errors[0]
            )
            assert [o.numpy().tobytes() for o in res.objects if o] == [
                b.data.tobytes() for b in blocks
            ]
