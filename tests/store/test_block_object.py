from __future__ import annotations

import zlib

import numpy as np
import pytest

from mooncake.kvcache.block import KVBlockSpec
from mooncake.store.block_object import (
    BlockObject,
    CorruptBlockError,
    decode_header,
    encode,
    sum64,
    sum64_numpy,
)
from mooncake.store.native import records_lib
from tests.store.kvfactories import TINY, make_chain


def test_header_round_trip_keeps_every_field() -> None:
    """Encoding then decoding a header gives back key, parent, tokens, shape,
    dtype, fingerprint, position."""
    b = make_chain(2)[1]
    hdr, payload = encode(b, position=1)
    h = decode_header(hdr)
    assert (h.key, h.parent, h.token_ids, h.spec, h.model_fingerprint) == (
        b.key,
        b.parent,
        b.token_ids,
        b.spec,
        b.model_fingerprint,
    )
    assert h.position == 1 and h.payload_nbytes == b.data.nbytes == payload.nbytes
    assert h.shape == b.data.shape


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_object_views_payload_without_copy(dtype: str) -> None:
    """A block object over a payload buffer exposes numpy/Arrow views of the
    same memory, byte-identical."""
    spec = KVBlockSpec(num_layers=3, num_kv_heads=2, head_dim=4, block_size=4, dtype=dtype)  # type: ignore[arg-type]
    b = make_chain(1, spec)[0]
    hdr, payload = encode(b)
    buf = bytearray(payload)
    obj = BlockObject.from_parts(hdr, buf)
    view = obj.numpy()
    assert view.dtype == b.data.dtype and view.tobytes() == b.data.tobytes()
    assert np.shares_memory(view, np.frombuffer(buf, np.uint8))
    assert obj.arrow_tensor().shape == b.data.shape
    assert obj.to_kvblock().data.tobytes() == b.data.tobytes()


def test_flipped_payload_byte_is_detected() -> None:
    """One flipped payload bit fails the payload checksum."""
    b = make_chain(1)[0]
    hdr, payload = encode(b)
    buf = bytearray(payload)
    buf[17] ^= 0x01
    with pytest.raises(CorruptBlockError, match="payload checksum"):
        BlockObject.from_parts(hdr, buf)


@pytest.mark.parametrize("offset", [0, 5, 13, 60, -1])
def test_damaged_header_is_detected(offset: int) -> None:
    """A damaged header byte anywhere (magic, dtype, shape, key, CRC) is rejected."""
    hdr = bytearray(encode(make_chain(1)[0])[0])
    hdr[offset] ^= 0x40
    with pytest.raises(CorruptBlockError):
        decode_header(hdr)


def test_truncated_payload_and_header_are_detected() -> None:
    """A payload shorter than the header says, or a truncated header, is corrupt."""
    hdr, payload = encode(make_chain(1)[0])
    with pytest.raises(CorruptBlockError, match="payload has"):
        BlockObject.from_parts(hdr, bytes(payload)[:-2])
    with pytest.raises(CorruptBlockError):
        decode_header(hdr[:-3])


def test_block_object_sizes() -> None:
    """nbytes counts header plus payload; the tiny spec's payload is 512 bytes."""
    obj = BlockObject.from_block(make_chain(1)[0])
    assert obj.header.payload_nbytes == TINY.bytes_per_block == 512
    assert obj.nbytes == len(obj.header_bytes) + 512


@pytest.mark.parametrize("nbytes", [8, 4096 * 3, 4096 * 3 + 24, 4096 * 3 + 5, 32 * 1024])
def test_sum64_sees_every_single_bit_flip_and_page_damage(nbytes: int) -> None:
    """sum64 changes for any flipped bit (sampled over every byte), a swapped, zeroed or
    stale page, and a tail byte."""
    rng = np.random.default_rng(nbytes)
    buf = bytearray(rng.integers(0, 256, size=nbytes, dtype=np.uint8).tobytes())
    ref = sum64(buf)
    for pos in range(nbytes):
        bit = 1 << int(rng.integers(0, 8))
        buf[pos] ^= bit
        assert sum64(buf) != ref, f"flip at byte {pos} not seen"
        buf[pos] ^= bit
    if nbytes >= 2 * 4096:
        swapped = bytearray(buf)
        swapped[:4096], swapped[4096:8192] = buf[4096:8192], buf[:4096]
        zeroed = bytearray(buf)
        zeroed[4096:8192] = bytes(4096)
        assert sum64(swapped) != ref and sum64(zeroed) != ref
    assert sum64(buf + b"\x00") != ref  # length is part of it


@pytest.mark.parametrize("algo", ["sum64", "crc32"])
def test_checksum_algorithm_is_recorded_in_the_header(algo: str) -> None:
    """The header names its checksum algorithm and a reader verifies with that one."""
    b = make_chain(1)[0]
    hdr, payload = encode(b, algo=algo)  # type: ignore[arg-type]
    assert decode_header(hdr).checksum_algo == algo
    bad = bytearray(payload)
    bad[0] ^= 1
    BlockObject.from_parts(hdr, payload)
    with pytest.raises(CorruptBlockError):
        BlockObject.from_parts(hdr, bad)


def test_export_from_objects_rebuilds_an_importable_export() -> None:
    """Blocks of one chain become a KVExport with their tokens in
    order; a broken chain is refused."""
    from mooncake.store.block_object import export_from_objects

    chain = make_chain(3)
    objs = [BlockObject.from_block(b) for b in chain]
    kv = export_from_objects(objs, next_token_ids=[7])
    assert kv.token_ids == [t for b in chain for t in b.token_ids] and kv.next_token_ids == [7]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(kv.blocks, chain))
    with pytest.raises(ValueError, match="chain"):
        export_from_objects([objs[0], objs[2]])
    with pytest.raises(ValueError, match="at least one"):
        export_from_objects([])


def _sum64_reference(data: bytes) -> int:
    """sum64 as the module docstring defines it, in plain Python."""
    n = len(data)
    words = [int.from_bytes(data[i : i + 8], "little") for i in range(0, n - n % 8, 8)]
    total = sum((2 * (j // 512) + 1) * w for j, w in enumerate(words))
    if n % 8:
        total += zlib.crc32(data[n - n % 8 :]) << 32
    return (total + n) % 2**64


@pytest.mark.parametrize(
    "nbytes", [0, 7, 8, 4096, 4096 * 3, 4096 * 3 + 24, 4096 * 3 + 5, 32 * 1024]
)
def test_sum64_numpy_and_compiled_agree_with_the_definition(nbytes: int) -> None:
    """sum64, its numpy twin (whole-page fast path and general path), the compiled mc_sum64
    and mc_copy_sum64 (where a compiler is present) equal the plain-Python definition,
    carries and odd tails included."""
    rng = np.random.default_rng(nbytes + 1)
    rows = rng.integers(0, 256, size=(5, nbytes), dtype=np.uint8)
    rows[0] = 0xFF  # carries: every word at its maximum
    want = [_sum64_reference(r.tobytes()) for r in rows]
    assert [sum64(r.tobytes()) for r in rows] == want
    assert [sum64_numpy(r.tobytes()) for r in rows] == want
    lib = records_lib()
    if lib is not None:
        assert [lib.sum64(r.ctypes.data, nbytes) for r in rows] == want
        dst = np.full(nbytes + 1, 0xAB, dtype=np.uint8)
        for r, w in zip(
            rows, want
        ):  # copy and sum in one pass: same sum, exact copy, nothing past the end
            assert lib.copy_sum64(dst.ctypes.data, r.ctypes.data, nbytes) == w
            assert dst[:nbytes].tobytes() == r.tobytes() and dst[nbytes] == 0xAB
