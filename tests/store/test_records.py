"""Block records (one byte string per block): the batch check, compiled and in numpy, the
receive-and-check of a response, the tier's format version, broken framing at rest."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import zlib
from typing import Any

import lmdb
import numpy as np
import pytest

from mooncake.kvcache.block import KVBlockSpec
from mooncake.store import records as rec_mod
from mooncake.store.block_object import BlockObject, CorruptBlockError, encode
from mooncake.store.native import records_lib
from mooncake.store.reader import TierReader
from mooncake.store.records import (
    STATUS_CHECKSUM,
    STATUS_FRAMING,
    STATUS_KEY,
    STATUS_LENGTH,
    STATUS_OK,
    STATUS_OTHER_ALGO,
    check_records,
    check_records_py,
    encode_record,
    objects_from_records,
    pack_record,
    payload_offset,
    split_record,
)
from mooncake.store.store import BlockStore
from mooncake.store.tier import TierFormatError
from mooncake.transfer import protocol as proto
from mooncake.transfer.base import TransferError
from mooncake.types import BlockKey
from tests.store.kvfactories import make_chain, store_config

SPEC_8K = KVBlockSpec(
    num_layers=2, num_kv_heads=2, head_dim=64, block_size=4, dtype="bfloat16"
)  # 8 KiB
HAVE_CC = records_lib() is not None


@pytest.fixture(params=["compiled", "numpy"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the compiled library and with its numpy twin."""
    if request.param == "compiled":
        if not HAVE_CC:
            pytest.skip("no C compiler here: the compiled record checks cannot be built")
    else:
        monkeypatch.setattr(rec_mod, "records_lib", lambda: None)
        monkeypatch.setattr(proto, "records_lib", lambda: None)
    return str(request.param)


def _records(
    n: int, spec: KVBlockSpec = SPEC_8K, algo: str = "sum64", seed: int = 0
) -> tuple[list[bytes], list[BlockKey]]:
    blocks = make_chain(n, spec, seed=seed)
    recs = [bytes(pack_record(*encode(b, algo=algo))) for b in blocks]  # type: ignore[arg-type]
    return recs, [b.key for b in blocks]  # type: ignore[misc]


def _check(recs: list[bytes], keys: list[BlockKey]) -> list[BlockObject | CorruptBlockError]:
    buf = np.frombuffer(b"".join(recs), dtype=np.uint8).copy()
    rlens = np.array([len(r) for r in recs], dtype=np.uint64)
    hlens, _sums, status = check_records(buf, rlens, b"".join(keys))
    return objects_from_records(buf, [len(r) for r in recs], hlens, status, keys, owner=buf)


def test_record_layout_puts_the_payload_at_an_aligned_offset() -> None:
    """header | zero padding | payload, the payload 64-byte aligned in the
    record; split gives both back."""
    b = make_chain(1)[0]
    hdr, payload = encode(b)
    rec = bytes(pack_record(hdr, payload))
    off = payload_offset(len(hdr))
    assert off % 64 == 0 and off >= len(hdr) and rec[len(hdr) : off] == bytes(off - len(hdr))
    h, p = split_record(rec)
    assert bytes(h) == hdr and bytes(p) == b.data.tobytes()


@pytest.mark.parametrize("algo", ["sum64", "crc32"])
def test_a_block_encoded_while_copied_in_equals_its_encoded_parts(impl: str, algo: str) -> None:
    """encode_record (payload copied and checksummed in one pass, header in front), into a
    reused buffer that shrinks and grows between blocks, gives byte for byte the record of
    encode()'s header and payload; odd-sized payloads included."""
    odd = KVBlockSpec(num_layers=1, num_kv_heads=1, head_dim=3, block_size=3, dtype="bfloat16")
    stage = bytearray(b"\xff" * 100)
    for b in [*make_chain(2, SPEC_8K), *make_chain(2, odd, seed=3), make_chain(1)[0]]:
        want = bytes(pack_record(*encode(b, 7, algo)))  # type: ignore[arg-type]
        with encode_record(b, 7, algo, stage) as rec:  # type: ignore[arg-type]
            assert bytes(rec) == want


@pytest.mark.parametrize("algo", ["sum64", "crc32"])
def test_each_bad_record_in_a_batch_fails_alone(impl: str, algo: str) -> None:
    """In 40 records, a flipped payload bit, a damaged header byte, a header of another key, a
    header length that does not fit the record and a record framed 8 bytes longer than its
    header says each fail only their own block; the rest match byte for byte."""
    recs, keys = _records(40, algo=algo)
    good = [bytes(split_record(r)[1]) for r in recs]
    r = bytearray(recs[3])
    r[-100] ^= 0x10
    recs[3] = bytes(r)
    recs[7] = recs[7][:20] + bytes([recs[7][20] ^ 1]) + recs[7][21:]
    keys[11] = BlockKey(b"\x07" * 16)
    recs[15] = recs[15][:8] + (10**6).to_bytes(4, "little") + recs[15][12:]
    recs[21] = recs[21] + bytes(8)
    out = _check(recs, keys)
    bad = {i: str(o) for i, o in enumerate(out) if isinstance(o, CorruptBlockError)}
    assert sorted(bad) == [3, 7, 11, 15, 21]
    assert (
        "checksum" in bad[3] and "key" in bad[11] and "length" in bad[15] and "payload" in bad[21]
    )
    for i, o in enumerate(out):
        if i not in bad:
            assert (
                isinstance(o, BlockObject) and o.key == keys[i] and o.numpy().tobytes() == good[i]
            )


def test_memoised_headers_then_bad_blocks(impl: str) -> None:
    """64 records pass twice (the second time every header is memoised: the C-level object
    loop); then a flipped payload bit, and a header re-sealed with a valid CRC but its
    has-key flag cleared, each fail only their own block."""
    recs, keys = _records(64)
    for _ in range(2):
        assert all(isinstance(o, BlockObject) for o in _check(recs, keys))
    r = bytearray(recs[9])
    r[-5] ^= 0x01
    recs[9] = bytes(r)
    hlen = len(split_record(recs[20])[0])
    body = bytearray(recs[20][: hlen - 4])
    body[7] &= ~1  # has-key flag
    recs[20] = bytes(body) + zlib.crc32(bytes(body)).to_bytes(4, "little") + recs[20][hlen:]
    out = _check(recs, keys)
    bad = {i: str(o) for i, o in enumerate(out) if isinstance(o, CorruptBlockError)}
    assert sorted(bad) == [9, 20] and "checksum" in bad[9] and "key" in bad[20]


@pytest.mark.skipif(
    not HAVE_CC, reason="no C compiler here: nothing to compare the numpy twin with"
)
def test_compiled_and_numpy_checks_give_identical_results() -> None:
    """Records of mixed sizes (odd ones included) and both checksums, each randomly damaged
    (payload bit, framing, length, key, magic) or left alone: header lengths, sums and
    statuses are identical between the compiled check and its numpy twin."""
    rng = np.random.default_rng(5)
    odd = KVBlockSpec(
        num_layers=1, num_kv_heads=1, head_dim=3, block_size=3, dtype="bfloat16"
    )  # 18 B payloads
    recs, keys = [], []
    for spec, algo in [
        (SPEC_8K, "sum64"),
        (odd, "sum64"),
        (SPEC_8K, "crc32"),
        (make_chain(1)[0].spec, "sum64"),
    ]:
        r, k = _records(30, spec, algo, seed=int(rng.integers(100)))
        recs += r
        keys += k
    for i in range(len(recs)):
        r = bytearray(recs[i])
        what = int(rng.integers(6))
        if what == 1:
            r[-1 - int(rng.integers(8))] ^= 1 << int(rng.integers(8))
        elif what == 2:
            r[8:12] = int(rng.integers(0, 1 << 16)).to_bytes(4, "little")
        elif what == 3:
            r += bytes(int(rng.integers(1, 70)))
        elif what == 4:
            keys[i] = BlockKey(bytes(rng.integers(0, 256, 16, dtype=np.uint8)))
        elif what == 5:
            r[0] ^= 0xFF
        recs[i] = bytes(r)
    buf = np.frombuffer(b"".join(recs), dtype=np.uint8).copy()
    rlens = np.array([len(r) for r in recs], dtype=np.uint64)
    kb = b"".join(keys)
    got, want = check_records(buf, rlens, kb), check_records_py(buf, rlens, kb)
    for g, w in zip(got, want):
        assert g.tolist() == w.tolist()
    seen = set(got[2].tolist())
    assert {
        STATUS_OK,
        STATUS_FRAMING,
        STATUS_LENGTH,
        STATUS_CHECKSUM,
        STATUS_KEY,
        STATUS_OTHER_ALGO,
    } <= seen


def _serve_bytes(data: bytes, close_after: int | None = None) -> socket.socket:
    a, b = socket.socketpair()

    def send() -> None:
        with a:
            a.sendall(data if close_after is None else data[:close_after])

    threading.Thread(target=send, daemon=True).start()
    return b


def test_recv_records_receives_and_checks_a_response(impl: str) -> None:
    """100 records of 32 KiB (several receive chunks) arrive byte-identical through one
    receive-and-check call, a damaged one is flagged, and the objects come out whole."""
    recs, keys = _records(100, make_chain(1, KVBlockSpec(4, 2, 32, 16, "float32"))[0].spec)
    recs[57] = recs[57][:-3] + bytes([recs[57][-3] ^ 4]) + recs[57][-2:]
    rlens = np.array([len(r) for r in recs], dtype=np.uint64)
    buf = np.empty(int(rlens.sum()), dtype=np.uint8)
    with _serve_bytes(b"".join(recs)) as s:
        s.settimeout(5)
        hlens, status = proto.recv_records(s, buf, rlens, b"".join(keys))
    assert buf.tobytes() == b"".join(recs)
    assert np.flatnonzero(status).tolist() == [57] and int(status[57]) == STATUS_CHECKSUM
    out = objects_from_records(buf, rlens.tolist(), hlens, status, keys, owner=buf)
    assert isinstance(out[57], CorruptBlockError) and all(
        isinstance(o, BlockObject) for i, o in enumerate(out) if i != 57
    )


@pytest.mark.parametrize("chunk", [5000, 64 * 1024 + 8, 256 * 1024])
def test_recv_records_sums_records_longer_than_a_chunk_as_they_arrive(
    impl: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records of 1 MiB (and odd-sized ones) received in chunks smaller than a record, so
    their pages are summed as they arrive: a bit flipped in a middle page, in the last page
    and in the header's checksum field are each caught, and the statuses and header
    lengths equal those of the check on the whole buffer."""
    monkeypatch.setattr(proto, "RECV_CHUNK", chunk)
    big = KVBlockSpec(
        num_layers=4, num_kv_heads=2, head_dim=32, block_size=512, dtype="float32"
    )  # 1 MiB
    odd = KVBlockSpec(num_layers=1, num_kv_heads=1, head_dim=3, block_size=3, dtype="bfloat16")
    r1, k1 = _records(5, big)
    r2, k2 = _records(3, odd, seed=4)
    recs, keys = r1[:2] + r2 + r1[2:], k1[:2] + k2 + k1[2:]
    damaged = {0: len(recs[0]) // 2, 5: len(recs[5]) - 3, 6: 48}
    for i, at in damaged.items():
        r = bytearray(recs[i])
        r[at] ^= 0x20
        recs[i] = bytes(r)
    rlens = np.array([len(r) for r in recs], dtype=np.uint64)
    buf = np.empty(int(rlens.sum()), dtype=np.uint8)
    with _serve_bytes(b"".join(recs)) as s:
        s.settimeout(5)
        hlens, status = proto.recv_records(s, buf, rlens, b"".join(keys))
    want_h, _, want_s = check_records_py(buf, rlens, b"".join(keys))
    assert status.tolist() == want_s.tolist() and hlens.tolist() == want_h.tolist()
    assert sorted(np.flatnonzero(status).tolist()) == sorted(damaged)


def test_recv_records_reports_a_cut_stream_and_a_timeout(impl: str) -> None:
    """A peer that closes midway, and one that stops sending, are
    TransferErrors (never a partial success)."""
    recs, keys = _records(4)
    rlens = np.array([len(r) for r in recs], dtype=np.uint64)
    buf = np.empty(int(rlens.sum()), dtype=np.uint8)
    with _serve_bytes(b"".join(recs), close_after=len(recs[0]) + 10) as s:
        s.settimeout(5)
        with pytest.raises(TransferError, match="closed"):
            proto.recv_records(s, buf, rlens, b"".join(keys))
    a, b = socket.socketpair()
    with a, b:
        a.sendall(recs[0])
        b.settimeout(0.2)
        with pytest.raises(TransferError, match=r"timed out|closed"):
            proto.recv_records(b, buf, rlens, b"".join(keys))


def test_block_with_broken_framing_at_rest_is_a_miss(host_dir: str, impl: str) -> None:
    """A stored record whose header length does not fit it (and one cut short) reads as a
    miss counted corrupt and is deleted; its neighbours read back intact."""
    blocks = make_chain(3)
    with BlockStore(store_config(host_dir)) as store:
        store.put_many(blocks)
        tier = store.tiers["host"]
        txn = tier.begin_read()
        r = bytearray(tier.read_record(txn, blocks[1].key))  # type: ignore[arg-type]
        txn.abort()
        r[8:12] = (len(r) + 1).to_bytes(4, "little")
        tier.overwrite_record(blocks[1].key, bytes(r))  # type: ignore[arg-type]
        tier.overwrite_record(blocks[2].key, b"MKVB")  # type: ignore[arg-type]
        assert store.get(blocks[1].key) is None and store.get(blocks[2].key) is None  # type: ignore[arg-type]
        assert store.stats.corrupt == 2 and not store.contains(blocks[1].key)  # type: ignore[arg-type]
        got = store.get(blocks[0].key)  # type: ignore[arg-type]
        assert got is not None and got.numpy().tobytes() == blocks[0].data.tobytes()


def _write_format_1_tier(path: str, n: int) -> None:
    """A tier as the previous layout wrote it: header and payload as
    two records, no format record."""
    env = lmdb.open(path, map_size=64 << 20, subdir=True, max_dbs=4)
    hdr, data, meta = (env.open_db(name) for name in (b"hdr", b"data", b"meta"))
    with env.begin(write=True) as txn:
        for i, b in enumerate(make_chain(n)):
            h, p = encode(b)
            txn.put(b.key, h, db=hdr)  # type: ignore[arg-type]
            txn.put(b.key, bytes(p), db=data)  # type: ignore[arg-type]
            txn.put(
                b.key,  # type: ignore[arg-type]
                (i + 1).to_bytes(8, "little")
                + (len(h) + p.nbytes).to_bytes(8, "little")
                + bytes(8),
                db=meta,
            )
    env.close()


def test_tier_of_the_previous_format_is_dropped_by_its_writer_and_refused_by_a_reader(
        host_dir: str, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """A reader refuses a format-1 tier (TierFormatError); the owning store drops its blocks
    with a warning (the tier is a cache), writes format 2, and readers then accept it."""
    _write_format_1_tier(host_dir, 4)
    with pytest.raises(TierFormatError):
        TierReader(host_dir)
    with caplog.at_level(logging.WARNING, logger="mooncake.store.tier"):
        store = BlockStore(store_config(host_dir))
    with store:
        assert len(store) == 0 and "dropped its 4 block(s)" in caplog.text
        blocks = make_chain(2)
        store.put_many(blocks)
        with TierReader(host_dir) as reader:
            got = reader.get(blocks[1].key)  # type: ignore[arg-type]
            assert got is not None and got.numpy().tobytes() == blocks[1].data.tobytes()
            del got
    with BlockStore(store_config(host_dir)) as again:  # format 2 now: nothing dropped
        assert len(again) == 2


def _store_in_subprocess(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "import logging, shutil, tempfile; logging.basicConfig()\n"
        "from mooncake.store.native import records_lib; from mooncake.store import BlockStore\n"
        "from tests.store.kvfactories import make_chain, store_config\n"
        "d = tempfile.mkdtemp(dir='/dev/shm'); b = make_chain(2)\n"
        "try:\n"
        "    with BlockStore(store_config(d + '/h')) as s:\n"
        "        s.put_many(b); o = s.get(b[1].key); print(records_lib() "
        "is None, o.numpy().tobytes() == b[1].data.tobytes())\n"
        "finally:\n"
        "    shutil.rmtree(d)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
        cwd=_root(),
    )


def test_records_lib_disabled_by_environment() -> None:
    """MOONCAKE_NATIVE_KERNELS=0: no compiled record checks, and a store still puts and
    reads its blocks (numpy twins)."""
    assert _store_in_subprocess({"MOONCAKE_NATIVE_KERNELS": "0"}).stdout.split() == ["True", "True"]


def test_broken_compiler_falls_back_to_numpy_with_a_warning(tmp_path: Any) -> None:
    """A compiler that fails: no library, a warning naming why, nothing half-written in the
    cache, and the store still works."""
    cc = tmp_path / "cc"
    cc.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo fake '
        "1.0; exit 0; }\necho 'cc: broken' >&2; exit 1\n"
    )
    cc.chmod(0o755)
    cache = tmp_path / "cache"
    out = _store_in_subprocess({"CC": str(cc), "MOONCAKE_KERNEL_CACHE": str(cache)})
    assert out.stdout.split() == ["True", "True"]
    assert "native block checks unavailable" in out.stderr and "broken" in out.stderr
    assert list(cache.glob("*")) == []


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(("heads", "dim", "tokens"), [(2, 64, 16), (2, 16, 16), (1, 8, 3)])
def test_strided_copy_sums_the_payload_in_record_order(heads, dim, tokens):
    """``mc_copy_sum64_strided`` between a paged pool's layout (one segment per layer and
    K|V, a pool stride apart) and a record's (back to back), both ways: the bytes land
    where they belong, nothing else in the pool is written, and the sum is ``sum64`` of
    the payload in record order, whether segments are whole 4 KiB pages or not."""
    from mooncake.store.block_object import sum64_numpy
    from mooncake.store.native import records_lib

    lib = records_lib()
    if lib is None:
        pytest.skip("no compiler: the fused copy is not used")
    rng = np.random.default_rng(heads * dim + tokens)
    pool = rng.integers(0, 2**31, (3, 2, 40, heads, dim), dtype=np.int32)
    block = pool[:, :, 7 : 7 + tokens]
    seg = tokens * heads * dim * 4
    out = np.empty((3, 2, tokens, heads, dim), np.int32)
    s = lib.copy_sum64_strided(out.ctypes.data, seg, block.ctypes.data, pool.strides[1], seg, 6)
    assert np.array_equal(out, block) and s == sum64_numpy(out.tobytes())
    back = np.zeros_like(pool)
    s2 = lib.copy_sum64_strided(
        back[:, :, 7 : 7 + tokens].ctypes.data, pool.strides[1], out.ctypes.data, seg, seg, 6
    )
    assert s2 == s and np.array_equal(back[:, :, 7 : 7 + tokens], block)
    back[:, :, 7 : 7 + tokens] = 0
    assert not back.any()
