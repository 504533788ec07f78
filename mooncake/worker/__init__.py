"""Dask workers with an engine: the worker plugin and the request graph's tasks."""

from mooncake.worker.messages import (
    KVHandle,
    LookupResult,
    PlacementInfo,
    RequestSpec,
    TransferResult,
)

__all__ = ["KVHandle", "LookupResult", "PlacementInfo", "RequestSpec", "TransferResult"]
