"""Prefix-aware ordering of a batch of prompts (pure).

The prefix cache keys whole blocks, so prompts help each other only when one of them
has already *finished its prefill* over the shared blocks. A batch of few-shot prompts
submitted all at once is prefilled side by side and every copy of the template is
computed. :func:`plan_batch` groups prompts by their leading full blocks (a trie walk:
sorting by block chunks puts prompts that share a prefix next to each other, deepest
shares adjacent), picks one *warm-up* prompt per group (the shortest: it caches the
shared prefix soonest), and orders the rest group by group. The caller runs the warm-up
prompts first, waits for their prefills, then the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mooncake.types import common_prefix_len


@dataclass(frozen=True, slots=True)
class PrefixGroup:
    """Prompts whose first full block is the same."""

    warm: int
    """Index (into the input) of the prompt to run first."""
    rest: tuple[int, ...]
    """The others, in trie order."""
    shared_blocks: int
    """Full blocks every prompt of the group shares (the prefix the warm-up caches)."""


@dataclass(frozen=True, slots=True)
class BatchPlan:
    groups: tuple[PrefixGroup, ...]
    """Groups of two or more prompts sharing at least one full block."""
    singles: tuple[int, ...]
    """Prompts that share no full block with any other (no warm-up helps them)."""

    @property
    def warm(self) -> list[int]:
        return [g.warm for g in self.groups]

    def order(self) -> list[int]:
        """All indices: warm-ups, then each group's rest, then the singles."""
        return self.warm + [i for g in self.groups for i in g.rest] + list(self.singles)


def _chunks(ids: Sequence[int], block_size: int) -> tuple[tuple[int, ...], ...]:
    n = len(ids) // block_size
    return tuple(tuple(ids[i * block_size : (i + 1) * block_size]) for i in range(n))


def plan_batch(prompts: Sequence[Sequence[int]], block_size: int) -> BatchPlan:
    """Group token-id prompts by shared leading blocks and choose warm-ups.

    Args:
        prompts: token ids per prompt.
        block_size: the engines' tokens per block (only whole blocks are cached).
    Returns:
        A :class:`BatchPlan`; ``plan.order()`` is a permutation of ``range(len(prompts))``.
    """
    if block_size <= 0:
        raise ValueError(f"block_size: must be positive, got {block_size}")
    chunks = [_chunks(p, block_size) for p in prompts]
    # Trie order: lexicographic over block chunks; ties keep input order (stable sort).
    order = sorted(range(len(prompts)), key=lambda i: chunks[i])
    groups: list[PrefixGroup] = []
    singles: list[int] = []
    run: list[int] = []

    def close(run: list[int]) -> None:
        if len(run) < 2:
            singles.extend(run)
            return
        shared = min(common_prefix_len(chunks[run[0]], chunks[j]) for j in run[1:])
        warm = min(run, key=lambda j: (len(prompts[j]), j))
        groups.append(PrefixGroup(warm, tuple(j for j in run if j != warm), shared))

    for i in order:
        if run and (not chunks[i] or not chunks[run[0]] or chunks[i][0] != chunks[run[0]][0]):
            close(run)
            run = []
        run.append(i)
    if run:
        close(run)
    singles.sort()
    return BatchPlan(tuple(groups), tuple(singles))


__all__ = ["BatchPlan", "PrefixGroup", "plan_batch"]
