"""Typed configs of the tiered block store, built once at the edge and passed down.

Every field is validated in ``__post_init__``; a bad value raises ``ValueError`` naming
the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mooncake.config import check_field as _check
from mooncake.config import reject_unknown_fields as _strict

EvictionPolicyName = Literal["lru", "lfu", "length_aware"]
EVICTION_POLICIES: tuple[EvictionPolicyName, ...] = ("lru", "lfu", "length_aware")
ChecksumName = Literal["sum64", "crc32"]
CHECKSUMS: tuple[ChecksumName, ...] = ("sum64", "crc32")


@dataclass(frozen=True)
class TierConfig:
    """One LMDB-backed tier (host shared memory or SSD)."""

    path: str
    """Directory of the tier's LMDB environment (created if missing)."""
    capacity_bytes: int
    """Most bytes of block objects (header + payload) the tier holds before it evicts."""
    sync: bool = False
    """fsync on every commit. Off by default: LMDB's copy-on-write commit keeps the store
    consistent across a *process* crash without it (the page cache survives); turn it on
    only to survive power loss on the SSD tier, at a several-fold lower put throughput."""
    writemap: bool = True
    """Map the file writable: puts write straight into the map instead of through
    ``write()`` calls, several times faster for block-sized values."""
    map_headroom: float = 2.0
    """LMDB map size as a multiple of ``capacity_bytes``: copy-on-write needs room for
    pages still seen by open readers, and LMDB never shrinks its file."""
    max_readers: int = 512
    """Concurrent read transactions (one per live zero-copy view) across all processes."""
    prefault: bool = False
    """Take ``capacity_bytes`` of the map into memory when the tier opens
    (``mooncake.store.prefault``), so puts into a fresh tier do not fault in each page:
    the host tier's RAM is then taken up front, like a preallocated pool. Off: pages are
    taken as the tier fills."""

    def __post_init__(self) -> None:
        _check(bool(self.path), "path", "must be a non-empty directory path")
        _check(
            self.capacity_bytes > 0,
            "capacity_bytes",
            f"must be positive, got {self.capacity_bytes}",
        )
        _check(self.map_headroom >= 1.2, "map_headroom", f"must be >= 1.2, got {self.map_headroom}")
        _check(self.max_readers > 0, "max_readers", f"must be positive, got {self.max_readers}")

    @property
    def map_size(self) -> int:
        """LMDB map size in bytes (capacity x headroom + 16 MiB for the B-trees)."""
        return int(self.capacity_bytes * self.map_headroom) + 16 * 1024**2

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TierConfig:
        """Strict parse: unknown keys are an error, not silently ignored."""
        _strict(cls, data)
        return cls(**data)


@dataclass(frozen=True)
class StoreConfig:
    """The block store of one worker process: a host tier, an SSD tier, or both."""

    host: TierConfig | None = field(
        default_factory=lambda: TierConfig(
            path="/dev/shm/mooncake-host", capacity_bytes=4 * 1024**3
        )
    )
    """Host shared-memory tier: an LMDB environment on tmpfs that every process on the
    host can read zero-copy. ``None`` disables it."""
    ssd: TierConfig | None = None
    """SSD tier: an LMDB environment on disk; survives restarts. ``None`` disables it."""
    eviction: EvictionPolicyName = "lru"
    """Victim order inside each tier: ``lru``, ``lfu`` or ``length_aware``."""
    lease_ttl_s: float = 30.0
    """Default lifetime of a lease; an expired lease no longer protects its blocks."""
    checksum: ChecksumName = "sum64"
    """Payload checksum written with each block: ``sum64`` (page-weighted 64-bit sum,
    memory speed) or ``crc32`` (stronger, slower); see docs/store.md. Readers
    use whatever the block's header names."""
    verify_checksums: bool = True
    """Check the payload checksum on every read; a mismatch is a counted miss."""
    promote_on_hit: bool = True
    """Copy an SSD hit up into the host tier (and drop it from SSD)."""
    demote_on_evict: bool = True
    """Move a block evicted from the host tier down to SSD instead of dropping it."""

    def __post_init__(self) -> None:
        _check(
            self.host is not None or self.ssd is not None,
            "host",
            "at least one of host/ssd must be set",
        )
        _check(
            self.eviction in EVICTION_POLICIES,
            "eviction",
            f"must be one of {EVICTION_POLICIES}, got {self.eviction!r}",
        )
        _check(
            self.checksum in CHECKSUMS,
            "checksum",
            f"must be one of {CHECKSUMS}, got {self.checksum!r}",
        )
        _check(self.lease_ttl_s > 0, "lease_ttl_s", f"must be positive, got {self.lease_ttl_s}")
        if self.host is not None and self.ssd is not None:
            _check(
                self.host.path != self.ssd.path,
                "ssd",
                "host and ssd tiers must use different paths",
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreConfig:
        """Strict parse; ``host``/``ssd`` may be nested dicts or ``None``."""
        _strict(cls, data)
        kw = dict(data)
        for name in ("host", "ssd"):
            if isinstance(kw.get(name), dict):
                kw[name] = TierConfig.from_dict(kw[name])
        return cls(**kw)


__all__ = [
    "CHECKSUMS",
    "EVICTION_POLICIES",
    "ChecksumName",
    "EvictionPolicyName",
    "StoreConfig",
    "TierConfig",
]
