"""Reading store records straight out of another process's export arena: the decode
engine's side of the same-host hand-off (``mooncake.worker.arena_handoff``).

The prefill engine lays each full block out as a store record (header | padding |
payload, :mod:`mooncake.store.records`) in its worker's export arena; the decode engine
maps that arena and copies each payload into its paged pool, summing it on the way.
Before a payload is used its header is checked here: framing, the header's own CRC, the
key the decode side asked for, the model fingerprint, the block shape and the checksum
algorithm (``sum64``, the one the fused copy computes). What this returns for a record
is what the copy is checked against: its token ids and payload checksum. The engine
keeps a block only when the sum of what it copied is the header's, so a record that was
half-written, or whose region was reused meanwhile, is never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from mooncake.kvcache.block import KVBlockSpec
from mooncake.store.block_object import (
    _CRC,
    _DTYPE_CODES,
    _FIXED,
    MAGIC,
    crc32,
    encode_header_of,
    header_length_for,
)
from mooncake.store.config import CHECKSUMS
from mooncake.store.records import payload_offset
from mooncake.types import BlockKey

_SUM64 = CHECKSUMS.index("sum64")
_HAS_KEY = 1


@dataclass(frozen=True, slots=True)
class RecordHead:
    """What a checked record header says about its payload."""

    token_ids: tuple[int, ...]
    payload_checksum: int


def payload_at(fingerprint: str, num_tokens: int) -> int:
    """Where the payload starts in a record of a block of ``num_tokens`` tokens."""
    return payload_offset(header_length_for(fingerprint, num_tokens))


def encode_headers(
    keys: Sequence[BlockKey],
    parents: Sequence[BlockKey],
    token_ids: Sequence[int],
    positions: Sequence[int],
    sums: np.ndarray,
    spec: KVBlockSpec,
    fingerprint: str,
) -> np.ndarray:
    """The headers of ``len(keys)`` full blocks (``encode_header_of`` each, ``sum64``),
    built together: one block's header as the template, the fields that differ (key,
    parent, position, payload checksum, token ids, CRC) filled in for all at once.
    ``token_ids``: the blocks' tokens back to back. Returns uint8 ``[n, header length]``.
    An export of a 2,048-token prompt writes 128 headers; one by one they cost a third
    of the export's copy."""
    n, bs = len(keys), spec.block_size
    fp_len = len(fingerprint.encode())
    first = encode_header_of(
        keys[0], parents[0], token_ids[:bs], spec, fingerprint,
        spec.bytes_per_token * bs, int(sums[0]), positions[0],
    )  # fmt: skip
    hlen = len(first)
    rows = np.tile(np.frombuffer(first, dtype=np.uint8), (n, 1))
    rows[:, 32:36] = np.asarray(positions, dtype="<u4").view(np.uint8).reshape(n, 4)
    rows[:, 48:56] = np.asarray(sums, dtype="<u8").view(np.uint8).reshape(n, 8)
    rows[:, 64:80] = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(n, 16)
    rows[:, 80:96] = np.frombuffer(b"".join(parents), dtype=np.uint8).reshape(n, 16)
    at = _FIXED.size + fp_len
    toks = np.asarray(token_ids, dtype="<i4").view(np.uint8).reshape(n, 4 * bs)
    rows[:, at : at + 4 * bs] = toks
    crcs = np.fromiter((crc32(r[: hlen - _CRC.size]) for r in rows), dtype="<u4", count=n)
    rows[:, hlen - _CRC.size :] = crcs.view(np.uint8).reshape(n, 4)
    return rows


def leading_heads(
    buf: Any,
    offsets: Sequence[int],
    keys: Sequence[BlockKey],
    fingerprint: str,
    spec: KVBlockSpec,
) -> list[RecordHead]:
    """The headers of the records at ``offsets`` in ``buf`` (a mapped arena), checked in
    order until the first that is not a full ``sum64`` block of ``keys[i]`` for this
    model and shape: the leading run that may be imported."""
    mv = memoryview(buf).cast("B")
    fp = fingerprint.encode()
    bs = spec.block_size
    hlen = header_length_for(fingerprint, bs)
    end = payload_offset(hlen) + spec.bytes_per_token * bs
    toks_at = _FIXED.size + len(fp)
    n = min(len(offsets), len(keys))
    if (
        n > 1
        and offsets[0] >= 0
        and offsets[0] + n * end <= mv.nbytes
        and all(b - a == end for a, b in pairwise(offsets[:n]))
    ):
        return _leading_heads_together(mv, offsets[0], keys[:n], fingerprint, spec)
    out = []
    for off, key in zip(offsets, keys):
        if off < 0 or off + end > mv.nbytes:
            break
        (magic, _v, dcode, flags, length, ntok, nl, nh, hd, bsz, _pos, fplen,
         nbytes, pcheck, algo, _r, hkey, _parent) = _FIXED.unpack_from(mv, off)  # fmt: skip
        if (
            magic != MAGIC
            or length != hlen
            or ntok != bs
            or dcode != _DTYPE_CODES[spec.dtype]
            or (nl, nh, hd, bsz) != (spec.num_layers, spec.num_kv_heads, spec.head_dim, bs)
            or fplen != len(fp)
            or nbytes != spec.bytes_per_token * bs
            or algo != _SUM64
            or not flags & _HAS_KEY
            or hkey != key
            or mv[off + _FIXED.size : off + toks_at] != fp
            or _CRC.unpack_from(mv, off + hlen - _CRC.size)[0]
            != crc32(mv[off : off + hlen - _CRC.size])
        ):
            break
        toks = np.frombuffer(mv, dtype="<i4", count=bs, offset=off + toks_at)
        out.append(RecordHead(tuple(toks.tolist()), int(pcheck)))
    return out


def _leading_heads_together(
    mv: memoryview, start: int, keys: Sequence[BlockKey], fingerprint: str, spec: KVBlockSpec
) -> list[RecordHead]:
    """:func:`leading_heads` of records laid back to back from ``start`` (an export's):
    the fields every header shares compared with an expected header for all records at
    once, each CRC computed, the first record that fails ending the run."""
    n, bs = len(keys), spec.block_size
    fp_len = len(fingerprint.encode())
    size = payload_at(fingerprint, bs) + spec.bytes_per_token * bs
    want = np.frombuffer(
        encode_header_of(
            keys[0], keys[0], range(bs), spec, fingerprint, spec.bytes_per_token * bs, 0, 0
        ),
        dtype=np.uint8,
    )
    hlen = want.size
    rows = np.frombuffer(mv, dtype=np.uint8, count=n * size, offset=start).reshape(n, size)
    rows = rows[:, :hlen]
    toks_at = _FIXED.size + fp_len
    # Shared: magic .. block size, fingerprint length and payload length, algorithm and
    # reserved, the fingerprint. Per block: position, checksum, key, parent, tokens, CRC.
    shared = np.r_[0:32, 36:48, 56:64, _FIXED.size : toks_at]
    ok = (rows[:, shared] == want[shared]).all(axis=1)
    ok &= (rows[:, 64:80] == np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(n, 16)).all(
        axis=1
    )
    crcs = rows[:, hlen - _CRC.size :].copy().view("<u4").reshape(n)
    good = n if ok.all() else int(np.argmin(ok))
    for i in range(good):
        if crc32(rows[i, : hlen - _CRC.size]) != int(crcs[i]):
            good = i
            break
    toks = rows[:good, toks_at : toks_at + 4 * bs].copy().view("<i4").tolist()
    sums = rows[:good, 48:56].copy().view("<u8").reshape(good).tolist()
    return [RecordHead(tuple(t), int(c)) for t, c in zip(toks, sums)]


__all__ = ["RecordHead", "encode_headers", "leading_heads", "payload_at"]
