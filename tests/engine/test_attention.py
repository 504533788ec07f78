"""Decode batch grouping: a cut only where it saves padded blocks."""

from __future__ import annotations

from mooncake.engine.attention import split_by_length


def test_uniform_lengths_stay_one_group():
    assert split_by_length([4, 4, 4, 4]) == 4


def test_short_and_long_split():
    """Three 2-block and one 64-block sequence: 4*64=256 padded vs 3*2+64=70."""
    assert split_by_length([2, 2, 2, 64]) == 3


def test_small_saving_not_worth_a_second_call():
    """[9, 10, 10, 10]: cutting saves 1 of 40 blocks, under the 25% bar."""
    assert split_by_length([9, 10, 10, 10]) == 4


def test_single_sequence():
    assert split_by_length([7]) == 1
