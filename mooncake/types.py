"""Identifiers, small value types and one sequence helper shared by every layer (stdlib
only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NewType, TypeVar

#: Request id as given by the caller (or generated); stable across the whole graph.
RequestId = NewType("RequestId", str)
#: Prefix-chained block key (16-byte digest, see docs/kv-hashing.md).
BlockKey = NewType("BlockKey", bytes)
#: Index of a block inside one engine's device block pool.
BlockId = NewType("BlockId", int)
#: Address of a Dask worker ("tcp://host:port").
WorkerAddress = NewType("WorkerAddress", str)

DType = Literal["float32", "bfloat16", "float16"]
DTYPES: tuple[DType, ...] = ("float32", "bfloat16", "float16")

Role = Literal["prefill", "decode"]
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

