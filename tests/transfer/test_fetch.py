from __future__ import annotations

import multiprocessing as mp
import socket
import threading
import time
from typing import Any

import numpy as np
import pytest

from mooncake.auth import PURPOSE_BLOCKS, server_handshake
from mooncake.kvcache.block import KVBlockSpec
from mooncake.store.store import BlockStore
from mooncake.transfer import protocol as proto
from mooncake.transfer.base import Peer, TransferError, local_host_id
from mooncake.transfer.config import TransferConfig
from mooncake.transfer.fetcher import BlockFetcher
from mooncake.transfer.server import BlockServer
from mooncake.transfer.tcp import TcpBackend
from mooncake.types import BlockKey
from tests.store.kvfactories import make_chain, store_config
from tests.transfer import procs

# Frames of 3 keys each (batch_bytes=0), so that tests can say which frame a block is in.
# Every config that fetches from a server built with CFG shares its secret.
CFG = TransferConfig(batch_blocks=3, batch_bytes=0, io_timeout_s=5)


def tcp_fetcher(cfg: TransferConfig = CFG) -> BlockFetcher:
    f = BlockFetcher(cfg, backends=[])
    f.backends = [TcpBackend(cfg, f.pool)]
    return f


def keys_of(blocks: list[Any]) -> list[BlockKey]:
    return [b.key for b in blocks]


class FlakyServer(BlockServer):
    """Corrupts or cuts the stream for chosen keys, a limited number of times."""

    corrupt: dict[BlockKey, int]
    cut_before: dict[BlockKey, int]

    frames: list[int] | None = None

    def _wire_items(self, keys: list[BlockKey], records: list[Any]) -> list[Any]:
        if self.frames is not None:
            self.frames.append(len(keys))
        records = list(records)
        for i, key in enumerate(keys):
            if self.cut_before.get(key, 0) > 0:
                self.cut_before[key] -= 1
                raise OSError("simulated connection loss")
            if records[i] is not None and self.corrupt.get(key, 0) > 0:
                self.corrupt[key] -= 1
                bad = bytearray(records[i])
                bad[-8] ^= 0xFF  # a payload byte (the payload ends the record)
                records[i] = bytes(bad)
        return records


@pytest.fixture
def served(host_dir: str) -> Any:
    blocks = make_chain(10)
    store = BlockStore(store_config(host_dir))
    store.put_many(blocks)
    server = FlakyServer(store, CFG)
    server.corrupt, server.cut_before = {}, {}
    yield blocks, store, server
    server.close()
    store.close()


def test_tcp_round_trip_is_byte_identical_and_pipelined(served: Any, shm_dir: Any) -> None:
    """10 blocks in 4 pipelined frames over 127.0.0.1 arrive byte-identical, in
    order; an unknown key is a miss."""
    blocks, _, server = served
    unknown = BlockKey(b"\x01" * 16)
    with tcp_fetcher() as f:
        res = f.fetch([*keys_of(blocks), unknown], Peer("elsewhere", tcp=server.address))
        assert (
            res.paths == ["tcp"] * 10 + [None] and res.missing == [unknown] and res.prefix_len == 10
        )
        for b, o in zip(blocks, res.objects):
            assert (
                o is not None
                and o.numpy().tobytes() == b.data.tobytes()
                and o.header.token_ids == b.token_ids
            )
        res.release()
        again = f.fetch(
            keys_of(blocks[:2]), Peer("elsewhere", tcp=server.address)
        )  # parked connection reused
        assert again.num_fetched == 2
        with BlockStore(store_config(str(shm_dir / "recv"))) as receiver:
            f.fetch(keys_of(blocks), Peer("elsewhere", tcp=server.address), into=receiver).release()
            got = receiver.get(blocks[4].key)
            assert got is not None and np.array_equal(got.numpy(), blocks[4].data)


def test_corrupt_on_the_wire_is_retried_then_reported_missing(served: Any) -> None:
    """A payload corrupted once is re-fetched on a fresh connection; one corrupted every
    time is a miss, never data."""
    blocks, _, server = served
    k = keys_of(blocks)
    server.corrupt = {k[2]: 1, k[5]: 99}
    with tcp_fetcher() as f:
        res = f.fetch(k, Peer("elsewhere", tcp=server.address))
        assert res.retried == 2 and res.missing == [k[5]] and res.prefix_len == 5
        assert (
            res.objects[2] is not None
            and res.objects[2].numpy().tobytes() == blocks[2].data.tobytes()
        )
        assert any("checksum" in e for e in res.errors)


def test_connection_lost_midway_keeps_what_arrived_and_retries_the_rest(served: Any) -> None:
    """The server drops the connection before block 6 (its batch is 6-8): blocks 0-5 are
    kept, 6-9 come on the retry."""
    blocks, _, server = served
    k = keys_of(blocks)
    server.cut_before = {k[6]: 1}
    with tcp_fetcher() as f:
        res = f.fetch(k, Peer("elsewhere", tcp=server.address))
        assert res.num_fetched == 10 and res.retried == 4
        assert [o.numpy().tobytes() for o in res.objects if o] == [b.data.tobytes() for b in blocks]


def test_unreachable_peer_is_all_misses_not_an_exception() -> None:
    """Connecting to a closed port fails both attempts; every block is reported missing."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with tcp_fetcher(TransferConfig(connect_timeout_s=0.5, secret=CFG.secret)) as f:
        res = f.fetch(keys_of(make_chain(3)), Peer("elsewhere", tcp=("127.0.0.1", port)))
        assert res.num_fetched == 0 and len(res.missing) == 3 and len(res.errors) == 2


def test_same_host_peer_reads_the_shared_tier_zero_copy(served: Any) -> None:
    """A same-host peer is served from its host tier (no socket); the view is the tier's memory."""
    blocks, store, server = served
    peer = Peer(local_host_id(), tcp=server.address, host_tier_path=store.config.host.path)
    with BlockFetcher(CFG) as f:
        res = f.fetch(keys_of(blocks), peer)
        assert res.paths == ["shm"] * 10 and server.blocks_sent == 0
        direct = store.get(blocks[3].key)
        assert direct is not None and res.objects[3] is not None
        assert res.objects[3].payload.address == direct.payload.address
        assert res.objects[3].numpy().tobytes() == blocks[3].data.tobytes()


def test_shm_miss_falls_back_to_tcp(host_dir: str, ssd_dir: str) -> None:
    """Blocks demoted to the peer's SSD are not in its host tier: the
    retry over TCP fetches them."""
    blocks = make_chain(4)
    with (
        BlockStore(store_config(host_dir, ssd_dir, host_blocks=2)) as store,
        BlockServer(store, CFG, host_dir) as server,
    ):
        store.put_many(blocks)
        with BlockFetcher(CFG) as f:
            res = f.fetch(keys_of(blocks), server.peer())
            assert res.paths == ["tcp", "tcp", "shm", "shm"] and res.retried == 2
            assert [o.numpy().tobytes() for o in res.objects if o] == [
                b.data.tobytes() for b in blocks
            ]


def test_fetch_from_a_server_in_another_process(shm_dir: Any) -> None:
    """A worker process serves its store over TCP; this process fetches
    every block byte-identical."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    cfg = store_config(str(shm_dir / "peer"))
    p = ctx.Process(target=procs.serve_chain, args=(cfg, 8, 3, child, CFG))
    p.start()
    try:
        assert parent.poll(30)
        peer: Peer = parent.recv()
        remote = Peer("another-host", tcp=peer.tcp)  # force the TCP path
        blocks = make_chain(8, seed=3)
        with tcp_fetcher() as f, f.fetch(keys_of(blocks), remote) as res:
            assert [o.numpy().tobytes() for o in res.objects if o] == [
                b.data.tobytes() for b in blocks
            ]
    finally:
        parent.send("stop")
        p.join(10)
    assert p.exitcode == 0


def test_fetch_without_the_cluster_secret_is_refused(shm_dir: Any) -> None:
    """A fetcher holding another secret gets no block (the server cuts it off at the
    handshake), and a raw request frame sent without any handshake gets no record back:
    only the server's challenge, then the connection closes."""
    blocks = make_chain(4, seed=5)
    with (
        BlockStore(store_config(str(shm_dir / "auth"))) as store,
        BlockServer(store, CFG) as server,
    ):
        store.put_many(blocks)
        remote = Peer("another-host", tcp=server.address)
        outsider = TransferConfig(batch_blocks=3, batch_bytes=0, io_timeout_s=5)  # a fresh secret
        with tcp_fetcher(outsider) as f, f.fetch(keys_of(blocks), remote) as res:
            assert not any(res.objects)
        with socket.create_connection(server.address, timeout=5) as s:
            s.sendall(proto.encode_request(1, keys_of(blocks)))
            got = b""
            try:
                while chunk := s.recv(65536):
                    got += chunk
            except ConnectionResetError:  # closed with our unread request in its buffer
                pass
        assert got.startswith(b"MKAUTH1") and len(got) < 64  # the challenge, nothing else
        assert server.refused >= 2 and server.blocks_sent == 0
        with tcp_fetcher() as f, f.fetch(keys_of(blocks), remote) as res:  # the cluster's secret
            assert all(res.objects)


def test_block_corrupted_in_the_peer_store_is_never_delivered(served: Any) -> None:
    """The server forwards stored bytes unchecked; a block damaged at rest fails the
    receiver's check twice and is a miss."""
    blocks, store, server = served
    k = keys_of(blocks)
    txn = store.tiers["host"].begin_read()
    raw = store.tiers["host"].read_raw(txn, k[1])
    damaged = bytearray(raw[1])
    txn.abort()
    damaged[100] ^= 0x04
    store.tiers["host"].overwrite_payload(k[1], bytes(damaged))
    with tcp_fetcher() as f, f.fetch(k[:3], Peer("elsewhere", tcp=server.address)) as res:
        assert res.missing == [k[1]] and res.prefix_len == 1 and res.retried == 1
        assert sum("checksum" in e for e in res.errors) == 2


#: 32 KiB blocks (the engine's default model with 16-token blocks): whole 4 KiB pages, so
#: the receiver sums them piece by piece as they arrive.
PAGED = KVBlockSpec(num_layers=4, num_kv_heads=2, head_dim=32, block_size=16, dtype="float32")


def test_large_batch_of_small_blocks_one_corrupt_one_missing(host_dir: str) -> None:
    """96 blocks of 32 KiB in batches of 48 (several receive pieces each): a block corrupted on
    the wire every time is a miss, a block the server lacks is a miss, and every other block
    arrives byte-identical in its place."""
    blocks = make_chain(96, PAGED)
    k = keys_of(blocks)
    cfg = TransferConfig(batch_blocks=48, io_timeout_s=5, secret=CFG.secret)
    with (
        BlockStore(store_config(host_dir, host_blocks=128, spec=PAGED)) as store,
        FlakyServer(store, cfg) as server,
    ):
        store.put_many(blocks[:60] + blocks[61:])  # block 60 is not there
        server.corrupt, server.cut_before = {k[30]: 99}, {}
        with tcp_fetcher(cfg) as f, f.fetch(k, Peer("elsewhere", tcp=server.address)) as res:
            assert res.missing == [k[30], k[60]] and res.retried == 2
            assert any("checksum" in e for e in res.errors)
            for b, o in zip(blocks, res.objects):
                if b.key not in (k[30], k[60]):
                    assert o is not None and o.numpy().tobytes() == b.data.tobytes()


@pytest.mark.parametrize(
    ("batch_blocks", "batch_records", "frames"),
    [(4, 10, [4, 10, 10, 10, 6]), (4, 0, [4] * 10), (12, 10, [12, 12, 12, 4]), (1, None, [1] * 40)],
)
def test_later_frames_ask_for_batch_bytes_at_the_record_size_the_first_showed(
    host_dir: str, batch_blocks: int, batch_records: int | None, frames: list[int]
) -> None:
    """The first frame asks for batch_blocks keys; later ones for batch_bytes at the first
    response's record size, never fewer than batch_blocks (batch_bytes=0: all batch_blocks;
    frames of one key each, 40 of them, with only a few in flight, still all arrive)."""
    blocks = make_chain(40, PAGED)
    with (
        BlockStore(store_config(host_dir, host_blocks=64, spec=PAGED)) as store,
        FlakyServer(store, CFG) as server,
    ):
        store.put_many(blocks)
        rlen = len(store.get_raw_many([blocks[0].key]).records[0])
        server.corrupt, server.cut_before, server.frames = {}, {}, []
        batch_bytes = 0 if not batch_records else batch_records * rlen + rlen // 2
        cfg = TransferConfig(
            batch_blocks=batch_blocks, batch_bytes=batch_bytes, io_timeout_s=5, secret=CFG.secret
        )
        with tcp_fetcher(cfg) as f, f.fetch(keys_of(blocks), Peer("x", tcp=server.address)) as res:
            assert [o.numpy().tobytes() for o in res.objects if o] == [
                b.data.tobytes() for b in blocks
            ]
        assert server.frames == frames


def test_one_response_with_blocks_of_different_shapes(host_dir: str) -> None:
    """A response mixing 32 KiB and 512 B blocks (no common size: summed
    block by block) arrives intact."""
    small, paged = make_chain(3, seed=1), make_chain(3, PAGED, seed=2)
    mixed = [small[0], paged[0], small[1], paged[1], paged[2], small[2]]
    with (
        BlockStore(store_config(host_dir, host_blocks=16, spec=PAGED)) as store,
        BlockServer(store, CFG) as server,
    ):
        store.put_many(mixed)
        with (
            tcp_fetcher(TransferConfig(batch_blocks=6, secret=CFG.secret)) as f,
            f.fetch(keys_of(mixed), Peer("x", tcp=server.address)) as res,
        ):
            assert res.num_fetched == 6 and not res.errors
            assert [o.numpy().tobytes() for o in res.objects if o] == [
                b.data.tobytes() for b in mixed
            ]


@pytest.mark.parametrize(
    "entries",
    [
        [(proto.STATUS_MISSING, 8), (proto.STATUS_OK, 0)],  # a missing block that carries bytes
        [(7, 0), (proto.STATUS_OK, 8)],  # an unknown status
        [(proto.STATUS_OK, 4), (proto.STATUS_OK, 3)],  # lengths that do not add up to the frame's
    ],
)
def test_malformed_response_table_is_rejected(entries: list[tuple[int, int]]) -> None:
    """parse_table refuses a table the receiver cannot trust: the connection
    is dropped, nothing is used."""
    meta = b"".join(proto.ENTRY.pack(*e) for e in entries)
    with pytest.raises(TransferError):
        proto.parse_table(meta, len(entries), total=8)


def test_corrupt_blocks_among_many_small_ones_in_one_response_are_misses(host_dir: str) -> None:
    """40 blocks in one response, 3 corrupted on every send: those 3 are misses after the retry,
    the other 37 arrive byte-identical."""
    blocks = make_chain(40)
    k = keys_of(blocks)
    with BlockStore(store_config(host_dir)) as store:
        store.put_many(blocks)
        server = FlakyServer(store, CFG)
        server.corrupt, server.cut_before = {k[1]: 99, k[17]: 99, k[38]: 99}, {}
        try:
            with tcp_fetcher(
                TransferConfig(batch_blocks=40, io_timeout_s=5, secret=CFG.secret)
            ) as f:
                res = f.fetch(k, Peer("elsewhere", tcp=server.address))
                assert res.missing == [k[1], k[17], k[38]] and res.retried == 3
                for b, o in zip(blocks, res.objects):
                    assert o is None or o.numpy().tobytes() == b.data.tobytes()
                res.release()
        finally:
            server.close()


class StallingServer:
    """Answers each request with ``reply(rid, n)`` bytes, then sends nothing more while
    keeping the connection open (a peer that hangs mid-transfer)."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = self.sock.getsockname()[:2]
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            server_handshake(conn, CFG.secret, PURPOSE_BLOCKS)
            _, rid, n, _ = proto.REQ.unpack(proto.recv_bytes(conn, proto.REQ.size))
            proto.recv_bytes(conn, n * proto.KEY_BYTES)
            conn.sendall(self.reply(rid, n))
            if self.hang_up:
                conn.close()

    hang_up = False
    """Close each connection once its reply is sent (a peer that dies mid-response)."""

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("where", ["before the response", "inside the records"])
def test_a_peer_that_stalls_times_out_into_misses(where: str) -> None:
    """A peer that stops sending (before its response, or halfway through the records) ends
    each attempt after io_timeout_s without progress: the blocks are misses, the fetch
    returns, and the error says it timed out."""
    record = 4096

    def reply(rid: int, n: int) -> bytes:
        if where == "before the response":
            return b""
        table = b"".join(proto.ENTRY.pack(proto.STATUS_OK, record) for _ in range(n))
        return proto.RESP.pack(proto.RESP_MAGIC, rid, n, n * record) + table + bytes(record // 2)

    server = StallingServer(reply)
    keys = [BlockKey(bytes([i]) * 16) for i in range(3)]
    try:
        with tcp_fetcher(TransferConfig(io_timeout_s=0.3, secret=CFG.secret)) as f:
            t0 = time.monotonic()
            res = f.fetch(keys, Peer("elsewhere", tcp=server.address))  # type: ignore[arg-type]
            elapsed = time.monotonic() - t0
        assert res.missing == keys and res.retried == 3
        assert len(res.errors) == 2 and all("timed out" in e for e in res.errors), res.errors
        assert 0.5 < elapsed < 5
    finally:
        server.close()


def test_poll_of_a_streaming_handoff_returns_only_what_is_there_intact(served: Any) -> None:
    """A decode worker streaming a hand-off asks for 10 blocks of which the prefill side
    has published 4 (the rest not yet): one request, no retry, the 4 come, the others
    are misses. Then block 6 arrives corrupted on the wire and the connection drops
    before block 8: the poll's leading run stops at 6 (a half-received or damaged block
    is never returned), and nothing is retried (the next poll asks again)."""
    blocks, store, server = served
    k = keys_of(blocks)
    partial = BlockStore(store_config(store.config.host.path + "-partial"))
    partial.put_many(blocks[:4])
    early = BlockServer(partial, CFG)
    try:
        with tcp_fetcher() as f:
            with f.poll(k, Peer("elsewhere", tcp=early.address)) as res:
                assert res.prefix_len == 4 and res.retried == 0
                assert res.paths == ["tcp"] * 4 + [None] * 6
                assert [o.numpy().tobytes() for o in res.objects[:4] if o] == [
                    b.data.tobytes() for b in blocks[:4]
                ]
            server.corrupt, server.cut_before = {k[6]: 1}, {k[8]: 1}
            with f.poll(k, Peer("elsewhere", tcp=server.address)) as res:
                assert res.prefix_len == 6 and res.retried == 0 and res.objects[6] is None
                assert res.errors, "the damaged block and the cut are reported"
            with f.poll(k, Peer("elsewhere", tcp=server.address)) as res:
                assert res.prefix_len == 10
    finally:
        early.close()
        partial.close()


def test_a_response_cut_inside_a_record_yields_no_block(host_dir: str) -> None:
    """A peer sends a response's table, its first record whole and half of the second,
    then hangs up (on every attempt): the fetch returns all misses, quickly, with the
    closed connection in its errors; the record that arrived whole is not handed out
    from a response that did not (nothing from a cut response is used)."""
    blocks = make_chain(3)
    with BlockStore(store_config(host_dir)) as store:
        store.put_many(blocks)
        recs = [bytes(r) for r in store.get_raw_many(keys_of(blocks)).records]

    def reply(rid: int, n: int) -> bytes:
        table = b"".join(proto.ENTRY.pack(proto.STATUS_OK, len(r)) for r in recs[:n])
        head = proto.RESP.pack(proto.RESP_MAGIC, rid, n, sum(map(len, recs[:n])))
        return head + table + recs[0] + recs[1][: len(recs[1]) // 2]

    server = StallingServer(reply)
    server.hang_up = True
    try:
        with tcp_fetcher() as f:
            t0 = time.monotonic()
            res = f.fetch(keys_of(blocks), Peer("elsewhere", tcp=server.address))
            assert time.monotonic() - t0 < 4
            assert res.missing == keys_of(blocks) and res.num_fetched == 0
            assert res.errors and all("closed" in e for e in res.errors), res.errors
    finally:
        server.close()
