"""Request → Dask task graph builders (installed as ``mooncake.graphs``).

One module per serving mode, each with ``build(spec, placement) -> RequestGraph``;
depends on ``mooncake``, never the reverse (the client loads a builder by name).
"""

from __future__ import annotations

import importlib
from typing import Protocol

from mooncake.worker.messages import PlacementInfo, RequestSpec

from .base import KeyRef, RequestGraph, TaskSpec

MODES = ("disaggregated", "colocated")


class GraphBuilder(Protocol):
    def __call__(self, spec: RequestSpec, placement: PlacementInfo) -> RequestGraph: ...


def get_builder(mode: str) -> GraphBuilder:
    """The ``build`` function of serving mode ``mode``."""
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
    module = importlib.import_module(f"mooncake.graphs.{mode}")
    builder: GraphBuilder = module.build
    return builder


__all__ = ["MODES", "GraphBuilder", "KeyRef", "RequestGraph", "TaskSpec", "get_builder"]
