"""The KV payload of one block as it leaves an engine: what the store keeps and the
transfer layer moves. numpy only (no torch), so the store and transfer layers can use it.

Layout of ``data``: ``[num_layers, 2 (K, V), num_tokens, num_kv_heads, head_dim]``,
C-contiguous. bfloat16 has no numpy dtype, so bfloat16 blocks travel as ``uint16`` with
``spec.dtype == "bfloat16"``; the engine reinterprets the bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mooncake.types import BlockKey, DType

_NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.uint16,
}
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True, slots=True)
class KVBlockSpec:
    """Shape of every block of one model's KV cache."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: DType

    @property
    def numpy_dtype(self) -> type[np.generic]:
        """dtype of ``KVBlock.data`` (uint16 carries bfloat16 bits)."""
        return _NUMPY_DTYPES[self.dtype]

    @property
    def bytes_per_token(self) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * _ITEMSIZE[self.dtype]

    @property
    def bytes_per_block(self) -> int:
        return self.bytes_per_token * self.block_size

    def shape(self, num_tokens: int) -> tuple[int, int, int, int, int]:
        return (self.num_layers, 2, num_tokens, self.num_kv_heads, self.head_dim)


@dataclass(slots=True)
class KVBlock:
    """One block's K and V for all layers, plus what identifies it.

    ``key`` is ``None`` only for a trailing partial block (never prefix-cached).
    """

    key: BlockKey | None
    parent: BlockKey | None
    token_ids: tuple[int, ...]
    data: np.ndarray
    spec: KVBlockSpec
    model_fingerprint: str

    def __post_init__(self) -> None:
        expected = self.spec.shape(len(self.token_ids))
        if tuple(self.data.shape) != expected:
            raise ValueError(f"KVBlock.data has shape {self.data.shape}, expected {expected}")
        if self.data.dtype != np.dtype(self.spec.numpy_dtype):
            raise ValueError(
                f"KVBlock.data has dtype {self.data.dtype}, expected {self.spec.numpy_dtype}"
            )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def is_full(self) -> bool:
        return self.num_tokens == self.spec.block_size


@dataclass(slots=True)
class KVExport:
    """A sequence's KV as exported by one engine and imported by another.

    ``token_ids`` are all tokens whose KV is in ``blocks`` (in order); ``next_token_ids``
    are tokens already sampled whose KV is not computed yet (normally the first output
    token, produced by prefill).
    """

    blocks: list[KVBlock]
    token_ids: list[int]
    next_token_ids: list[int]
    spec: KVBlockSpec
    model_fingerprint: str
    cache_salt: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True, slots=True)
class PackedExport:
    """A sequence's full blocks as an engine wrote them, one record each, into shared
    memory its worker gave it (``mooncake.store.shm_arena``): where each record is,
    not the bytes."""

    keys: list[BlockKey]
    offsets: list[int]
    """Each record's offset in the region the worker lent."""
    sizes: list[int]
    num_tokens: int
    """Tokens whose KV the engine computed (full blocks and the partial tail)."""
    first: int = 0
    """Block index (position in the sequence) of the first record: a streamed export
    carries the blocks filled since the previous one."""


@dataclass(frozen=True, slots=True)
class BlockRef:
    """A full block whose payload is in shared memory both processes map (the receive
    arena): what it is and where, not the bytes. The payload was checked on arrival."""

    key: BlockKey
    parent: BlockKey | None
    token_ids: tuple[int, ...]
    spec: KVBlockSpec
    model_fingerprint: str
    offset: int
    """Payload offset in the arena (``spec.shape(len(token_ids))``, C order)."""
