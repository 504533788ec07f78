"""The engine writes a request's full blocks as store records into a region of its
worker's export arena (``mooncake.store.shm_arena``): the one engine call every export
way shares (the streamed hand-off, the arena hand-off, the tier put after a pool
hand-off), and the size a block's record takes there."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mooncake.kvcache.block import PackedExport
from mooncake.store.shm_arena import Region

if TYPE_CHECKING:
    from mooncake.worker.kv_store import KVStore
    from mooncake.worker.plugin import MooncakeWorker

ENGINE_CALL_TIMEOUT_S = 30.0
"""How long a worker waits for its engine to answer an export or hold command."""


def record_bytes_per_block(plugin: MooncakeWorker, kvs: KVStore) -> int:
    """Bytes one block's store record (header and payload) takes in the export arena."""
    info = plugin.engine.info
    return kvs.record_bytes(info["kv_bytes_per_block"], info["fingerprint"], plugin.block_size)


def export_to_region(
    plugin: MooncakeWorker,
    kvs: KVStore,
    request_id: str,
    region: Region,
    first: int = 0,
    release: bool = True,
    place: str | None = None,
) -> PackedExport | None:
    """``EngineLoop.export_packed`` of ``request_id``'s full blocks from block ``first``
    into ``region`` of ``kvs``'s export arena, checksummed as the store checksums;
    ``release``: the engine frees the request's blocks afterwards; ``place``: where the
    copies are counted, if not the engine's default. ``None``: nothing exported."""
    arena = kvs.arena
    assert arena is not None, "an export region comes from the worker's export arena"
    packed: PackedExport | None = plugin.engine.call(
        "export_packed",
        request_id,
        arena.path,
        region.offset,
        region.size,
        kvs.store.config.checksum,
        first,
        release,
        place,
    ).result(ENGINE_CALL_TIMEOUT_S)
    return packed


__all__ = ["ENGINE_CALL_TIMEOUT_S", "export_to_region", "record_bytes_per_block"]
