"""Moving KV blocks between workers: same-host shared tier (zero copy), TCP, RDMA.

Front door: :class:`BlockFetcher` (receiver side) and :class:`BlockServer` (the side
that has the blocks). Backends and selection: docs/store.md."""

from mooncake.transfer.base import (
    Backend,
    BufferPool,
    FetchResult,
    PathResult,
    Peer,
    TransferError,
    local_host_id,
)
from mooncake.transfer.config import TransferConfig
from mooncake.transfer.fetcher import BlockFetcher, default_backends
from mooncake.transfer.local import SharedHostBackend
from mooncake.transfer.select import rdma_devices, select_backend
from mooncake.transfer.server import BlockServer
from mooncake.transfer.tcp import TcpBackend

__all__ = [
    "Backend",
    "BlockFetcher",
    "BlockServer",
    "BufferPool",
    "FetchResult",
    "PathResult",
    "Peer",
    "SharedHostBackend",
    "TcpBackend",
    "TransferConfig",
    "TransferError",
    "default_backends",
    "local_host_id",
    "rdma_devices",
    "select_backend",
]
