"""The KV block object: a small self-describing header plus the raw KV payload.

A block object is what every tier stores and what the transfer layer moves: the header
bytes and the payload bytes travel verbatim (demotion, promotion and a network transfer
never re-encode), and every reader checks them before it hands data out.

Header (little-endian; spec in docs/store.md)::

    0   4  magic b"MKVB"
    4   2  format version (1)
    6   1  dtype code (0 float32, 1 bfloat16, 2 float16)
    7   1  flags (bit 0: has key, bit 1: has parent)
    8   4  header length in bytes, trailing CRC included
    12  4  num_tokens
    16  4  num_layers
    20  4  num_kv_heads
    24  4  head_dim
    28  4  block_size of the spec
    32  4  position: block index in its sequence (0xFFFFFFFF unknown)
    36  4  F = length of the model fingerprint (UTF-8)
    40  8  payload length in bytes
    48  8  payload checksum (algorithm below)
    56  1  checksum algorithm (0 sum64, 1 crc32)
    57  3  padding
    60  4  reserved (0)
    64  16 block key (zeros if none)
    80  16 parent key (zeros if none)
    96  F  model fingerprint
    ..  4n token ids, int32
    ..  4  CRC-32 of all header bytes before it

Payload checksums:

- ``sum64`` (default): the payload as little-endian uint64 words is cut into 4 KiB
  pages; ``sum_j (2j + 1) * page_sum_j mod 2**64``, plus the CRC-32 of any tail bytes
  and the length. Any single flipped bit changes it (an odd weight is invertible mod
  2**64), as does a zeroed, stale or misplaced page (unless its sum happens to match);
  it does not see two words swapped inside one page. Four numpy calls that run at
  memory speed, about twice as fast as zlib's CRC-32, which is what lets a checked
  read keep up with memcpy.
- ``crc32``: zlib's CRC-32, stronger against arbitrary patterns, and slower.

The payload is the C-contiguous ``[num_layers, 2, num_tokens, num_kv_heads, head_dim]``
array (bfloat16 as uint16 bits). Readers get it as a ``pyarrow.Buffer`` wrapping the
tier's memory, and numpy / Arrow tensor views of that buffer, without a copy.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import pyarrow as pa

from mooncake.kvcache.block import KVBlock, KVBlockSpec, KVExport
from mooncake.store.config import CHECKSUMS, ChecksumName
from mooncake.store.native import records_lib
from mooncake.types import BlockKey, DType

MAGIC = b"MKVB"
FORMAT_VERSION = 1
UNKNOWN_POSITION = 0xFFFFFFFF
_FIXED = struct.Struct("<4sHBBIIIIIIIIQQB3xI16s16s")
_CRC = struct.Struct("<I")
_DTYPE_CODES: dict[str, int] = {"float32": 0, "bfloat16": 1, "float16": 2}
_CODE_DTYPES: dict[int, DType] = {0: "float32", 1: "bfloat16", 2: "float16"}
_ZERO_KEY = bytes(16)
_HAS_KEY = 1
_HAS_PARENT = 2


_PAGE_WORDS = 512  # 4 KiB pages of uint64 words
_WEIGHTS = 2 * np.arange(1 << 16, dtype=np.uint64) + 1  # odd page weights, grown on demand
_MASK64 = (1 << 64) - 1
_U64 = np.dtype("<u8")  # a dtype object: parsing a dtype string costs a microsecond per call
_add_reduce = (
    np.add.reduce
)  # ndarray.sum goes through a Python wrapper: half a microsecond per call
PAGE_BYTES = _PAGE_WORDS * 8


class CorruptBlockError(ValueError):
    """A header or payload failed its checks; the block must be treated as a miss."""


def crc32(data: Any) -> int:
    """CRC-32 of a bytes-like object (zlib; releases the GIL)."""
    return zlib.crc32(data) & 0xFFFFFFFF


def sum64(data: Any) -> int:
    """Page-weighted 64-bit sum of a 1-D bytes-like object (see the module docstring).

    Computed by the compiled library where it is built (one call at memory speed, faster
    than the numpy version's four passes), else by :func:`sum64_numpy`.
    """
    lib = records_lib()
    if lib is None:
        return sum64_numpy(data)
    view = pa.py_buffer(data)
    return int(lib.sum64(view.address, view.size))


def sum64_numpy(data: Any) -> int:
    """:func:`sum64` in numpy: the twin of the compiled one (identical results).

    Kept to four numpy calls: per-call overhead, not bandwidth, limits small blocks.
    """
    global _WEIGHTS
    n = memoryview(data).nbytes
    nwords = n >> 3
    words = (
        np.frombuffer(data, dtype=_U64, count=nwords) if n & 7 else np.frombuffer(data, dtype=_U64)
    )
    npages = nwords >> 9
    if not n & (PAGE_BYTES - 1) and 0 < npages < len(_WEIGHTS):
        # Whole pages (every KV block shape here): three numpy calls, no method wrappers.
        return (
            int(_add_reduce(words.reshape(npages, _PAGE_WORDS), axis=1).dot(_WEIGHTS[:npages])) + n
        ) & _MASK64
    if npages >= len(_WEIGHTS):
        _WEIGHTS = 2 * np.arange(2 * npages + 2, dtype=np.uint64) + 1
    # uint64 array arithmetic wraps mod 2**64 silently, as intended.
    total = (
        int(
            np.dot(words[: npages << 9].reshape(npages, _PAGE_WORDS).sum(axis=1), _WEIGHTS[:npages])
        )
        if npages
        else 0
    )
    if nwords & (_PAGE_WORDS - 1):
        total += int(words[npages << 9 :].sum()) * (2 * npages + 1)
    if n & 7:
        total += zlib.crc32(memoryview(data).cast("B")[nwords << 3 :]) << 32
    return (total + n) & _MASK64


def checksum(data: Any, algo: ChecksumName = "sum64") -> int:
    """Payload checksum with algorithm ``algo``."""
    if algo == "sum64":
        return sum64(data)
    if algo == "crc32":
        return crc32(data)
    raise ValueError(f"checksum: unknown algorithm {algo!r}")


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """Decoded header of one block object."""

    key: BlockKey | None
    parent: BlockKey | None
    token_ids: tuple[int, ...]
    spec: KVBlockSpec
    model_fingerprint: str
    payload_nbytes: int
    payload_checksum: int
    checksum_algo: ChecksumName = "sum64"
    position: int | None = None
    version: int = FORMAT_VERSION

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return self.spec.shape(self.num_tokens)


def encode_header(block: KVBlock, payload_checksum: int, position: int | None = None,
                  algo: ChecksumName = "sum64") -> bytes:  # fmt: skip
    """Header bytes for ``block`` whose payload checksum (by ``algo``) is ``payload_checksum``."""
    return encode_header_of(
        block.key, block.parent, block.token_ids, block.spec, block.model_fingerprint,
        block.data.nbytes, payload_checksum, position, algo,
    )  # fmt: skip


def encode_header_of(key: BlockKey | None, parent: BlockKey | None, token_ids: Sequence[int],
                     spec: KVBlockSpec, fingerprint: str, payload_nbytes: int,
                     payload_checksum: int, position: int | None = None,
                     algo: ChecksumName = "sum64") -> bytes:  # fmt: skip
    """:func:`encode_header` from the block's fields, for a writer that has no
    ``KVBlock`` (an engine laying many records out after one batched copy)."""
    fp = fingerprint.encode()
    toks = np.asarray(token_ids, dtype="<i4").tobytes()
    flags = (_HAS_KEY if key is not None else 0) | (_HAS_PARENT if parent is not None else 0)
    length = _FIXED.size + len(fp) + len(toks) + _CRC.size
    fixed = _FIXED.pack(
        MAGIC, FORMAT_VERSION, _DTYPE_CODES[spec.dtype], flags, length,
        len(token_ids), spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.block_size,
        UNKNOWN_POSITION if position is None else position, len(fp),
        payload_nbytes, payload_checksum, CHECKSUMS.index(algo), 0,
        key or _ZERO_KEY, parent or _ZERO_KEY,
    )  # fmt: skip
    body = fixed + fp + toks
    return body + _CRC.pack(crc32(body))


def header_length(block: KVBlock) -> int:
    """Length of :func:`encode_header`'s bytes for ``block`` (without encoding them)."""
    return header_length_for(block.model_fingerprint, block.num_tokens)


def header_length_for(fingerprint: str, num_tokens: int) -> int:
    """Length of the header of a block of ``num_tokens`` tokens of model ``fingerprint``."""
    return _FIXED.size + len(fingerprint.encode()) + 4 * num_tokens + _CRC.size


def decode_header(raw: Any) -> BlockHeader:
    """Parse and check header bytes; raises :class:`CorruptBlockError` on any mismatch."""
    mv = memoryview(raw).cast("B")
    if len(mv) < _FIXED.size + _CRC.size:
        raise CorruptBlockError(f"header too short ({len(mv)} bytes)")
    (magic, version, dcode, flags, length, ntok, nl, nh, hd, bs, pos, fplen,
     nbytes, pcheck, algo, _reserved, key, parent) = _FIXED.unpack_from(mv)  # fmt: skip
    if magic != MAGIC:
        raise CorruptBlockError(f"bad magic {bytes(magic)!r}")
    if version != FORMAT_VERSION:
        raise CorruptBlockError(f"unsupported format version {version}")
    if length != len(mv) or length != _FIXED.size + fplen + 4 * ntok + _CRC.size:
        raise CorruptBlockError(f"header length {length} does not match its {len(mv)} bytes")
    (crc,) = _CRC.unpack_from(mv, length - _CRC.size)
    if crc != crc32(mv[: length - _CRC.size]):
        raise CorruptBlockError("header checksum mismatch")
    if algo >= len(CHECKSUMS):
        raise CorruptBlockError(f"unknown checksum algorithm {algo}")
    if dcode not in _CODE_DTYPES:
        raise CorruptBlockError(f"unknown dtype code {dcode}")
    try:
        spec = KVBlockSpec(
            num_layers=nl, num_kv_heads=nh, head_dim=hd, block_size=bs, dtype=_CODE_DTYPES[dcode]
        )
        fp = bytes(mv[_FIXED.size : _FIXED.size + fplen]).decode()
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptBlockError(f"bad header field: {e}") from e
    toks = np.frombuffer(mv, dtype="<i4", count=ntok, offset=_FIXED.size + fplen)
    if nbytes != spec.bytes_per_token * ntok:
        raise CorruptBlockError(f"payload length {nbytes} does not match shape {spec.shape(ntok)}")
    return BlockHeader(
        key=BlockKey(bytes(key)) if flags & _HAS_KEY else None,
        parent=BlockKey(bytes(parent)) if flags & _HAS_PARENT else None,
        token_ids=tuple(toks.tolist()),
        spec=spec,
        model_fingerprint=fp,
        payload_nbytes=nbytes,
        payload_checksum=pcheck,
        checksum_algo=CHECKSUMS[algo],
        position=None if pos == UNKNOWN_POSITION else pos,
        version=version,
    )


_HEADER_CACHE: dict[bytes, BlockHeader] = {}
_HEADER_CACHE_MAX = 1 << 16


def _decode_cached(raw: bytes) -> BlockHeader:
    """decode_header memoised on the exact header bytes: identical bytes decode (and
    pass or fail the header CRC) identically, so only a hit on the same bytes is reused."""
    h = _HEADER_CACHE.get(raw)
    if h is None:
        h = decode_header(raw)
        if len(_HEADER_CACHE) >= _HEADER_CACHE_MAX:
            _HEADER_CACHE.clear()
        _HEADER_CACHE[raw] = h
    return h


def payload_view(block: KVBlock) -> memoryview:
    """The block's KV bytes without a copy (a contiguous copy only if ``data`` is strided)."""
    return np.ascontiguousarray(block.data).data.cast("B")


def encode(
    block: KVBlock, position: int | None = None, algo: ChecksumName = "sum64"
) -> tuple[bytes, memoryview]:
    """(header bytes, payload view) of ``block``; the payload is not copied."""
    payload = payload_view(block)
    return encode_header(block, checksum(payload, algo), position, algo), payload


class BlockObject:
    """A checked block read from a tier or off the wire.

    ``payload`` wraps the tier's (or receive buffer's) memory without a copy. A view into
    an LMDB tier stays valid while ``owner`` (the read transaction) is open: keep the
    object (or the batch that returned it) alive, or call :meth:`to_kvblock` /
    ``np.array(obj.numpy())`` to take a private copy.
    """

    __slots__ = ("_owner", "header", "header_bytes", "payload")

    def __init__(
        self, header: BlockHeader, header_bytes: bytes, payload: pa.Buffer, owner: object = None
    ) -> None:
        self.header = header
        self.header_bytes = header_bytes
        self.payload = payload
        self._owner = owner  # keeps the memory behind ``payload`` alive

    @classmethod
    def from_parts(
        cls,
        header_raw: Any,
        payload_raw: Any,
        owner: object = None,
        verify: bool = True,
        buffer: pa.Buffer | None = None,
    ) -> BlockObject:
        """Check header and (if ``verify``) payload checksum; raises :class:`CorruptBlockError`.

        ``buffer``: the Arrow buffer to expose as the payload, when the caller has already
        wrapped the memory of ``payload_raw`` (a tier does, so that views keep its read
        transaction alive); the checksum then reads ``payload_raw`` (a memoryview is read
        faster than an Arrow buffer)."""
        hb = bytes(header_raw)
        header = _HEADER_CACHE.get(hb) or _decode_cached(hb)
        raw = memoryview(payload_raw).cast(
            "B"
        )  # numpy reads a memoryview faster than an Arrow buffer
        if raw.nbytes != header.payload_nbytes:
            raise CorruptBlockError(
                f"payload has {raw.nbytes} bytes, header says {header.payload_nbytes}"
            )
        if verify:
            algo = header.checksum_algo
            if (sum64(raw) if algo == "sum64" else checksum(raw, algo)) != header.payload_checksum:
                raise CorruptBlockError("payload checksum mismatch")
        if buffer is None:
            buffer = payload_raw if isinstance(payload_raw, pa.Buffer) else pa.py_buffer(raw)
        return cls(header, hb, buffer, owner)

    @classmethod
    def from_block(
        cls, block: KVBlock, position: int | None = None, algo: ChecksumName = "sum64"
    ) -> BlockObject:
        """Wrap an in-memory block (no copy of its KV data)."""
        hdr, payload = encode(block, position, algo)
        return cls(decode_header(hdr), hdr, pa.py_buffer(payload), block.data)

    @property
    def key(self) -> BlockKey | None:
        return self.header.key

    @property
    def nbytes(self) -> int:
        """Bytes the object occupies in a tier (header + payload)."""
        return len(self.header_bytes) + self.header.payload_nbytes

    def numpy(self) -> np.ndarray:
        """Read-only ``[layers, 2, tokens, kv_heads, head_dim]`` view of the payload (no copy)."""
        return np.frombuffer(self.payload, dtype=self.header.spec.numpy_dtype).reshape(
            self.header.shape
        )

    def arrow_tensor(self) -> pa.Tensor:
        """The payload as an Arrow tensor over the same memory (no copy)."""
        return pa.Tensor.from_numpy(self.numpy())

    def to_kvblock(self, copy: bool = True) -> KVBlock:
        """A :class:`KVBlock`; ``copy=False`` keeps a view tied to this object's lifetime."""
        h = self.header
        data = np.array(self.numpy()) if copy else self.numpy()
        return KVBlock(key=h.key, parent=h.parent, token_ids=h.token_ids, data=data, spec=h.spec,
                       model_fingerprint=h.model_fingerprint)  # fmt: skip

    def release(self) -> None:
        """Drop the reference to the backing memory owner (the view must not be used after)."""
        self._owner = None


def export_from_objects(objs: Sequence[BlockObject], next_token_ids: Sequence[int] = (),
                        cache_salt: str | None = None, copy: bool = True) -> KVExport:  # fmt: skip
    """A :class:`KVExport` for ``engine.add_request(..., kv=...)`` from a prefix's blocks.

    Args:
        objs: the blocks in sequence order (e.g. ``store.get_many(keys)`` up to the first miss).
        next_token_ids: tokens sampled but not yet in the KV (the prefill's first token).
        cache_salt: the salt the keys were made with.
        copy: copy the KV out of the tier (``False`` keeps zero-copy views, valid while
            ``objs`` are alive).
    Raises:
        ValueError: no blocks, a broken parent chain, or mixed models/shapes.
    """
    if not objs:
        raise ValueError("objs: need at least one block")
    first = objs[0].header
    for prev, cur in pairwise(objs):
        if cur.header.parent != prev.header.key:
            raise ValueError("objs: blocks do not form one chain (parent != previous key)")
        if (cur.header.spec, cur.header.model_fingerprint) != (first.spec, first.model_fingerprint):
            raise ValueError("objs: blocks come from different models or block shapes")
    blocks = [o.to_kvblock(copy=copy) for o in objs]
    return KVExport(
        blocks=blocks,
        token_ids=[t for b in blocks for t in b.token_ids],
        next_token_ids=list(next_token_ids),
        spec=first.spec,
        model_fingerprint=first.model_fingerprint,
        cache_salt=cache_salt,
    )


__all__ = [
    "CHECKSUMS",
    "FORMAT_VERSION",
    "MAGIC",
    "PAGE_BYTES",
    "BlockHeader",
    "BlockObject",
    "ChecksumName",
    "CorruptBlockError",
    "checksum",
    "crc32",
    "decode_header",
    "encode",
    "encode_header",
    "encode_header_of",
    "export_from_objects",
    "header_length",
    "payload_view",
    "sum64",
    "sum64_numpy",
]
