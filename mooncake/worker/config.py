"""How each worker keeps and moves KV blocks outside its engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from mooncake.store.config import EvictionPolicyName
from mooncake.transfer.config import TransferConfig

WORKER_MALLOC_ENV: dict[str, str] = {
    "MALLOC_TRIM_THRESHOLD_": str(128 * 1024**2),
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024**2),
}
"""glibc malloc settings for engine worker processes. Dask's Nanny spawns workers with a
64 KiB trim threshold, which also freezes the mmap threshold at 128 KiB: every engine
step's multi-MB temporaries are then mmapped and unmapped, and re-faulted the next step
(~2,800 page faults per 16-256-token prefill with the built-in model, 16 ms of CPU
instead of 11). Keeping freed memory (trim above 128 MiB) and serving blocks under
32 MiB (glibc's maximum) from the heap removes them. glibc reads these only at process
start: they must be in the environment the worker process is spawned with."""


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
    ssd_root: str | None = None
    """Directory for an SSD tier per worker; None: no SSD tier."""
    ssd_capacity_bytes: int = 8 * 1024**3
    """SSD tier capacity per worker."""
    eviction: EvictionPolicyName = "lru"
    """Victim order inside each tier: ``lru``, ``lfu`` or ``length_aware``."""
    transfer: TransferConfig = field(default_factory=TransferConfig)
    """Block server and fetch settings (backend selection: RDMA when a device exists)."""

    def __post_init__(self) -> None:
        if self.host_capacity_bytes <= 0:
            raise ValueError(f"host_capacity_bytes: must be positive, got {self.host_capacity_bytes}")
        if self.ssd_capacity_bytes <= 0:
            raise ValueError(f"ssd_capacity_bytes: must be positive, got {self.ssd_capacity_bytes}")
        if not self.store_root:
            raise ValueError("store_root: must be a directory")
