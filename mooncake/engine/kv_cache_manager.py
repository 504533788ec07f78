"""Which blocks a sequence owns: prefix-cache hits, slot allocation, registering full
blocks under their chained keys. Bookkeeping only; the tensors live in the runner."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mooncake.engine.sequence import Sequence
from mooncake.kvcache import Block, BlockPool, hash_block
from mooncake.types import BlockKey


@dataclass
class KVWrite:
    """Imported KV to copy into a device block before the step runs."""

    block_id: int
    data: np.ndarray  # [num_layers, 2, n, Hkv, D]


class KVCacheManager:
    """Args: pool: the block pool; block_size: tokens per block."""

    def __init__(self, pool: BlockPool, block_size: int) -> None:
        self.pool = pool
        self.block_size = block_size

    def _keys(self, seq: Sequence, num_full_blocks: int) -> list[BlockKey]:
        """Chained keys of the first ``num_full_blocks`` blocks (extends the seq's cache)."""
        bs = self.block_size
        keys = seq.block_keys
        while len(keys) < num_full_blocks:
            i = len(keys)
            parent = keys[-1] if keys else seq.root_key
            keys.append(hash_block(parent, seq.token_ids[i * bs : (i + 1) * bs]))
        return keys[:num_full_blocks]

    def find_cached(self, seq: Sequence) -> list[Block]:
        """Leading cached blocks of a waiting sequence. At least one token is left to
        compute, since the last prompt token's logits are needed."""
        if not self.pool.enable_caching and not self.pool.num_cached:
            return []  # no prefix caching and no hand-off blocks here: nothing can match
        bs = self.block_size
        n = (seq.num_tokens - 1) // bs
        keys = self._keys(seq, n)
        chunks = [seq.token_ids[i * bs : (i + 1) * bs] for i in range(n)]
        return self.pool.match_prefix(keys, chunks)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """New blocks to hold ``num_tokens`` tokens in total."""
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def can_admit(self, seq: Sequence, cached: list[Block], num_new_tokens: int) -> bool:
        total = len(cached) * self.block_size + num_new_tokens
        need = max(0, -(-total // self.block_size) - len(cached))
        reclaimed = sum(1 for b in cached if b.ref_count == 0)  # cached-but-free blocks we take
        return need <= self.pool.num_free - reclaimed

    def admit(self, seq: Sequence, cached: list[Block], num_new_tokens: int) -> None:
        """Take the cached prefix and allocate blocks for ``num_new_tokens`` more tokens.
        Call ``can_admit`` first."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        self.pool.touch(cached)
        seq.block_table.extend(cached)
        seq.num_computed_tokens = len(cached) * self.block_size
        seq.num_registered_blocks = len(cached)
        self.allocate(seq, num_new_tokens)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow the block table to cover ``num_new_tokens`` beyond the computed ones."""
        need = self.blocks_needed(seq, seq.num_computed_tokens + num_new_tokens)
        if need > self.pool.num_free:
            return False
        if need:
            seq.block_table.extend(self.pool.allocate(need))
        return True

    def import_blocks(self, seq: Sequence) -> list[KVWrite]:
        """Admit a sequence whose KV arrives with it: reuse cached blocks, allocate and
        schedule copies for the rest. Call ``can_admit`` with the cached prefix and the
        import's token count first."""
        imp = seq.kv_import
        assert imp is not None
        bs = self.block_size
        cached = self.find_cached(seq)[: imp.num_tokens // bs]
        self.admit(seq, cached, imp.num_tokens - len(cached) * bs)
        writes = [
            KVWrite(seq.block_table[i].block_id, imp.blocks[i].data)
            for i in range(len(cached), len(imp.blocks))
        ]
        seq.num_computed_tokens = imp.num_tokens
        return writes

    def commit(self, seq: Sequence) -> None:
        """Register every newly full, computed block so later requests can hit it."""
        n_full = seq.num_computed_tokens // self.block_size
        if n_full <= seq.num_registered_blocks:
            return
        keys = self._keys(seq, n_full)
        bs = self.block_size
        for i in range(seq.num_registered_blocks, n_full):
            self.pool.register(seq.block_table[i], keys[i], seq.token_ids[i * bs : (i + 1) * bs])
        seq.num_registered_blocks = n_full

    def free(self, seq: Sequence) -> None:
        self.pool.free(seq.block_table)
        seq.block_table = []
        seq.num_registered_blocks = 0
