"""Prefix-aware batch ordering (``mooncake.batch.plan_batch``) on hand-made batches."""

from __future__ import annotations

import pytest

from mooncake.batch import plan_batch

BS = 4
A = [1, 2, 3, 4]  # one full block
B = [5, 6, 7, 8]
C = [9, 9, 9, 9]


def test_groups_by_first_block_and_warms_shortest():
    """Prompts 0, 2, 4 share block A; 1 and 3 share block B; 5 shares nothing. The
    shortest of each group warms it; the rest follow group by group; singles last."""
    prompts = [
        A + B + [1],  # 0
        B + [1, 2],  # 1
        A + [7],  # 2: shortest of group A
        B + C + [3],  # 3
        A + C,  # 4
        C + [1],  # 5
    ]
    plan = plan_batch(prompts, BS)
    assert plan.warm == [2, 1]
    assert [g.rest for g in plan.groups] == [(0, 4), (3,)]
    assert [g.shared_blocks for g in plan.groups] == [1, 1]
    assert plan.singles == (5,)
    assert plan.order() == [2, 1, 0, 4, 3, 5]


def test_trie_order_keeps_deeper_shares_adjacent():
    """Within a group, prompts sharing two blocks sit next to each other (trie order),
    and the group's shared prefix counts only the blocks all of them share."""
    prompts = [A + C + [1], A + B + [2], A + C + [3], A + B + [4], A + [5]]
    plan = plan_batch(prompts, BS)
    (g,) = plan.groups
    assert g.warm == 4
    assert g.rest == (1, 3, 0, 2)
    assert g.shared_blocks == 1


def test_shorter_than_a_block_are_singles():
    """A prompt with no full block cannot share a cached block: no group, input order."""
    plan = plan_batch([[1, 2], [1, 2], [1, 2, 3]], BS)
    assert plan.groups == ()
    assert plan.singles == (0, 1, 2)


def test_order_is_a_permutation_and_stable_for_duplicates():
    """Identical prompts form one group warmed by the first of them; every index once."""
    prompts = [A + B] * 5 + [C + [1]] * 2
    plan = plan_batch(prompts, BS)
    assert sorted(plan.order()) == list(range(7))
    assert [g.warm for g in plan.groups] == [0, 5]


def test_bad_block_size():
    with pytest.raises(ValueError, match="block_size"):
        plan_batch([[1]], 0)
