"""A request's prefix lookup on its prefill worker, and its admission into the engine.

Run by the lookup task, or at placement by the plugin's lookup thread (the Conductor's
``mooncake-start``), whose result that task then collects. Neither the plugin nor this
module imports the task functions (``tasks`` imports both), so there is no import circle.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from mooncake.outputs import RequestOutput
from mooncake.types import BlockKey
from mooncake.worker import request_state
from mooncake.worker.engine_loop import AddRequest, Watch
from mooncake.worker.messages import LookupResult, PlacementInfo, RequestSpec
from mooncake.worker.rpc import rpc

if TYPE_CHECKING:
    from mooncake.worker.kv_store import KVStore
    from mooncake.worker.plugin import MooncakeWorker

logger = logging.getLogger(__name__)

Admission = concurrent.futures.Future[tuple[concurrent.futures.Future[RequestOutput] | None, int]]
Begun = tuple[list[BlockKey], Admission]
"""The prompt's block keys and the admission call ``begin_lookup`` sent."""


def fetches_remote(plugin: MooncakeWorker, placement: PlacementInfo) -> bool:
    """Whether the Conductor asked this lookup to fetch a prefix from another worker."""
    return bool(placement.fetch_from and placement.fetch_from != plugin.worker.address)


def prompt_keys(plugin: MooncakeWorker, spec: RequestSpec) -> list[BlockKey]:
    """The prompt's block keys in this worker's engine's chain."""
    return spec.prompt_block_keys(plugin.block_size, plugin.root_key(spec.cache_salt))


def begin_lookup(plugin: MooncakeWorker, spec: RequestSpec, start: str) -> Begun:
    """Send the engine the call that looks the prompt up and admits it, unless this
    worker's store holds the block after the cached prefix (then the lookup imports it
    and admits the request after). Returns at once; ``run_lookup`` finishes the job."""
    keys = prompt_keys(plugin, spec)
    kvs = plugin.kv_store
    stored = kvs.store.contains_many(keys) if kvs is not None else [False] * len(keys)
    return keys, plugin.engine.lookup_and_add(admission(spec, start == "prefill"), stored, keys)


def run_lookup(
    plugin: MooncakeWorker,
    spec: RequestSpec,
    placement: PlacementInfo,
    start: str,
    begun: Begun | None = None,
) -> LookupResult:
    """The lookup itself (in a task, or in the plugin's lookup thread at placement, then
    ``begun`` is what ``begin_lookup`` already sent)."""
    t0 = time.perf_counter()
    prefill_only = start == "prefill"
    bs = plugin.block_size
    kvs = plugin.kv_store
    done: concurrent.futures.Future[RequestOutput] | None = None
    if fetches_remote(plugin, placement):
        keys = prompt_keys(plugin, spec)
        cached = plugin.engine.call(
            "match_prefix", spec.prompt_token_ids, spec.cache_salt, keys
        ).result()
    else:
        keys, admitted = begun or begin_lookup(plugin, spec, start)
        done, cached = admitted.result()
    result = LookupResult(spec, placement, cached_tokens=cached)
    have = cached // bs
    plugin.hit_blocks["device"] += have
    if done is None and kvs is not None and have < len(keys):
        # Host/SSD tier: blocks this worker published earlier and its engine evicted since.
        # The host tier's leading run the engine reads in place (one copy per block, its
        # checksum checked on the way); the rest (SSD, or a block evicted meanwhile)
        # comes through the store and the engine socket.
        result.store_blocks = _own_host_prefix(plugin, kvs, keys[have:])
        result.store_blocks += kvs.local_prefix(
            keys[have + result.store_blocks :], lambda blocks: import_blocks(plugin, blocks)
        ).num_blocks
        if result.store_blocks:
            for tier in kvs.store.match_prefix(keys[have : have + result.store_blocks]).tiers:
                result.store_tiers[tier] = result.store_tiers.get(tier, 0) + 1
        have += result.store_blocks
        plugin.hit_blocks["store"] += result.store_blocks
    if (
        placement.fetch_from
        and placement.fetch_from != plugin.worker.address
        and placement.fetch_blocks > have
    ):
        want = keys[have : placement.fetch_blocks]
        got, nbytes = 0, 0
        peer = plugin.peer_of(placement.fetch_from) if kvs is not None else None
        if kvs is not None and peer is not None:
            f = kvs.fetch(want, peer, lambda blocks: import_blocks(plugin, blocks))
            got, nbytes = f.num_blocks, f.nbytes
            plugin.prefix_fetch_paths.update(f.paths[:got])
        if got < len(want):
            # Not in the peer's store (or no store): ask its engine for what it still caches.
            try:
                reply = rpc(
                    placement.fetch_from,
                    "mooncake_fetch_blocks",
                    on=plugin.worker,  # also from a thread that is not a task's
                    keys=keys[: placement.fetch_blocks],
                    token_ids=spec.prompt_token_ids,
                )
                blocks = reply["blocks"][have + got :]
                imported = import_blocks(plugin, blocks)
                got += imported
                plugin.prefix_fetch_paths["dask"] += imported
                nbytes += sum(b.data.nbytes for b in blocks)
            except Exception:
                pass
        result.fetched_blocks = got
        plugin.hit_blocks["remote"] += got
        if nbytes:
            plugin.reports.transfer(nbytes, time.perf_counter() - t0)
            plugin.reports.transfer_log("prefix-fetch", nbytes, time.perf_counter() - t0)
    result.fetch_seconds = time.perf_counter() - t0
    if done is None:
        done = plugin.engine.add(admission(spec, prefill_only))
    plugin.requests.futures.set_started(spec.request_id, done, time.perf_counter())
    # An abort that came while the lookup ran takes the request out again.
    plugin.requests.handle(request_state.LookupDone(spec.request_id, time.monotonic()))
    return result


def _own_host_prefix(plugin: MooncakeWorker, kvs: KVStore, keys: list[BlockKey]) -> int:
    """Import the leading run of ``keys`` in this worker's host tier into its engine,
    which reads the tier in place; returns how many it found intact."""
    path = kvs.host_tier_path
    n = kvs.host_prefix(keys) if path is not None else 0
    if not n:
        return 0
    try:
        found, _, _ = plugin.engine.call("import_from_tier", path, keys[:n]).result()
    except Exception as e:  # unreadable here: the store's path below still applies
        logger.debug("import from own host tier failed: %s", e)
        return 0
    return int(found)


def import_blocks(plugin: MooncakeWorker, blocks: list[Any], hand_off: bool = False) -> int:
    """Copy blocks into this worker's engine prefix cache (on the engine thread, while
    the caller keeps their memory alive). Returns how many are now usable. Blocks that
    a fetch received into the receive arena are imported from there (the engine reads
    them in place); others travel over the engine socket."""
    if not blocks:
        return 0
    kvs = plugin.kv_store
    refs = kvs.in_recv_arena(blocks) if kvs is not None else None
    if refs is not None and kvs is not None and kvs.recv_arena is not None:
        plugin.engine.call("import_from_arena", kvs.recv_arena.path, refs, hand_off).result()
    else:
        plugin.engine.call("import_blocks", blocks, hand_off).result()
    return len(blocks)


def admission(
    spec: RequestSpec,
    prefill_only: bool,
    cached: int | None = None,
    kv: Any = None,
    prior: list[int] | None = None,
    prior_logprobs: list[dict[int, float]] | None = None,
) -> AddRequest:
    """What the engine admits: prefill runs the first token only (and keeps the KV);
    the watch says how the request is reported."""
    params = spec.params
    if prefill_only:
        params = dataclasses.replace(params, max_tokens=1, min_tokens=min(params.min_tokens, 1))
    watch = Watch(
        spec.stream_topic,
        spec.stream_addr,
        spec.stream_key,
        prefill_only=prefill_only,
        final_max_tokens=spec.params.max_tokens,
        num_cached_tokens=cached,
    )
    return AddRequest(
        spec.request_id,
        spec.prompt_token_ids,
        params,
        watch,
        cache_salt=spec.cache_salt,
        keep_kv=prefill_only,
        kv=kv,
        prior_output_ids=prior or (),
        prior_logprobs=prior_logprobs,
        block_keys=spec.block_keys,
    )


__all__ = [
    "Admission",
    "Begun",
    "admission",
    "begin_lookup",
    "fetches_remote",
    "import_blocks",
    "prompt_keys",
    "run_lookup",
]
