"""Identifiers, small value types and one sequence helper shared by every layer (stdlib
only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NewType, TypeVar

#: Prefix-chained block key (16-byte digest, see docs/kv-hashing.md).
BlockKey = NewType("BlockKey", bytes)
#: Index of a block inside one engine's device block pool.
BlockId = NewType("BlockId", int)
# Request ids and worker names stay plain ``str``: the Conductor's policy and the
# simulator share them as opaque names (a simulated worker has no address), and each
# arrives as ``str`` from the caller or from Dask, so a NewType would only be a cast
# at every boundary.

DType = Literal["float32", "bfloat16", "float16"]
DTYPES: tuple[DType, ...] = ("float32", "bfloat16", "float16")

FinishReason = Literal["stop", "length", "abort"]


_T = TypeVar("_T")


def common_prefix_len(a: Sequence[_T], b: Sequence[_T]) -> int:
    """How many leading items ``a`` and ``b`` share (tokens, or whole blocks of them)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
