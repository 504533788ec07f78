"""Prefix-chained block keys (spec: docs/kv-hashing.md).

key_0 parent is the *root key*, which binds the chain to a hash seed, a model
fingerprint and an optional per-request cache salt. Then

    key_i = BLAKE2b-128(key_{i-1} || u32le(n) || i32le(tokens_i) || u32le(len(extra)) || extra)

Only full blocks get keys. Never uses Python's ``hash()`` (salted per process).
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from collections.abc import Sequence

from mooncake.types import BlockKey

KEY_BYTES = 16
_DOMAIN = b"mooncake-kv-v1"


def _digest(*parts: bytes) -> BlockKey:
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    for part in parts:
        h.update(part)
    return BlockKey(h.digest())


def _u32(n: int) -> bytes:
    return struct.pack("<I", n)


def root_key(seed: int, model_fingerprint: str, cache_salt: str | None = None) -> BlockKey:
    """Chain root for one (seed, model, tenant). Different roots never share keys.

    Args:
        seed: hash seed from config (``EngineConfig.hash_seed``).
        model_fingerprint: hex digest of the model's config + weights.
        cache_salt: optional per-request/tenant salt; ``None`` and ``""`` are the same.
    """
    fp = model_fingerprint.encode()
    salt = (cache_salt or "").encode()
    return _digest(
        _DOMAIN, struct.pack("<Q", seed & (2**64 - 1)), _u32(len(fp)), fp, _u32(len(salt)), salt
    )


def _tokens_bytes(tokens: Sequence[int]) -> bytes:
    arr = array("i", tokens)
    if arr.itemsize != 4:  # pragma: no cover - every supported platform has 4-byte int
        raise RuntimeError("array('i') is not 32-bit on this platform")
    if struct.pack("=i", 1) != struct.pack("<i", 1):  # pragma: no cover - big endian
        arr.byteswap()
    return arr.tobytes()


def hash_block(parent: BlockKey, tokens: Sequence[int], extra: bytes = b"") -> BlockKey:
    """Key of one block given its parent key (the root for block 0)."""
    return _digest(parent, _u32(len(tokens)), _tokens_bytes(tokens), _u32(len(extra)), extra)


def block_keys(
    tokens: Sequence[int],
    block_size: int,
    root: BlockKey,
    extra: Sequence[bytes] | None = None,
) -> list[BlockKey]:
    """Keys of every *full* block of ``tokens``; a trailing partial block has no key.

    Args:
        tokens: the token ids of the sequence.
        block_size: tokens per block.
        root: chain root from :func:`root_key`.
        extra: optional extra key bytes per block (e.g. adapter ids), index-aligned.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    keys: list[BlockKey] = []
    parent = root
    for i in range(len(tokens) // block_size):
        chunk = tokens[i * block_size : (i + 1) * block_size]
        parent = hash_block(
            parent, chunk, extra[i] if extra is not None and i < len(extra) else b""
        )
        keys.append(parent)
    return keys
