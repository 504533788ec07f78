"""How each worker keeps and moves KV blocks outside its engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from mooncake.config import EngineConfig
from mooncake.store.config import EvictionPolicyName
from mooncake.transfer.config import TransferConfig


@dataclass(frozen=True)
class WorkerConfig:
    """Per-worker store and transfer settings (validated here, at the edge)."""

    enable_store: bool = True
    """Publish prefilled blocks to a host-tier store and move KV through the transfer
    layer. Off: KV goes from prefill to decode through a Dask RPC, nothing is kept
    outside the engines."""
    store_root: str = "/dev/shm"
    """tmpfs directory under which each worker makes its host tier (``<root>/mooncake-...``)."""
    host_capacity_bytes: int = 1024**3
    """Host tier capacity per worker."""
    host_tier_prefault: bool = False
    """Take the host tier's capacity into memory when the worker starts
    (``TierConfig.prefault``): puts into the fresh tier then skip a page fault per 4 KiB,
    most of a hand-off's put time until the tier has filled once. Costs the capacity in
    RAM (tmpfs) from the start."""
    ssd_root: str | None = None
    """Directory for an SSD tier per worker; None: no SSD tier."""
    ssd_capacity_bytes: int = 8 * 1024**3
    """SSD tier capacity per worker."""
    eviction: EvictionPolicyName = "lru"
    """Victim order inside each tier: ``lru``, ``lfu`` or ``length_aware``."""
    transfer: TransferConfig = field(default_factory=TransferConfig)
    """Block server and fetch settings (backend selection: RDMA when a device exists)."""
    export_arena_bytes: int = 64 * 1024**2
    """Shared memory (tmpfs) each worker lends its engine to write exported blocks into
    as store records, so a prefilled request's KV reaches the host tier without crossing
    the engine's socket (``mooncake.store.shm_arena``). An export that does not fit
    goes the old way. 0: no arena."""
    shared_kv_pool: bool = True
    """A prefill worker's CPU engine keeps its paged KV pool in a shared-memory file in
    the worker's tier directory under ``store_root``, so a decode engine on the same
    host copies a request's blocks straight out of it, pool -> pool, one copy per block
    (``mooncake.engine.shared_pool``; docs/store.md). Needs the store and the
    transfer's ``same_host`` path; off: the export arena's two copies."""
    recv_arena_bytes: int = 64 * 1024**2
    """Shared memory (tmpfs) blocks fetched from another host are received into, so the
    engine imports them from where they landed instead of through its socket
    (``mooncake.store.shm_arena``). A fetch that does not fit uses ordinary buffers
    and the socket. 0: no arena."""
    handoff_lease_ttl_s: float = 60.0
    """How long a prefill worker keeps the blocks a decode worker has yet to fetch from
    eviction, at most (released as soon as they are fetched or the request ends); a
    lease that expires first is logged and counted (``mooncake:kv_lease_expired``)."""
    stream_kv: bool = False
    """Stream the hand-off while prefill runs: after each prefill chunk, the prefill
    worker publishes the blocks it filled (leased, in its host tier), and the decode
    worker, told of the request at placement, imports them as they appear (same host:
    from the prefill worker's host tier in place; another host: over TCP, checked), so
    the transfer after prefill moves only the last chunk's blocks. Needs the store and
    the export arena (``docs/disaggregation.md``)."""
    stream_poll_s: float = 0.005
    """How often a streaming decode worker looks for the next blocks of a request."""
    cpu_core_lending: bool = False
    """Core lending between the CPU engines of one host: before each step, an engine
    with work also computes on the cores of engines that have none (its thread pool
    grows to its own plus the borrowed cores, each thread pinned to one), and gives
    them back at its next step boundary once their owner has work again. The engines
    find each other through a small ledger file under ``store_root``; each needs its
    threads pinned (``EngineConfig.cpu_threads_bind``; an embedded cluster pins them by
    default). GPU engines are left alone (docs/cluster.md)."""
    cpu_core_lending_idle_s: float = 0.0
    """An engine lends its cores once it has had no work for this long (0: at once)."""
    decode_prefill_tokens_per_step: int | None = 512
    """On a decode-only worker, the engine's ``max_prefill_tokens_per_step`` (unless the
    engine config sets one): most tokens of recompute in one engine step beside the
    running decodes. The requests of a lost decode worker, resumed here together, are
    then recomputed whole, one or a few per step in arrival order, instead of all in
    one long step that stalls them all and every stream already running here
    (docs/fault-tolerance.md). A hand-off's own recompute (under ``block_size`` + 1
    tokens) always fits. None: no bound (the step budget alone)."""

    def __post_init__(self) -> None:
        if self.host_capacity_bytes <= 0:
            raise ValueError(
                f"host_capacity_bytes: must be positive, got {self.host_capacity_bytes}"
            )
        if self.ssd_capacity_bytes <= 0:
            raise ValueError(f"ssd_capacity_bytes: must be positive, got {self.ssd_capacity_bytes}")
        if self.export_arena_bytes < 0:
            raise ValueError(
                f"export_arena_bytes: must be 0 or positive, got {self.export_arena_bytes}"
            )
        if self.recv_arena_bytes < 0:
            raise ValueError(
                f"recv_arena_bytes: must be 0 or positive, got {self.recv_arena_bytes}"
            )
        if not self.handoff_lease_ttl_s > 0:
            raise ValueError(
                f"handoff_lease_ttl_s: must be positive, got {self.handoff_lease_ttl_s}"
            )
        if not self.cpu_core_lending_idle_s >= 0:
            raise ValueError(
                "cpu_core_lending_idle_s: must be 0 or positive, "
                f"got {self.cpu_core_lending_idle_s}"
            )
        if self.decode_prefill_tokens_per_step is not None and not (
            self.decode_prefill_tokens_per_step > 0
        ):
            raise ValueError(
                "decode_prefill_tokens_per_step: must be positive or None, "
                f"got {self.decode_prefill_tokens_per_step}"
            )
        if not self.stream_poll_s > 0:
            raise ValueError(f"stream_poll_s: must be positive, got {self.stream_poll_s}")
        if not self.store_root:
            raise ValueError("store_root: must be a directory")


def engine_config_for(
    engine: EngineConfig, worker: WorkerConfig, roles: Sequence[str]
) -> EngineConfig:
    """The engine config a worker of ``roles`` runs: a decode-only worker bounds the
    recompute per step (``WorkerConfig.decode_prefill_tokens_per_step``) unless the
    engine config already does; prefill and colocated workers run it as given (their
    prompts' chunking is ``long_prefill_chunk``'s, and the Conductor's cost model
    assumes it)."""
    if list(roles) != ["decode"] or engine.max_prefill_tokens_per_step is not None:
        return engine
    return replace(engine, max_prefill_tokens_per_step=worker.decode_prefill_tokens_per_step)
