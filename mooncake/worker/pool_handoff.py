"""The same-host hand-off straight from the prefill engine's pool: one copy per block.

When the prefill engine's KV pool is in shared memory (``WorkerConfig.shared_kv_pool``,
``mooncake.engine.shared_pool``) and the request's decode worker is on this host:

- **prefill side** (:func:`hold_for_pool_copy`): nothing is copied. The engine keeps the
  finished prefill's blocks held (``LLMEngine.held_blocks``: not freed, so neither
  reused nor evicted; a prefix hit only shares them read-only), the worker leases them
  for the request and tells the decode worker which pool blocks they are
  (``KVHandle.pool``);
- **decode side** (``receive``): its engine maps the pool file read-only, checks its
  header once per mapping, copies each block pool -> pool in one strided copy and admits
  the request in the same command (``EngineLoop.import_from_pool_and_add``); then it
  releases the lease. No checksum: the bytes did not travel and the source is held;
- **afterwards, off the critical path** (``ArenaHandoffs``): once the lease is released
  or has expired, the blocks are written into the export arena and put into the host
  tier, as the arena's way does, so later requests find the prefix there; then the
  engine frees them.

Anything that does not suit (no shared pool, a decode engine whose model or layout
differs, a failure) takes the export arena's way (``arena_handoff``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mooncake.kvcache.block import PackedExport
from mooncake.store.native import records_lib
from mooncake.transfer.base import local_host_id
from mooncake.worker.arena_export import (
    ENGINE_CALL_TIMEOUT_S,
    export_to_region,
    record_bytes_per_block,
)
from mooncake.worker.messages import PoolBlocks, RequestSpec

if TYPE_CHECKING:
    from mooncake.worker.kv_store import KVStore
    from mooncake.worker.plugin import MooncakeWorker

logger = logging.getLogger(__name__)

AFTER_PLACE = "engine.export.after"
"""Where the copies into the export arena for the tier put after a pool hand-off are
counted (``mooncake.kvcache.copies``): off the hand-off's path."""


def hold_for_pool_copy(
    plugin: MooncakeWorker, kvs: KVStore, spec: RequestSpec
) -> tuple[PackedExport, PoolBlocks] | None:
    """Hold the request's full blocks in the prefill engine's shared pool for the
    decode engine on this host, leased for the request (see the module's docstring).
    ``None`` (nothing held here, nothing leased) when the pool is not shared, the
    request is not held, or it has no full block: the caller takes another way."""
    path = plugin.engine.info.get("kv_pool_path")
    if path is None or kvs.held is None or records_lib() is None:
        return None  # (the decode engine copies with the compiled library of this host)
    rid = spec.request_id
    try:
        got = plugin.engine.call("held_blocks", rid).result(ENGINE_CALL_TIMEOUT_S)
    except Exception as e:  # the arena's or the store's way still work
        logger.warning("pool hand-off of %s not held: %s", rid, e)
        return None
    if got is None or not got[0]:
        return None
    keys, block_ids, num_tokens = got
    packed = PackedExport(list(keys), [], [], num_tokens, 0)
    try:
        kvs.lease_handoff(rid, packed.keys)
        holder = kvs.handoff_holder(rid)
    except Exception:
        # Not leased: nobody would end the hold. The engine keeps the request held
        # (unmarked) for the caller's export, which frees it.
        plugin.engine.call("unhold", rid)
        raise
    kvs.held.hold_pool(rid, packed, holder, lambda put: _after(plugin, kvs, rid, len(keys), put))
    plugin.pool_handoffs += 1
    per = plugin.engine.info["kv_bytes_per_block"]
    plugin.handoff_times.mark(rid, "export_start")
    plugin.handoff_times.mark(rid, "stored", len(keys) * per, len(keys))
    return packed, PoolBlocks(path, list(block_ids), local_host_id())


def _after(plugin: MooncakeWorker, kvs: KVStore, rid: str, n: int, put: bool) -> int:
    """The hand-off of ``n`` blocks is over: with ``put``, write them into the export
    arena and put them into the host tier (later requests reuse them; an arena without
    room for them all: not put); then free them in the engine. Returns the blocks put."""
    done = 0
    try:
        arena = kvs.arena
        per = record_bytes_per_block(plugin, kvs)
        region = arena.alloc(n * per) if put and arena is not None else None
        if region is not None and arena is not None:
            try:
                packed = export_to_region(plugin, kvs, rid, region, place=AFTER_PLACE)
                if packed is not None and packed.keys:
                    kvs.put_packed(arena.view(region), packed)
                    done = len(packed.keys)
            finally:
                arena.free(region)
    finally:
        plugin.engine.call("release", rid).result(ENGINE_CALL_TIMEOUT_S)
    return done


__all__ = ["hold_for_pool_copy"]
