"""Typed config of the transfer layer, built once at the edge and passed down.

Every field is validated in ``__post_init__``; a bad value raises ``ValueError`` naming
the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from mooncake.auth import check_secret, new_secret
from mooncake.config import check_field as _check

BackendName = Literal["auto", "tcp", "rdma"]
BACKENDS: tuple[BackendName, ...] = ("auto", "tcp", "rdma")


@dataclass(frozen=True)
class TransferConfig:
    """How one worker serves its blocks to peers and fetches blocks from them."""

    backend: BackendName = "auto"
    """Between hosts: ``rdma`` (pyverbs), ``tcp``, or ``auto`` (RDMA when a device is
    present under ``rdma_sysfs`` and pyverbs imports, else TCP with a log line).
    Same-host peers always go through the shared host tier first."""
    same_host: bool = True
    """Read a same-host peer's host tier in place (shared memory). Off: every peer is
    reached over TCP/RDMA, as if on another host (to test or measure that path)."""
    listen_host: str | None = None
    """Interface the block server binds to. ``None``: a worker binds it where its own
    Dask address is (the interface the cluster reaches it on: 127.0.0.1 for a local
    cluster, the host's cluster address across hosts); a block server started alone
    binds 127.0.0.1."""
    listen_port: int = 0
    """Block server port; 0 picks a free one."""
    batch_blocks: int = 8
    """Blocks in a fetch's first request frame, and the fewest in any later one."""
    batch_bytes: int = 16 * 1024**2
    """Bytes a later request frame asks for, at the record size the first response showed
    (``0``: every frame asks for ``batch_blocks``). One response per ~16 MiB makes the
    per-response costs (a request, a table, a receive call, a pass building the objects)
    negligible next to the bytes, for 32 KiB blocks as for 1 MiB ones, without holding
    100 MiB responses for 5 MiB ones."""
    connect_timeout_s: float = 5.0
    """Giving up on connecting to a peer after this long (then the retry path runs)."""
    io_timeout_s: float = 30.0
    """Giving up on a stalled transfer after this long without progress."""
    socket_buffer_bytes: int | None = None
    """SO_SNDBUF/SO_RCVBUF; ``None`` keeps the kernel's autotuning."""
    pool_bytes: int = 256 * 1024**2
    """Receive buffers kept for reuse (fresh pages cost a page fault each)."""
    rdma_sysfs: str = "/sys/class/infiniband"
    """Where RDMA devices are listed."""
    rdma_device: str | None = None
    """RDMA device name; ``None`` takes the first one found."""
    rdma_gid_index: int = 0
    """GID table index used for RoCE addressing."""
    secret: bytes = field(default_factory=new_secret, repr=False)
    """The cluster's shared secret: a block server serves only peers that prove they hold
    it (HMAC challenge-response on connect, ``mooncake.auth``; never sent in clear). A
    fresh random one per config by default: the client creates the cluster's worker
    config once and every worker receives that same one."""
    rdma_staging_bytes: int = 64 * 1024**2
    """Registered region per RDMA connection (server staging, client landing); a batch's
    blocks beyond it come back as misses and are retried over TCP."""

    def __post_init__(self) -> None:
        _check(
            self.backend in BACKENDS, "backend", f"must be one of {BACKENDS}, got {self.backend!r}"
        )
        _check(
            0 <= self.listen_port < 65536,
            "listen_port",
            f"must be in [0, 65535], got {self.listen_port}",
        )
        _check(self.batch_blocks > 0, "batch_blocks", f"must be positive, got {self.batch_blocks}")
        _check(self.batch_bytes >= 0, "batch_bytes", f"must be >= 0, got {self.batch_bytes}")
        _check(
            self.connect_timeout_s > 0,
            "connect_timeout_s",
            f"must be positive, got {self.connect_timeout_s}",
        )
        _check(self.io_timeout_s > 0, "io_timeout_s", f"must be positive, got {self.io_timeout_s}")
        _check(
            self.socket_buffer_bytes is None or self.socket_buffer_bytes > 0,
            "socket_buffer_bytes",
            f"must be positive, got {self.socket_buffer_bytes}",
        )
        _check(self.pool_bytes >= 0, "pool_bytes", f"must be >= 0, got {self.pool_bytes}")
        _check(
            self.rdma_staging_bytes > 0,
            "rdma_staging_bytes",
            f"must be positive, got {self.rdma_staging_bytes}",
        )
        check_secret(self.secret, "secret")
        _check(
            self.rdma_gid_index >= 0, "rdma_gid_index", f"must be >= 0, got {self.rdma_gid_index}"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransferConfig:
        """Strict parse: unknown keys are an error, not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TransferConfig: unknown field(s) {unknown}")
        return cls(**data)


__all__ = ["BACKENDS", "BackendName", "TransferConfig"]
