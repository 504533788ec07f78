"""Identifiers and small value types shared by every layer (stdlib only)."""

from __future__ import annotations

from typing import Literal, NewType

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
