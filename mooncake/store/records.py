"""Block records: one block as one byte string, the unit a tier stores and the wire carries.

Layout (tier format 2; docs/store.md)::

    header (its own length at bytes 8..12) | zero padding | payload
    0                                      hlen           payload_offset(hlen)
                                                          = hlen rounded up to 64

One record means one LMDB lookup per block (a tier read, the block server) and one
iovec per block on the wire; the payload sits at a 64-byte aligned offset of the
record. Reading a record splits it by the header length it names, and every check of
:meth:`BlockObject.from_parts` still runs on the parts: a record whose header length is
out of range is as corrupt as a bad header.

Records laid back to back (a transfer response) are checked together by
:func:`check_records`: per record, framing, payload length, key and ``sum64`` against the
header's fixed fields, in the compiled library (``mooncake.store.native``) or its numpy
twin here (identical results); :func:`objects_from_records` then decodes the headers
(memoised; that checks each header's CRC and the rest of it) and builds the objects.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from mooncake.kvcache import copies
from mooncake.kvcache.block import KVBlock, KVBlockSpec
from mooncake.store.block_object import (
    _HEADER_CACHE,
    MAGIC,
    BlockObject,
    CorruptBlockError,
    _decode_cached,
    checksum,
    encode_header,
    header_length,
    header_length_for,
    payload_view,
    sum64,
    sum64_numpy,
)
from mooncake.store.config import ChecksumName
from mooncake.store.native import records_lib
from mooncake.types import BlockKey

RECORD_ALIGN = 64
MIN_HEADER = 100  # fixed fields + CRC
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
STATUS_OK = 0
STATUS_FRAMING = 1
STATUS_LENGTH = 2
STATUS_CHECKSUM = 3
STATUS_KEY = 4
STATUS_OTHER_ALGO = 5
_STATUS_TEXT = {
    1: "bad record framing",
    2: "payload length mismatch",
    3: "payload checksum mismatch",
    4: "block key mismatch",
}


def payload_offset(hlen: int) -> int:
    """Where the payload starts in a record whose header is ``hlen`` bytes."""
    return (hlen + RECORD_ALIGN - 1) & -RECORD_ALIGN


def pack_record(header: bytes, payload: Any, out: bytearray | None = None) -> memoryview:
    """The record of ``header`` and ``payload``, written into ``out`` (grown as needed,
    reused by a writer so a put does not allocate and fault in fresh pages each time)."""
    pv = memoryview(payload).cast("B")
    hlen, off = len(header), payload_offset(len(header))
    size = off + pv.nbytes
    if out is None:
        out = bytearray(size)
    elif len(out) < size:
        out.extend(bytes(size - len(out)))
    mv = memoryview(out)
    mv[:hlen] = header
    mv[hlen:off] = bytes(off - hlen)
    mv[off:size] = pv
    return mv[:size]


def encode_record(
    block: KVBlock, position: int | None, algo: ChecksumName, out: bytearray
) -> memoryview:
    """The record of ``block``, written into ``out`` (grown as needed): the payload is
    copied in and checksummed in the same pass (compiled ``sum64``), then the header with
    that checksum goes in front. One read of the payload instead of two."""
    payload = payload_view(block)
    hlen = header_length(block)
    off = payload_offset(hlen)
    n = payload.nbytes
    size = off + n
    if len(out) < size:
        out.extend(bytes(size - len(out)))
    mv = memoryview(out)
    lib = records_lib()
    if algo == "sum64" and lib is not None and n:
        dst = pa.py_buffer(mv[off:size]).address
        check = int(lib.copy_sum64(dst, pa.py_buffer(payload).address, n))
    else:
        mv[off:size] = payload
        check = checksum(mv[off:size], algo)
    header = encode_header(block, check, position, algo)
    mv[:hlen] = header
    mv[hlen:off] = bytes(off - hlen)
    return mv[:size]


def record_size(spec: KVBlockSpec, fingerprint: str, num_tokens: int) -> int:
    """Bytes of the record of a block of ``num_tokens`` tokens (header, padding, payload)."""
    return payload_offset(header_length_for(fingerprint, num_tokens)) + (
        spec.bytes_per_token * num_tokens
    )


def write_record_in_place(
    out: memoryview,
    key: BlockKey | None,
    parent: BlockKey | None,
    token_ids: tuple[int, ...],
    spec: KVBlockSpec,
    fingerprint: str,
    position: int | None,
    algo: ChecksumName,
    fill: Callable[[np.ndarray], int | None],
) -> int:
    """Lay a block's record out in ``out`` (writable, at least :func:`record_size`
    bytes) with the payload written by ``fill`` straight into its place: ``fill(view)``
    gets the payload as a writable numpy array of the block's shape and dtype (an
    engine copies its pool's block into it: the block's only copy) and may return the
    payload's sum64 if it computed it on the way (one pass instead of two); otherwise the
    payload is checksummed in place. Then the header goes in front. Returns the
    record's length."""
    n = len(token_ids)
    off = payload_offset(header_length_for(fingerprint, n))
    nbytes = spec.bytes_per_token * n
    payload = np.frombuffer(out, dtype=spec.numpy_dtype, count=nbytes // np.dtype(
        spec.numpy_dtype).itemsize, offset=off).reshape(spec.shape(n))  # fmt: skip
    summed = fill(payload)
    if summed is None or algo != "sum64":
        summed = checksum(out[off : off + nbytes], algo)
        copies.count("check.export", nbytes)
    block = KVBlock(key, parent, token_ids, payload, spec, fingerprint)
    header = encode_header(block, summed, position, algo)
    assert len(header) <= off
    out[: len(header)] = header
    out[len(header) : off] = bytes(off - len(header))
    return off + nbytes


@dataclass(frozen=True, slots=True)
class PackedRecord:
    """A record already laid out in shared memory (an engine wrote it in place,
    :func:`write_record_in_place`): LMDB copies it into its map, nothing stages it."""

    record: memoryview
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nbytes", self.record.nbytes)

    staged = False
    """``write`` hands out the record itself."""

    def write(self, out: bytearray) -> memoryview:
        return self.record[:]


@dataclass(frozen=True, slots=True)
class StoredParts:
    """A record to write from a header and payload as they are (a checked object, a
    promotion): copied verbatim."""

    header: bytes
    payload: Any
    nbytes: int = field(init=False)
    """Header + payload bytes (what a tier counts against its capacity); computed once,
    a put reads it several times."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "nbytes", len(self.header) + memoryview(self.payload).nbytes)

    staged = True
    """``write`` copies into the stage (LMDB then copies the stage into its map)."""

    def write(self, out: bytearray) -> memoryview:
        return pack_record(self.header, self.payload, out)


@dataclass(frozen=True, slots=True)
class NewBlock:
    """A record to write from a KV block, encoded while its payload is copied in."""

    block: KVBlock
    position: int | None
    algo: ChecksumName
    nbytes: int = field(init=False)
    """Header + payload bytes; computed once (a put reads it several times)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "nbytes", header_length(self.block) + self.block.data.nbytes)

    staged = True
    """``write`` copies into the stage (LMDB then copies the stage into its map)."""

    def write(self, out: bytearray) -> memoryview:
        return encode_record(self.block, self.position, self.algo, out)


RecordSource = StoredParts | NewBlock | PackedRecord
"""What a tier writes as one record."""


def split_record(rec: Any) -> tuple[memoryview, memoryview]:
    """(header, payload) views of one record; raises :class:`CorruptBlockError` when the
    header length it names does not fit the record."""
    mv = memoryview(rec).cast("B")
    n = len(mv)
    if n < MIN_HEADER:
        raise CorruptBlockError(f"record too short ({n} bytes)")
    (hlen,) = _U32.unpack_from(mv, 8)
    off = payload_offset(hlen)
    if hlen < MIN_HEADER or off > n:
        raise CorruptBlockError(f"record header length {hlen} out of range for {n} bytes")
    return mv[:hlen], mv[off:]


def object_from_record(
    rec: Any,
    owner: object = None,
    verify: bool = True,
    key: BlockKey | None = None,
    address: int | None = None,
) -> BlockObject:
    """Check one record (header, payload length, checksum if ``verify``, and ``key`` if
    given) and wrap it without a copy; raises :class:`CorruptBlockError`.

    ``owner`` is kept alive by every view of the payload (an LMDB read transaction or a
    receive buffer); ``address``: the record's address, when the caller has it."""
    if address is None:
        address = pa.py_buffer(rec).address
    hv, pv = split_record(rec)
    hb = bytes(hv)
    header = _HEADER_CACHE.get(hb) or _decode_cached(hb)
    plen = pv.nbytes
    if plen != header.payload_nbytes:
        raise CorruptBlockError(f"payload has {plen} bytes, header says {header.payload_nbytes}")
    off = payload_offset(hv.nbytes)
    if verify:
        algo = header.checksum_algo
        if algo == "sum64":
            lib = records_lib()
            got = lib.sum64(address + off, plen) if lib is not None else sum64(pv)
        else:
            got = checksum(pv, algo)
        copies.count("check.read", plen)
        if got != header.payload_checksum:
            raise CorruptBlockError("payload checksum mismatch")
    if key is not None and header.key != key:
        raise CorruptBlockError("header key does not match the record key")
    buf = (
        pa.foreign_buffer(address + off, plen, base=owner if owner is not None else rec)
        if plen
        else pa.py_buffer(b"")
    )
    return BlockObject(header, hb, buf, owner)


def check_records(
    buf: np.ndarray, rlens: np.ndarray, keys: bytes | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check records laid back to back in ``buf`` (record ``i`` is ``rlens[i]`` bytes).

    Args:
        buf: ``[sum(rlens)]`` uint8, C-contiguous.
        rlens: ``[n]`` uint64.
        keys: ``n`` x 16 key bytes each record's header must name, or ``None``.
    Returns:
        ``hlens`` ``[n]`` int32 (0 where unframed), ``sums`` ``[n]`` uint64 (the payload's
        ``sum64`` where it was computed, else 0), ``status`` ``[n]`` uint8 (``STATUS_*``).
    """
    n = len(rlens)
    rlens = np.ascontiguousarray(rlens, dtype=np.uint64)
    if buf.nbytes != int(rlens.sum()):
        raise ValueError(f"buffer has {buf.nbytes} bytes, the records add up to {int(rlens.sum())}")
    if keys is not None and len(keys) != 16 * n:
        raise ValueError(f"keys: {len(keys)} bytes for {n} records")
    lib = records_lib()
    if lib is None:
        return check_records_py(buf, rlens, keys)
    hlens = np.zeros(n, dtype=np.int32)
    sums = np.zeros(n, dtype=np.uint64)
    status = np.zeros(n, dtype=np.uint8)
    kbuf = None if keys is None else np.frombuffer(keys, dtype=np.uint8)
    lib.check_records(
        buf.ctypes.data,
        rlens.ctypes.data,
        n,
        None if kbuf is None else kbuf.ctypes.data,
        hlens.ctypes.data,
        sums.ctypes.data,
        status.ctypes.data,
    )
    return hlens, sums, status


def check_records_py(
    buf: np.ndarray, rlens: np.ndarray, keys: bytes | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The numpy twin of the compiled :func:`check_records` (same results, slower)."""
    n = len(rlens)
    hlens = np.zeros(n, dtype=np.int32)
    sums = np.zeros(n, dtype=np.uint64)
    status = np.zeros(n, dtype=np.uint8)
    mv = memoryview(buf.data).cast("B")
    off = 0
    for i, rlen in enumerate(rlens.tolist()):
        status[i], hlens[i], sums[i] = _check_one(
            mv[off : off + rlen], None if keys is None else keys[16 * i : 16 * i + 16]
        )
        off += rlen
    return hlens, sums, status


def _check_one(r: memoryview, key: bytes | None) -> tuple[int, int, int]:
    """(status, header length, sum64) of one record: block_records.c's check_one."""
    n = len(r)
    if n < MIN_HEADER or bytes(r[:4]) != MAGIC:
        return STATUS_FRAMING, 0, 0
    (hlen,) = _U32.unpack_from(r, 8)
    off = payload_offset(hlen)
    if hlen < MIN_HEADER or off > n:
        return STATUS_FRAMING, 0, 0
    if n - off != _U64.unpack_from(r, 40)[0]:
        return STATUS_LENGTH, hlen, 0
    if key is not None and (not r[7] & 1 or bytes(r[64:80]) != key):
        return STATUS_KEY, hlen, 0
    if r[56] != 0:
        return STATUS_OTHER_ALGO, hlen, 0
    s = sum64_numpy(r[off:])
    return (STATUS_OK if s == _U64.unpack_from(r, 48)[0] else STATUS_CHECKSUM), hlen, s


def objects_from_records(
    buf: np.ndarray,
    rlens: Sequence[int],
    hlens: np.ndarray,
    status: np.ndarray,
    keys: Sequence[BlockKey] | None = None,
    owner: object = None,
) -> list[BlockObject | CorruptBlockError]:
    """The checked objects of records back to back in ``buf``, given :func:`check_records`'
    ``hlens`` and ``status``; each views ``buf`` (kept alive through ``owner``).

    Returns, per record, the object or the :class:`CorruptBlockError` it failed with (a
    record the batch check refused is checked again on its own for its precise error)."""
    n = len(rlens)
    if n == 0:
        return []
    pbuf = pa.py_buffer(buf)
    rlens = list(rlens)
    r0, h0 = rlens[0], int(hlens[0])
    if h0 and not status.any() and rlens.count(r0) == n and (hlens == h0).all():
        # The common case: every record ok and laid out alike. Header bytes come out in
        # one copy; objects are built in C-level loops.
        total = n * r0
        blob = buf[:total].reshape(n, r0)[:, :h0].tobytes()
        headers = np.frombuffer(blob, f"V{h0}").tolist()  # one bytes object each, cut in C
        decoded = list(map(_HEADER_CACHE.get, headers))
        if all(decoded):  # (``None in`` would call BlockHeader.__eq__ per record)
            off = payload_offset(h0)
            slices = list(map(pbuf.slice, range(off, total, r0), [r0 - off] * n))
            return list(map(BlockObject, decoded, headers, slices, [owner] * n))  # type: ignore[arg-type]
    out: list[BlockObject | CorruptBlockError] = []
    base = pbuf.address
    start = 0
    status_list = status.tolist()
    for i, rlen in enumerate(rlens):
        code = status_list[i]
        key = None if keys is None else keys[i]
        rec = pbuf.slice(start, rlen)
        try:
            # ok: sum64, length and key already compared; the header decode checks the rest
            obj = object_from_record(
                rec,
                owner if owner is not None else buf,
                verify=code != STATUS_OK,
                key=key,
                address=base + start,
            )
        except CorruptBlockError as e:
            out.append(e)
        else:
            if code in (STATUS_OK, STATUS_OTHER_ALGO):
                out.append(obj)
            else:  # the batch check refused what a check on its own accepted: trust neither
                out.append(
                    CorruptBlockError(f"record check failed: {_STATUS_TEXT.get(code, code)}")
                )
        start += rlen
    return out


__all__ = [
    "RECORD_ALIGN",
    "STATUS_CHECKSUM",
    "STATUS_FRAMING",
    "STATUS_KEY",
    "STATUS_LENGTH",
    "STATUS_OK",
    "STATUS_OTHER_ALGO",
    "NewBlock",
    "PackedRecord",
    "RecordSource",
    "StoredParts",
    "check_records",
    "check_records_py",
    "encode_record",
    "object_from_record",
    "objects_from_records",
    "pack_record",
    "payload_offset",
    "record_size",
    "split_record",
    "write_record_in_place",
]
