"""Factories for KV blocks and store configs shared by the store and transfer tests."""

from __future__ import annotations

import numpy as np

from mooncake.kvcache.block import KVBlock, KVBlockSpec
from mooncake.kvcache.hashing import block_keys, root_key
from mooncake.store.config import StoreConfig, TierConfig
from mooncake.types import BlockKey

FINGERPRINT = "tiny-test-model"
#: Small spec: 2 layers, 2 KV heads, head_dim 8, 4 tokens/block, bfloat16 -> 512 B/block.
TINY = KVBlockSpec(num_layers=2, num_kv_heads=2, head_dim=8, block_size=4, dtype="bfloat16")


def make_chain(
    n: int, spec: KVBlockSpec = TINY, seed: int = 0, fingerprint: str = FINGERPRINT
) -> list[KVBlock]:
    """``n`` full blocks of one sequence with chained keys and random KV bytes."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 32000, size=n * spec.block_size).tolist()
    root = root_key(seed, fingerprint)
    keys = block_keys(tokens, spec.block_size, root)
    out: list[KVBlock] = []
    parent: BlockKey = root
    for i, key in enumerate(keys):
        shape = spec.shape(spec.block_size)
        if spec.dtype == "float32":
            data = rng.standard_normal(shape, dtype=np.float32)
        else:
            data = rng.integers(0, 2**16, size=shape, dtype=np.uint16)
            if spec.dtype == "float16":
                data = data.view(np.float16)
        toks = tuple(tokens[i * spec.block_size : (i + 1) * spec.block_size])
        out.append(
            KVBlock(
                key=key,
                parent=parent,
                token_ids=toks,
                data=data,
                spec=spec,
                model_fingerprint=fingerprint,
            )
        )
        parent = key
    return out


def block_bytes(spec: KVBlockSpec = TINY) -> int:
    """Bytes one full block of ``spec`` occupies in a tier (header + payload)."""
    from mooncake.store.block_object import encode

    hdr, payload = encode(make_chain(1, spec)[0])
    return len(hdr) + payload.nbytes


def store_config(
    host_dir: str | None,
    ssd_dir: str | None = None,
    host_blocks: int = 64,
    ssd_blocks: int = 64,
    spec: KVBlockSpec = TINY,
    **kw: object,
) -> StoreConfig:
    """A store whose tiers hold exactly ``host_blocks`` / ``ssd_blocks`` blocks of ``spec``."""
    per = block_bytes(spec)
    host = TierConfig(path=host_dir, capacity_bytes=host_blocks * per) if host_dir else None
    ssd = TierConfig(path=ssd_dir, capacity_bytes=ssd_blocks * per) if ssd_dir else None
    return StoreConfig(host=host, ssd=ssd, **kw)  # type: ignore[arg-type]
