"""Block bookkeeping for a paged KV cache: reference counts, prefix-cache map, and a
free list kept in eviction order. Pure Python: the engine owns the tensors, this owns
which block holds what.

Free list order: blocks that hold no cached prefix sit at the head (handed out first);
blocks that still hold a cached prefix are appended at the tail when their last user
frees them, so the head of the cached part is the least recently used. Allocating a
cached block evicts its key (and emits a ``removed`` event).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from mooncake.types import BlockId, BlockKey


@dataclass(slots=True)
class Block:
    """One device block. ``key``/``token_ids`` are set once it is full and registered."""

    block_id: BlockId
    ref_count: int = 0
    key: BlockKey | None = None
    token_ids: tuple[int, ...] | None = None
    hand_off: bool = False
    """Imported for a request's prefill-to-decode hand-off into a pool without prefix
    caching, and not taken by a sequence yet (see ``BlockPool.register``)."""


@dataclass(frozen=True, slots=True)
class BlockEvent:
    """A change to the set of cached keys, for the Conductor's global index."""

    kind: Literal["stored", "removed"]
    key: BlockKey


class NoFreeBlocksError(RuntimeError):
    """Raised when an allocation asks for more blocks than are free."""


class BlockPool:
    """Fixed pool of ``num_blocks`` blocks with prefix caching.

    Args:
        num_blocks: number of device blocks.
        enable_caching: keep full blocks addressable by key after they are freed.
            Without it, only blocks imported for a hand-off are addressable, until the
            sequence that takes them frees them (a decode worker must not recompute a
            prompt whose KV its prefill worker sent, prefix caching or not).
    """

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.blocks = [Block(BlockId(i)) for i in range(num_blocks)]
        self.enable_caching = enable_caching
        # Insertion order is eviction order; values unused.
        self._free: OrderedDict[BlockId, None] = OrderedDict(
            (b.block_id, None) for b in self.blocks
        )
        self._cached: dict[BlockKey, BlockId] = {}
        self._events: list[BlockEvent] = []

    # -- queries ---------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        """Blocks that can be allocated now (unused or cached-but-unreferenced)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def usage(self) -> float:
        """Fraction of blocks referenced by a running sequence."""
        return 1.0 - self.num_free / self.num_blocks

    def lookup(self, key: BlockKey, token_ids: Sequence[int]) -> Block | None:
        """The cached block for ``key`` if its tokens match exactly, else ``None``.

        The token comparison guards against a (vanishingly unlikely) key collision and
        against a block reused under a stale key: a hit is never taken on trust.
        """
        bid = self._cached.get(key)
        if bid is None:
            return None
        block = self.blocks[bid]
        if block.token_ids != tuple(token_ids):
            return None
        return block

    def match_prefix(
        self, keys: Sequence[BlockKey], chunks: Sequence[Sequence[int]]
    ) -> list[Block]:
        """Longest leading run of ``keys`` that is cached (tokens verified)."""
        hits: list[Block] = []
        # Without caching only hand-off blocks are registered: nothing else can match.
        for key, chunk in zip(keys, chunks):
            block = self.lookup(key, chunk)
            if block is None:
                break
            hits.append(block)
        return hits

    def cached_keys(self) -> list[BlockKey]:
        return list(self._cached)

    # -- mutations -------------------------------------------------------------
    def touch(self, blocks: Iterable[Block]) -> None:
        """Take a reference on (cached) blocks, removing them from the free list."""
        for block in blocks:
            if block.ref_count == 0:
                self._free.pop(block.block_id, None)
            block.ref_count += 1
            block.hand_off = False  # taken: without caching it goes when freed

    def allocate(self, n: int) -> list[Block]:
        """Hand out ``n`` blocks with one reference each, evicting cached keys LRU-first."""
        if n > len(self._free):
            raise NoFreeBlocksError(f"need {n} blocks, {len(self._free)} free")
        out: list[Block] = []
        for _ in range(n):
            bid, _ = self._free.popitem(last=False)
            block = self.blocks[bid]
            self._evict(block)
            block.ref_count = 1
            out.append(block)
        return out

    def free(self, blocks: Sequence[Block]) -> None:
        """Drop one reference from each block. Pass a sequence's blocks in order: they
        are released last-to-first so a sequence's tail is evicted before its prefix."""
        for block in reversed(blocks):
            if block.ref_count <= 0:
                raise RuntimeError(f"double free of block {block.block_id}")
            block.ref_count -= 1
            if block.ref_count == 0:
                if not self.enable_caching and block.key is not None and not block.hand_off:
                    self._evict(block)  # a hand-off block its sequence is done with
                self._free[block.block_id] = None  # tail: most recently used
                if block.key is None:
                    self._free.move_to_end(block.block_id, last=False)  # head: holds nothing

    def register(
        self, block: Block, key: BlockKey, token_ids: Sequence[int], hand_off: bool = False
    ) -> bool:
        """Make a full block addressable by ``key``. Returns False if another block already
        holds that key (the duplicate stays private to its sequence), or when caching is
        off, unless ``hand_off`` (imported for a request's hand-off: addressable until a
        sequence has taken and freed it)."""
        if block.key is not None or not (self.enable_caching or hand_off):
            return False
        if key in self._cached:
            return False
        block.key = key
        block.token_ids = tuple(token_ids)
        block.hand_off = not self.enable_caching
        self._cached[key] = block.block_id
        self._events.append(BlockEvent("stored", key))
        return True

    def evict_all_cached(self) -> int:
        """Drop every cached key not in use (e.g. after a weights reload). Returns count."""
        n = 0
        for bid in list(self._free):
            block = self.blocks[bid]
            if block.key is not None:
                self._evict(block)
                n += 1
        return n

    def drain_events(self) -> list[BlockEvent]:
        events, self._events = self._events, []
        return events

    def _evict(self, block: Block) -> None:
        if block.key is not None:
            if self._cached.get(block.key) == block.block_id:
                del self._cached[block.key]
                self._events.append(BlockEvent("removed", block.key))
            block.key = None
            block.token_ids = None
            block.hand_off = False
