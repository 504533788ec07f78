"""Trace-driven discrete-event simulator of Mooncake and a colocated baseline.

No torch, no distributed: it replays a trace through simulated instances while the
real :class:`mooncake.conductor.Conductor` makes every placement and admission decision.
"""

from mooncake.sim.cache import EVICTIONS, BlockCache, Eviction, hit_rate
from mooncake.sim.config import MODES, Mode, SimConfig
from mooncake.sim.engine import SimResult, Simulator, simulate
from mooncake.sim.metrics import RequestRecord, RunSummary, attainment, slowest_gaps_mean, summarize
from mooncake.sim.trace import (
    TraceError,
    TraceRequest,
    load_trace,
    make_request,
    parse_trace,
    scale_rate,
)

__all__ = [
    "EVICTIONS",
    "MODES",
    "BlockCache",
    "Eviction",
    "Mode",
    "RequestRecord",
    "RunSummary",
    "SimConfig",
    "SimResult",
    "Simulator",
    "TraceError",
    "TraceRequest",
    "attainment",
    "hit_rate",
    "load_trace",
    "make_request",
    "parse_trace",
    "scale_rate",
    "simulate",
    "slowest_gaps_mean",
    "summarize",
]
