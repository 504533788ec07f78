"""Simulation setup: cluster shape, caches, chunking, and the Conductor's policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mooncake.conductor import ConductorConfig, CostModel
from mooncake.config import check_field as _check
from mooncake.sim.cache import EVICTIONS, Eviction

Mode = Literal["disaggregated", "colocated"]

#: Behaviour the simulator can add that the live system does not have (all off by
#: default): field of :class:`SimConfig` -> what it changes.
WHAT_IFS: dict[str, str] = {
    "layerwise_transfer": (
        "KV streams to decode layer by layer; only the last layer's share adds to TTFT"
    ),
    "decode_refusal": (
        "a decode instance refuses a prefilled request whose KV does not fit "
        "(Conductor.admit_to_decode)"
    ),
    "reserve_full_output": "KV for prompt + whole output is reserved at admission; no preemption",
}

#: Conductor methods that only one of the two drivers (the simulator and the live
#: scheduler plugin) calls, and why. Anything else must be driven by both
#: (``tests/sim/test_parity.py``).
ONE_DRIVER_METHODS: dict[str, str] = {
    "admit_to_decode": "simulator only, and only under the decode_refusal what-if",
    "remove_worker": "live plugin only: a simulated cluster does not lose workers",
    "on_decode_step": (
        "live plugin only: the simulator's step times are the cost model itself, which "
        "its Conductor already uses"
    ),
}
MODES: tuple[Mode, ...] = ("disaggregated", "colocated")


@dataclass(frozen=True)
class SimConfig:
    """One simulated cluster."""

    mode: Mode = "disaggregated"
    """``disaggregated`` (Mooncake: prefill pool + decode pool) or ``colocated``
    (vLLM-like: every instance prefills and decodes, ``prefill_instances +
    decode_instances`` of them so both use the same number of nodes)."""
    prefill_instances: int = 8
    """Prefill instances (FAST'25 Table 3 setup: 8P+8D)."""
    decode_instances: int = 8
    """Decode instances."""
    conductor: ConductorConfig = field(default_factory=ConductorConfig)
    """Placement/admission policy and SLOs."""
    cost: CostModel = field(default_factory=CostModel)
    """Ground-truth timings (LLaMA3-70B on 8×A800 by default)."""
    prefill_cache_blocks: int | None = 5859
    """KV cache per prefill instance in DRAM, blocks: 3M tokens / 512 (FAST'25 §8.2:
    "each prefill instance has 3M tokens of KVCache capacity"); ``None`` = unbounded."""
    colocated_cache_blocks: int | None = None
    """Prefix cache per colocated instance, blocks; ``None`` = the instance's HBM KV
    capacity (vLLM's prefix cache lives in GPU memory)."""
    eviction: Eviction = "lru"
    """Eviction policy of every instance cache."""
    chunk_tokens: int = 512
    """Colocated engine's token budget per step (decode tokens + prefill chunk;
    vLLM's chunked-prefill ``max_num_batched_tokens`` default of 512 in v0.4–0.5)."""
    decode_kv_tokens: int | None = None
    """KV capacity of a decode/colocated instance in tokens; ``None`` = what HBM holds
    next to the weights (:meth:`CostModel.kv_capacity_tokens`)."""
    max_tokens: int | None = None
    """Output cap every request states (``max_tokens``); a request generates
    min(its trace length, cap). ``None``: each request's cap is its trace length, as in
    the paper's replay (and ``mooncake bench serve`` on a trace). The Conductor sees
    only the cap; it predicts the real length (``ConductorConfig.output_prediction``)."""
    layerwise_transfer: bool = False
    """What-if: KV streams to decode layer by layer during prefill (FAST'25 §5.1), so
    only the last layer's share of the transfer adds to TTFT. Off: the whole transfer
    follows the prefill, as the live transfer task does today."""
    decode_refusal: bool = False
    """What-if: a decode instance refuses a prefilled request whose KV does not fit
    (``Conductor.admit_to_decode``; FAST'25 Table 3's baseline rejects there). Off: it
    waits in the decode instance's queue for memory, as the live engine does."""
    reserve_full_output: bool = False
    """What-if: reserve KV for prompt + the whole output at admission and never
    preempt. Off: KV is taken on demand and the newest sequence is preempted and later
    recomputed when it runs out, as the live engine (and vLLM) does."""

    def __post_init__(self) -> None:
        _check(self.mode in MODES, "mode", f"must be one of {MODES}, got {self.mode!r}")
        _check(
            self.prefill_instances > 0,
            "prefill_instances",
            f"must be positive, got {self.prefill_instances}",
        )
        _check(
            self.decode_instances >= 0,
            "decode_instances",
            f"must be >= 0, got {self.decode_instances}",
        )
        _check(
            self.mode == "colocated" or self.decode_instances > 0,
            "decode_instances",
            "must be positive when disaggregated",
        )
        _check(
            self.prefill_cache_blocks is None or self.prefill_cache_blocks >= 0,
            "prefill_cache_blocks",
            f"must be >= 0, got {self.prefill_cache_blocks}",
        )
        _check(
            self.colocated_cache_blocks is None or self.colocated_cache_blocks >= 0,
            "colocated_cache_blocks",
            f"must be >= 0, got {self.colocated_cache_blocks}",
        )
        _check(
            self.eviction in EVICTIONS,
            "eviction",
            f"must be one of {EVICTIONS}, got {self.eviction!r}",
        )
        _check(self.chunk_tokens > 0, "chunk_tokens", f"must be positive, got {self.chunk_tokens}")
        _check(
            self.max_tokens is None or self.max_tokens > 0,
            "max_tokens",
            f"must be positive, got {self.max_tokens}",
        )
        _check(
            self.decode_kv_tokens is None or self.decode_kv_tokens > 0,
            "decode_kv_tokens",
            f"must be positive, got {self.decode_kv_tokens}",
        )
        _check(
            self.conductor.colocated == (self.mode == "colocated"),
            "conductor",
            "conductor.colocated must match mode",
        )

    @property
    def kv_tokens(self) -> int:
        return (
            self.decode_kv_tokens
            if self.decode_kv_tokens is not None
            else self.cost.kv_capacity_tokens()
        )

    @property
    def num_instances(self) -> int:
        """Nodes used: the same count in both modes."""
        return self.prefill_instances + self.decode_instances


__all__ = ["MODES", "ONE_DRIVER_METHODS", "WHAT_IFS", "Mode", "SimConfig"]
