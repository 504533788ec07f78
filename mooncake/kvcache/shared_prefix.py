"""How much an earlier prompt shared with this one past its cached blocks.

The prefix cache keys whole blocks, so two prompts that agree on 10 tokens with a block
size of 16 share nothing the cache can serve: a "0% hit" that is correct but puzzling.
:class:`SharedPrefixProbe` remembers the token chunks that followed each block key in
recent prompts (bounded, least recently used out) and, for a new prompt whose cached
prefix ends after ``n`` blocks, finds the longest run of tokens an earlier prompt had
after the same ``n`` blocks. Pure bookkeeping for metrics; placement never reads it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from mooncake.types import BlockKey, common_prefix_len

SharedPrefix = Literal["none", "below_block", "block_or_more"]


class SharedPrefixProbe:
    """Args: block_size: tokens per block; capacity: parent keys remembered;
    per_parent: distinct chunks remembered after one parent."""

    def __init__(self, block_size: int, capacity: int = 8192, per_parent: int = 8) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size: must be positive, got {block_size}")
        self.block_size = block_size
        self.capacity = capacity
        self.per_parent = per_parent
        self._children: OrderedDict[BlockKey, list[tuple[int, ...]]] = OrderedDict()

    def probe(
        self, root: BlockKey, keys: Sequence[BlockKey], token_ids: Sequence[int], hit_blocks: int
    ) -> tuple[SharedPrefix, int]:
        """Classify a lookup whose first ``hit_blocks`` blocks were cached.

        Returns ``(kind, tokens)``: ``("none", 0)`` when no remembered prompt continued
        past the same blocks with the same next token; ``("below_block", k)`` when one
        shared ``k`` more tokens but fewer than the rest of a block; ``("block_or_more",
        k)`` when one shared a whole further block that is no longer cached here.
        """
        bs = self.block_size
        start = hit_blocks * bs
        chunk = token_ids[start : start + bs]
        if not chunk:
            return "none", 0
        parent = keys[hit_blocks - 1] if hit_blocks > 0 else root
        best = max((common_prefix_len(chunk, c) for c in self._children.get(parent, ())), default=0)
        if best == 0:
            return "none", 0
        if best >= bs:
            return "block_or_more", best
        return "below_block", best

    def record(self, root: BlockKey, keys: Sequence[BlockKey], token_ids: Sequence[int]) -> None:
        """Remember the chunks of a prompt (full blocks and the partial tail)."""
        bs = self.block_size
        n = (len(token_ids) + bs - 1) // bs
        for i in range(n):
            parent = keys[i - 1] if i > 0 else root
            chunk = tuple(token_ids[i * bs : (i + 1) * bs])
            kids = self._children.get(parent)
            if kids is None:
                kids = self._children[parent] = []
            else:
                self._children.move_to_end(parent)
            if chunk in kids:
                kids.remove(chunk)
            kids.append(chunk)
            del kids[: -self.per_parent]
        while len(self._children) > self.capacity:
            self._children.popitem(last=False)


__all__ = ["SharedPrefix", "SharedPrefixProbe"]
